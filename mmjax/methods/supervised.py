"""Supervised training on one labelled dataset: the "source only" and "train on target" baselines."""
import functools

import jax.numpy as jnp
import optax

from mmjax import models
from mmjax.methods.inputs import model_inputs


def streams(config) -> dict:
  """The training inputs this method reads: name -> (dataset, split)."""
  return {"train": (config.data.train, config.data.train_split)}


def build_model(config):
  return models.build_model(config.model, config.dtype)


def make_loss(config):
  return functools.partial(loss_fn, input_key=config.data.input_key)


def make_eval(config):
  return functools.partial(eval_fn, input_key=config.data.input_key)


def loss_fn(model, params, batch, rng, progress, input_key="image"):
  """Mean softmax cross-entropy over the global batch; returns (loss, metrics)."""
  del progress
  batch = batch["train"]
  out = model.apply({"params": params}, model_inputs(batch, input_key), train=True, rngs={"dropout": rng})
  logits = out["logits"]
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
  accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
  return loss, {"loss": loss, "accuracy": accuracy}


def eval_fn(model, params, batch, input_key="image"):
  """Sums over the real (mask = 1) examples of an eval batch: correct, loss, count."""
  logits = model.apply({"params": params}, model_inputs(batch, input_key), train=False)["logits"]
  mask = batch["mask"]
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
  correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
  return {"correct": jnp.sum(correct * mask), "loss": jnp.sum(ce * mask), "count": jnp.sum(mask)}


def summarize_eval(sums):
  """Turns summed eval numbers into the reported ones."""
  count = max(float(sums["count"]), 1.0)
  return {"accuracy": float(sums["correct"]) / count, "loss": float(sums["loss"]) / count,
          "n": int(sums["count"])}
