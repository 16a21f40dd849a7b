"""Trainers: config.trainer -> a `train_and_evaluate(config, workdir) -> results` function."""
from mmjax.train import meta_trainer
from mmjax.train.trainer import NonFiniteLossError, train_and_evaluate

TRAINERS = {"standard": train_and_evaluate, "meta": meta_trainer.train_and_evaluate}


def get_trainer(name: str):
  if name not in TRAINERS:
    raise ValueError(f"unknown trainer {name!r}; known trainers: {', '.join(sorted(TRAINERS))}")
  return TRAINERS[name]
