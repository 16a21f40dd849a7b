"""Trainers: config.trainer -> a `train_and_evaluate(config, workdir) -> results` function.

The trainers (and with them TensorFlow, for tfds and the tf example order) are imported on first
use, so that the step builders in `mmjax.train.steps` and `mmjax.train.optim` import without
TensorFlow: benchmarks/gpu_steps.py runs them on accelerator machines that have only jax, flax and
optax.
"""
import importlib

TRAINER_MODULES = {"standard": "mmjax.train.trainer", "meta": "mmjax.train.meta_trainer"}


def get_trainer(name: str):
  if name not in TRAINER_MODULES:
    raise ValueError(f"unknown trainer {name!r}; known trainers: "
                     f"{', '.join(sorted(TRAINER_MODULES))}")
  return importlib.import_module(TRAINER_MODULES[name]).train_and_evaluate


def __getattr__(name):
  if name in ("train_and_evaluate", "NonFiniteLossError"):
    return getattr(importlib.import_module("mmjax.train.trainer"), name)
  raise AttributeError(f"module 'mmjax.train' has no attribute {name!r}")
