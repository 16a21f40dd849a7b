"""Checkpoints under workdir/checkpoints with orbax: save, resume with fallback, read another run's params.

A checkpoint holds the train state (params, optimizer state, step), the base rng, and JSON metadata
with the input pipeline's position, so that a resumed run continues exactly where it stopped.
"""
import pathlib
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils


class CheckpointError(RuntimeError):
  """No usable checkpoint where one was expected."""


def _manager(directory: pathlib.Path, keep: int = 0, read_only: bool = False):
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep or None, create=not read_only, read_only=read_only,
      # Synchronous saves: a SIGTERM or kill -9 right after save() never finds a half-written one.
      enable_async_checkpointing=False)
  # A reader names the state's handler up front: without it orbax reads no metadata for "state",
  # and a restore falls back to the shardings stored in the checkpoint, which name the devices of
  # the run that wrote it (a run of several processes: "Topology mismatch" in any other process).
  handlers = {"state": ocp.StandardCheckpointHandler()} if read_only else None
  return ocp.CheckpointManager(directory.absolute(), options=options, item_handlers=handlers)


class Checkpointer:
  """Saves every config.checkpoint.every steps and restores the newest checkpoint that loads."""

  def __init__(self, workdir: pathlib.Path, keep: int):
    self.directory = pathlib.Path(workdir).absolute() / "checkpoints"
    self.corrupt_dir = pathlib.Path(workdir).absolute() / "checkpoints_corrupt"
    self.keep = keep
    self.manager = _manager(self.directory, keep)

  def latest_step(self):
    return self.manager.latest_step()

  def save(self, step: int, tree, meta: dict) -> None:
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)), force=True)
    self.manager.wait_until_finished()

  def restore_latest(self, abstract_tree):
    """Returns (tree, meta) of the newest checkpoint that restores, or None when there is none.

    A checkpoint that fails to load is moved to workdir/checkpoints_corrupt with a warning naming it,
    and the previous one is tried, so a crash during a save never costs more than one interval.
    """
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_tree), meta=ocp.args.JsonRestore()))
        _check_finite(restored["state"], step)
        return restored["state"], dict(restored["meta"])
      except Exception as e:  # orbax and tensorstore raise many types for damaged files
        logging.warning("checkpoint %s is corrupt or unreadable (%s: %s); moving it to %s and "
                        "falling back to the previous checkpoint",
                        self.directory / str(step), type(e).__name__, str(e)[:300], self.corrupt_dir)
        self._quarantine(step)
    return None

  def _quarantine(self, step: int) -> None:
    if jax.process_index() == 0:
      self.corrupt_dir.mkdir(parents=True, exist_ok=True)
      target = self.corrupt_dir / str(step)
      if target.exists():
        shutil.rmtree(target)
      shutil.move(str(self.directory / str(step)), str(target))
    multihost_utils.sync_global_devices(f"mmjax_quarantine_{step}")
    self.manager.close()
    self.manager = _manager(self.directory, self.keep)

  def close(self):
    self.manager.close()


def _check_finite(tree, step):
  for leaf in jax.tree.leaves(tree):
    if jax.dtypes.issubdtype(leaf.dtype, np.floating) and not bool(
        np.isfinite(np.asarray(jax.device_get(leaf))).all()):
      raise ValueError(f"non-finite values in checkpoint {step}")


def read_params(workdir: str, step: int = -1):
  """The params of another run's checkpoint (its latest when step is -1), as numpy arrays."""
  params, _, step = read_variables(workdir, step)
  return params, step


def read_variables(workdir: str, step: int = -1):
  """(params, model_state, step) of another run's checkpoint (its latest when step is -1), as numpy
  arrays; model_state is {} for models without batch norm averages (and for older checkpoints)."""
  directory = pathlib.Path(workdir).absolute() / "checkpoints"
  if not directory.is_dir():
    raise CheckpointError(f"init_from.workdir={workdir!r} has no checkpoints directory {directory}")
  manager = _manager(directory, read_only=True)
  steps = manager.all_steps()
  if not steps:
    raise CheckpointError(f"no checkpoint in {directory}")
  step = max(steps) if step < 0 else step
  if step not in steps:
    raise CheckpointError(f"no checkpoint for step {step} in {directory}; it has {sorted(steps)}")
  metadata = manager.item_metadata(step)["state"]
  # Restore onto this process's first device, whatever the devices of the run that wrote it.
  sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
                          metadata)
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
  manager.close()
  state = restored["state"]["state"]
  return jax.device_get(state["params"]), jax.device_get(state.get("model_state") or {}), step
