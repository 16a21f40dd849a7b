"""DANN: domain-adversarial training (Ganin et al., JMLR 2016), on any feature extractor.

Each step sees a labelled source batch and an unlabelled target batch. The loss is the source
classification loss plus the domain classification loss, where the features reach the domain
classifier through a gradient reversal of strength lambda_p = 2 / (1 + exp(-gamma p)) - 1 (eq. 14's
schedule, p the training progress in [0, 1]), so the features learn to make the domains look alike.
"""
import jax.numpy as jnp
import optax

from mmjax import models
from mmjax.methods import inputs
from mmjax.methods.supervised import make_eval, summarize_eval  # noqa: F401 (same evaluation)
from mmjax.models.adversarial import DomainAdversarialNet


def streams(config) -> dict:
  """A labelled source stream and an unlabelled target stream (every adaptation method's inputs)."""
  if not config.data.target:
    raise ValueError(f"method {config.method!r} needs config.data.target (the unlabelled target "
                     "dataset)")
  return {"source": (config.data.train, config.data.train_split),
          "target": (config.data.target, config.data.target_split)}


def build_model(config):
  return DomainAdversarialNet(backbone=models.build_model(config.model, config.dtype),
                              domain_hidden=config.adapt.domain_hidden,
                              domain_layers=config.adapt.domain_layers,
                              domain_norm=config.adapt.domain_norm,
                              domain_init=config.adapt.domain_init,
                              dtype=jnp.dtype(config.dtype))


def reversal_strength(progress, gamma: float = 10.0):
  """lambda_p = 2 / (1 + exp(-gamma p)) - 1 (Ganin et al. 2016, §5.2.2)."""
  return 2.0 / (1.0 + jnp.exp(-gamma * progress)) - 1.0


def make_loss(config):
  return make_adversarial_loss(config)


def make_adversarial_loss(config, domain_weights=None):
  """Source cross-entropy + domain loss behind the reversal; CDAN reuses it with its model and,
  for CDAN+E, per-example domain weights `domain_weights(logits, num_source)` summing to 1."""
  gamma = config.adapt.gamma + config.adapt.gamma_per_step * config.train.steps
  key = config.data.input_key
  lambda_max = config.adapt.lambda_max

  def loss_fn(model, params, batch, rng, progress):
    source, target = batch["source"], batch["target"]
    source_inputs = inputs.model_inputs(source, key)
    n = inputs.batch_size(source_inputs)
    images = inputs.concat_inputs(source_inputs, inputs.model_inputs(target, key))
    lam = lambda_max * reversal_strength(progress, gamma)
    out = model.apply({"params": params}, images, train=True, reversal=lam,
                      rngs={"dropout": rng})
    logits = out["logits"][:n]
    class_loss = optax.softmax_cross_entropy_with_integer_labels(logits, source["label"]).mean()
    domain = jnp.concatenate([jnp.zeros(n), jnp.ones(inputs.batch_size(images) - n)])
    bce = optax.sigmoid_binary_cross_entropy(out["domain_logits"], domain)
    if domain_weights is None:
      domain_loss = jnp.mean(bce)
    else:
      domain_loss = jnp.sum(domain_weights(out["logits"], n) * bce)
    loss = class_loss + domain_loss
    return loss, {
        "loss": loss, "class_loss": class_loss, "domain_loss": domain_loss,
        "accuracy": jnp.mean(jnp.argmax(logits, -1) == source["label"]),
        "domain_accuracy": jnp.mean((out["domain_logits"] > 0) == (domain > 0.5)),
        "lambda": lam,
    }
  return loss_fn
