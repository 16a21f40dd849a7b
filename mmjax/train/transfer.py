"""config.init_from: start from another run's params, all of them or the paths a regex selects."""
import re

import flax
import jax.numpy as jnp
from absl import logging

from mmjax.train import checkpoint
from mmjax.train.optim import param_paths


class TransferError(ValueError):
  """The source checkpoint's params do not fit this model."""


def load_pretrained(params, init_from):
  """Returns `params` with the selected subtrees replaced by those of init_from.workdir's checkpoint."""
  source, step = checkpoint.read_params(init_from.workdir, init_from.step)
  source_paths = param_paths(source)
  target_paths = param_paths(params)
  pattern = re.compile(init_from.include)
  selected = [p for p in target_paths if pattern.search(p)]
  if not selected:
    raise TransferError(f"init_from.include={init_from.include!r} matches no parameter of this "
                        f"model; its param paths are: {', '.join(sorted(target_paths))}")
  problems = []
  for p in selected:
    if p not in source_paths:
      problems.append(f"{p}: missing in the checkpoint")
    elif source_paths[p].shape != target_paths[p].shape:
      problems.append(f"{p}: checkpoint shape {source_paths[p].shape} != model shape "
                      f"{target_paths[p].shape}")
  if problems:
    raise TransferError(
        f"cannot initialise from {init_from.workdir} step {step}:\n  " + "\n  ".join(problems) +
        f"\ncheckpoint param paths: {', '.join(sorted(source_paths))}"
        f"\nnarrow init_from.include (now {init_from.include!r}) to the paths that match")
  merged = dict(target_paths)
  for p in selected:
    merged[p] = jnp.asarray(source_paths[p], dtype=target_paths[p].dtype)
  logging.info("initialised %d of %d params from %s step %d", len(selected), len(target_paths),
               init_from.workdir, step)
  return flax.traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in merged.items()})
