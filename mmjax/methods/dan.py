"""DAN: deep adaptation network (Long et al., ICML 2015), on any feature extractor.

Each step sees a labelled source batch and an unlabelled target batch; the loss is the source
classification loss plus mmd_weight x MK-MMD^2 between the source and target features (eq. 5, with
the multi-kernel MMD of mmjax.losses.mmd on the backbone's `features`).
"""
import functools

import jax
import jax.numpy as jnp
import optax

from mmjax import models
from mmjax.methods import inputs
from mmjax.losses.mmd import ESTIMATORS, mk_mmd
from mmjax.methods.dann import streams  # noqa: F401 (same inputs)
from mmjax.methods.supervised import make_eval, summarize_eval  # noqa: F401 (same evaluation)


def build_model(config):
  return models.build_model(config.model, config.dtype)


def make_loss(config):
  a = config.adapt
  if a.mmd_estimator not in ESTIMATORS:
    raise ValueError(f"unknown config.adapt.mmd_estimator {a.mmd_estimator!r}; use one of "
                     f"{', '.join(ESTIMATORS)}")
  if a.kernel_num < 1 or a.kernel_mul <= 0:
    raise ValueError(f"config.adapt.kernel_num must be >= 1 and kernel_mul > 0, got "
                     f"{a.kernel_num} and {a.kernel_mul}")
  if config.parallel == "pmap" and jax.device_count() > 1:
    raise ValueError("method 'dan' compares all pairs of the global batch; config.parallel='pmap' "
                     "would compute MMD per device. Use parallel='jit'.")
  discrepancy = functools.partial(mk_mmd, kernel_mul=a.kernel_mul, kernel_num=a.kernel_num,
                                  estimator=a.mmd_estimator)
  weight, key = a.mmd_weight, config.data.input_key

  def loss_fn(model, params, batch, rng, progress):
    del progress
    source, target = batch["source"], batch["target"]
    source_inputs = inputs.model_inputs(source, key)
    n = inputs.batch_size(source_inputs)
    images = inputs.concat_inputs(source_inputs, inputs.model_inputs(target, key))
    out = model.apply({"params": params}, images, train=True, rngs={"dropout": rng})
    logits = out["logits"][:n]
    class_loss = optax.softmax_cross_entropy_with_integer_labels(logits, source["label"]).mean()
    mmd = discrepancy(out["features"][:n], out["features"][n:])
    loss = class_loss + weight * mmd
    return loss, {"loss": loss, "class_loss": class_loss, "mmd": mmd,
                  "accuracy": jnp.mean(jnp.argmax(logits, -1) == source["label"])}
  return loss_fn
