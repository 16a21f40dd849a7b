"""Optimizers and learning-rate schedules from config.optim, with config.freeze as an optax mask."""
import re

import flax
import optax
from absl import logging


def param_paths(params) -> dict:
  """Flattens a param tree to {"conv1/kernel": array}."""
  return {"/".join(k): v for k, v in flax.traverse_util.flatten_dict(params).items()}


def schedule(optim, steps: int):
  if optim.schedule == "constant":
    return optax.constant_schedule(optim.lr)
  if optim.schedule == "cosine":
    return optax.cosine_decay_schedule(optim.lr, steps)
  if optim.schedule == "warmup_cosine":
    # A run shorter than its warmup (a --quick table, a smoke test) warms up over half its steps.
    warmup = min(optim.warmup_steps, steps // 2)
    if warmup < optim.warmup_steps:
      logging.warning("optim.warmup_steps=%d >= half of %d steps: warming up over %d",
                      optim.warmup_steps, steps, warmup)
    return optax.warmup_cosine_decay_schedule(0.0, optim.lr, warmup, steps)
  if optim.schedule == "dann":
    # mu_p = mu_0 / (1 + alpha p)^beta, p = step / steps (Ganin et al. 2016, §5.2.2)
    alpha = optim.decay_alpha + optim.decay_per_step * steps
    return lambda step: optim.lr / (1.0 + alpha * step / steps) ** optim.decay_beta
  raise ValueError(f"unknown optim.schedule {optim.schedule!r}; "
                   "use constant, cosine, warmup_cosine or dann")


def _base(optim, lr):
  if optim.name == "sgd":
    return optax.sgd(lr, momentum=optim.momentum or None, nesterov=optim.nesterov)
  if optim.name == "adam":
    return optax.adam(lr)
  if optim.name == "adamw":
    return optax.adamw(lr, weight_decay=optim.weight_decay)
  raise ValueError(f"unknown optim.name {optim.name!r}; use sgd, adam or adamw")


def freeze_labels(params, freeze: str):
  """"frozen" for every param whose path matches the regex, else "trainable"."""
  paths = param_paths(params)
  pattern = re.compile(freeze)
  frozen = {p for p in paths if pattern.search(p)}
  if not frozen:
    raise ValueError(f"config.freeze={freeze!r} matches no parameter; param paths are: "
                     f"{', '.join(sorted(paths))}")
  labels = {tuple(p.split("/")): ("frozen" if p in frozen else "trainable") for p in paths}
  return flax.traverse_util.unflatten_dict(labels)


def make_optimizer(optim, steps: int, params=None, freeze: str = ""):
  """The optax transformation for config.optim; params under config.freeze get zero updates."""
  parts = []
  if optim.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(optim.grad_clip_norm))
  if optim.weight_decay and optim.name != "adamw":
    parts.append(optax.add_decayed_weights(optim.weight_decay))
  parts.append(_base(optim, schedule(optim, steps)))
  tx = optax.chain(*parts)
  if freeze:
    tx = optax.multi_transform({"trainable": tx, "frozen": optax.set_to_zero()},
                               freeze_labels(params, freeze))
  return tx
