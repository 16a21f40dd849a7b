"""Visual question answering on datasets with several questions per image (Sort-of-CLEVR).

A training example is one image with its Q questions (`question` [B, Q, D], `label` [B, Q],
`relational` [B, Q]). Each step draws `config.vqa.questions_per_image` of them per image, without
replacement, so a step sees B * k (image, question) pairs; evaluation answers all Q questions of every
image and reports relational and non-relational accuracy apart, as the Relation Network paper does
(Santoro et al. 2017, §4). With `config.vqa.question_types` = names of the ids in the dataset's
`question_type` [B, Q] entry, it also reports `<name>_accuracy` for each type.
"""
import jax
import jax.numpy as jnp
import optax

from mmjax import models
from mmjax.methods.supervised import streams  # noqa: F401 (one labelled stream)

IMAGE, QUESTION = "image", "question"


def build_model(config):
  return models.build_model(config.model, config.dtype)


def _check(config):
  names = [n.strip() for n in config.data.input_key.split(",")]
  if sorted(names) != sorted([IMAGE, QUESTION]):
    raise ValueError(f"method 'vqa' reads 'image,question'; config.data.input_key is "
                     f"{config.data.input_key!r}")
  if config.vqa.questions_per_image < 1:
    raise ValueError(f"config.vqa.questions_per_image must be >= 1, got "
                     f"{config.vqa.questions_per_image}")


def pairs(batch, index):
  """(image, question) pairs of a per-image batch: index [B, k] picks k questions of each image."""
  def pick(x):
    return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)
  k = index.shape[1]
  image = jnp.repeat(batch[IMAGE], k, axis=0)
  question = pick(batch[QUESTION]).reshape((-1,) + batch[QUESTION].shape[2:])
  return ({IMAGE: image, QUESTION: question}, pick(batch["label"]).reshape(-1),
          pick(batch["relational"]).reshape(-1))


def make_loss(config):
  _check(config)
  k = config.vqa.questions_per_image

  def loss_fn(model, params, batch, rng, progress):
    del progress
    batch = batch["train"]
    pick_rng, dropout_rng = jax.random.split(rng)
    b, q = batch["label"].shape
    if k > q:
      raise ValueError(f"config.vqa.questions_per_image={k} but images have {q} questions")
    index = jnp.argsort(jax.random.uniform(pick_rng, (b, q)), axis=1)[:, :k]
    inputs, labels, relational = pairs(batch, index)
    logits = model.apply({"params": params}, inputs, train=True,
                         rngs={"dropout": dropout_rng})["logits"]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    rel = relational.astype(jnp.float32)
    return loss, {"loss": loss, "accuracy": correct.mean(),
                  "relational_accuracy": jnp.sum(correct * rel) / jnp.maximum(rel.sum(), 1.0),
                  "nonrelational_accuracy":
                      jnp.sum(correct * (1 - rel)) / jnp.maximum((1 - rel).sum(), 1.0)}
  return loss_fn


def make_eval(config):
  _check(config)

  types = tuple(config.vqa.question_types)

  def eval_fn(model, params, batch):
    """Sums over all questions of the real (mask = 1) images of an eval batch."""
    b, q = batch["label"].shape
    if types and "question_type" not in batch:
      raise ValueError(f"config.vqa.question_types={types} but the eval data has no "
                       "'question_type' entry")
    inputs, labels, relational = pairs(batch, jnp.broadcast_to(jnp.arange(q), (b, q)))
    logits = model.apply({"params": params}, inputs, train=False)["logits"]
    mask = jnp.repeat(batch["mask"], q)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32) * mask
    rel = relational.astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    sums = {"correct": correct.sum(), "loss": jnp.sum(ce * mask), "count": mask.sum(),
            "relational_correct": jnp.sum(correct * rel), "relational_count": jnp.sum(mask * rel),
            "nonrelational_correct": jnp.sum(correct * (1 - rel)),
            "nonrelational_count": jnp.sum(mask * (1 - rel))}
    if types:
      question_type = batch["question_type"].reshape(-1)
      for i, name in enumerate(types):
        is_type = (question_type == i).astype(jnp.float32)
        sums[f"{name}_correct"] = jnp.sum(correct * is_type)
        sums[f"{name}_count"] = jnp.sum(mask * is_type)
    return sums
  return eval_fn


def summarize_eval(sums):
  def ratio(a, b):
    return float(sums[a]) / max(float(sums[b]), 1.0)
  out = {"accuracy": ratio("correct", "count"), "loss": ratio("loss", "count"),
         "n": int(sums["count"])}
  for name in sorted(k[:-len("_correct")] for k in sums if k.endswith("_correct") and k != "correct"):
    out[f"{name}_accuracy"] = ratio(f"{name}_correct", f"{name}_count")
  return out


def example_inputs(config, arrays):
  """One (image, question) pair shaped as the model sees it (questions lose their per-image axis)."""
  del config
  return {IMAGE: jnp.zeros((1,) + arrays[IMAGE].shape[1:], jnp.float32),
          QUESTION: jnp.zeros((1,) + arrays[QUESTION].shape[2:], jnp.float32)}
