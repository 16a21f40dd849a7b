"""A finished run rebuilt from its workdir: config, model and params, and what it computes on data.

Used by the analysis command and by reverse validation (mmjax.selection), which pseudo-labels the
target with a trained model.
"""

import jax
import numpy as np

from mmjax import config as config_lib
from mmjax import data as data_lib
from mmjax import methods
from mmjax.methods.inputs import model_inputs
from mmjax.train import checkpoint, steps


def load_run(workdir):
  """(config, model, params) of the run in `workdir`, params from its latest checkpoint; a model
  with state (batch norm averages) comes with that state filled in."""
  config = config_lib.from_workdir(workdir)
  model = methods.get_method(config.method).build_model(config)
  params, model_state, _ = checkpoint.read_variables(str(workdir))
  return config, steps.with_state(model, model_state), params


def load_data(config, dataset: str, split: str) -> dict:
  return data_lib.load_split(dataset, split, data_dir=config.data.dir, tfds_dir=config.data.tfds_dir,
                             arrays_dir=config.data.arrays_dir)


def apply_model(config, model, params, arrays, batch_size: int = 500) -> dict:
  """The model's outputs (eval mode) on every example: {"features": [N, F], "logits": [N, C], ...}."""
  forward = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))
  outputs = []
  for batch in data_lib.eval_batches(arrays, global_batch=batch_size):
    out = forward(params, model_inputs(batch, config.data.input_key))
    real = batch["mask"] > 0
    outputs.append({k: np.asarray(v)[real] for k, v in out.items()})
  return {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}


def flat_inputs(config, arrays) -> np.ndarray:
  """The model's inputs as the pipeline delivers them (uint8 scaled to [0, 1]), one row per example,
  several named inputs side by side: the representation "before" any training."""
  rows = []
  for batch in data_lib.eval_batches(arrays, global_batch=len(arrays["label"])):
    leaves = jax.tree.leaves(model_inputs(batch, config.data.input_key))
    rows.append(np.concatenate([np.asarray(v, np.float32).reshape(len(v), -1) for v in leaves], 1))
  return np.concatenate(rows)
