"""CDAN and CDAN+E: conditional domain-adversarial training (Long et al., NeurIPS 2018).

As DANN (same streams, source classification loss, reversal schedule lambda_p), but the domain
classifier sees the multilinear map T(f, g) of features and class probabilities (see
mmjax.models.conditional). CDAN+E ("cdan_e") weights each example's domain loss by
w = 1 + exp(-H(g)) (eq. 9), so confident predictions count more.
"""
import jax
import jax.numpy as jnp

from mmjax import models
from mmjax.methods.dann import make_adversarial_loss, streams  # noqa: F401 (same inputs)
from mmjax.methods.supervised import make_eval, summarize_eval  # noqa: F401 (same evaluation)
from mmjax.models.conditional import ConditionalAdversarialNet

# config.method -> whether the domain loss is entropy-conditioned.
ENTROPY_CONDITIONING = {"cdan": False, "cdan_e": True}


def build_model(config):
  return ConditionalAdversarialNet(backbone=models.build_model(config.model, config.dtype),
                                   domain_hidden=config.adapt.domain_hidden,
                                   domain_layers=config.adapt.domain_layers,
                                   randomized=config.adapt.randomized,
                                   randomized_dim=config.adapt.randomized_dim,
                                   map_seed=config.seed, domain_norm=config.adapt.domain_norm,
                                   domain_init=config.adapt.domain_init,
                                   dtype=jnp.dtype(config.dtype))


def entropy_weights(logits, num_source: int):
  """CDAN+E's per-example domain-loss weights, summing to 1/2 over source and 1/2 over target.

  w = 1 + exp(-H(softmax(logits))) (eq. 9), divided by its sum within each domain and halved, which
  is what thuml/CDAN's loss.py computes (weight / sum(weight), with sum(weight) = 2). The entropy is
  a constant here (stop_gradient), as in Transfer-Learning-Library's CDAN.
  """
  logp = jax.nn.log_softmax(jax.lax.stop_gradient(logits))
  w = 1.0 + jnp.exp(jnp.sum(jnp.exp(logp) * logp, axis=-1))
  is_source = jnp.arange(w.shape[0]) < num_source
  total_source = jnp.sum(jnp.where(is_source, w, 0.0))
  total_target = jnp.sum(jnp.where(is_source, 0.0, w))
  return 0.5 * w / jnp.where(is_source, total_source, total_target)


def make_loss(config):
  if config.method not in ENTROPY_CONDITIONING:
    raise ValueError(f"mmjax.methods.cdan runs config.method 'cdan' or 'cdan_e', not "
                     f"{config.method!r}")
  entropy = ENTROPY_CONDITIONING[config.method]
  if entropy and config.parallel == "pmap" and jax.device_count() > 1:
    raise ValueError("method 'cdan_e' normalises its weights over the global batch; "
                     "config.parallel='pmap' would normalise per device. Use parallel='jit'.")
  return make_adversarial_loss(config, entropy_weights if entropy else None)
