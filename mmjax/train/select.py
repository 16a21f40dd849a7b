"""Checkpoint selection: the evaluation (and the weights) of a run's best step on a chosen metric.

With config.select.metric = "<eval set>/<number>" (e.g. "source_val/accuracy"), every evaluation
of the run (each config.eval_every steps, and the last step) is compared with the best so far; the
best one's numbers go to results.json under "selected", beside the last step's under "eval", and,
with config.select.keep_weights, its train state to workdir/best/checkpoints/<step> (an
`init_from.workdir` of "<workdir>/best" starts another run from it). This is early stopping's
choice of weights on a fixed budget of steps: the run still trains config.train.steps steps, so that
schedules that depend on the run's progress (DANN's lambda and learning rate) are the same. With
config.select.patience = p > 0 it is early stopping itself: the trainers stop the run once p
evaluations in a row have not beaten the best (`Selector.exhausted`), and results.json reports the
stop step ("step", "eval") and says so ("stopped_early"); in a sweep, a run that stops is finished
there and the others go on.

The evaluations seen so far are kept in workdir/selection.json. A run resumed from a checkpoint at
step s keeps those at steps <= s that lie on its evaluation grid (multiples of eval_every, and its
last step) and drops the others: later ones are evaluated again as the run replays those steps, and
an earlier run's last step (a finished run given more train.steps) or an old eval_every's steps are
not evaluations the run would have made. So a resumed or extended run chooses among the evaluations
an uninterrupted run with its final config makes.

Selecting on a target test set (or on meta_test) is the target oracle of Transfer-Learning-Library's
tables (best epoch on the test set); tables name the selection metric and say so
(mmjax.tables, protocol "selected_checkpoint").
"""
import json
import math
import pathlib
import shutil

import jax
from absl import logging
from jax.experimental import multihost_utils

from mmjax import config as config_lib
from mmjax.train import checkpoint, writers

MODES = ("max", "min")


def check(config) -> None:
  """Rejects a select.metric that names no eval set of the run, a bad mode or a bad patience,
  before training."""
  metric = config.select.metric
  patience = config.select.get("patience", 0)
  if not isinstance(patience, int) or patience < 0:
    raise config_lib.ConfigError(f"select.patience={patience!r}: expected an int >= 0 (0: off)")
  if patience and not metric:
    raise config_lib.ConfigError(f"select.patience={patience} stops on select.metric, which is "
                                 "not set")
  if not metric:
    return
  eval_names = ["meta_test"] if config.trainer == "meta" else list(config.evals)
  name, sep, number = metric.partition("/")
  if not sep or not number or "/" in number:
    raise config_lib.ConfigError(f"select.metric={metric!r}: expected '<eval set>/<number>', "
                                 "e.g. 'source_val/accuracy'")
  if name not in eval_names:
    raise config_lib.ConfigError(f"select.metric={metric!r}: no eval set {name!r}; this run "
                                 f"evaluates {', '.join(sorted(eval_names)) or 'nothing'}")
  if config.select.mode not in MODES:
    raise config_lib.ConfigError(f"select.mode={config.select.mode!r}: expected max or min")
  if not config.eval_every or config.eval_every >= config.train.steps:
    raise config_lib.ConfigError(f"select.metric={metric!r} needs 0 < eval_every < train.steps: "
                                 "with only the last step's evaluation there is nothing to choose "
                                 "from")


def check_reported(config, reported) -> None:
  """Rejects a select.metric whose number its eval set does not report, before training.

  `reported`: the numbers that eval set's evaluation gives (trainer.reported_numbers), or None when
  they cannot be known before an evaluation (then the first evaluation's `update` checks)."""
  if not config.select.metric or reported is None:
    return
  name, number = config.select.metric.split("/")
  if number not in reported:
    raise config_lib.ConfigError(f"select.metric={config.select.metric!r}: the evaluation of "
                                 f"{name!r} reports {', '.join(sorted(reported))}")


def _read(path: pathlib.Path):
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError:
    logging.warning("%s is unreadable; the selection starts afresh from the restored step", path)
    return {}


def _on_grid(step: int, config) -> bool:
  return step % config.eval_every == 0 or step == config.train.steps


class Selector:
  """Follows one run's evaluations; `update` after each, `result` at the end (None when off)."""

  def __init__(self, workdir, config, restored_step: int, stopped: bool = False):
    self.metric, self.mode = config.select.metric, config.select.mode
    self.keep_weights = bool(config.select.keep_weights)
    self.patience = int(config.select.get("patience", 0))
    self.workdir = pathlib.Path(workdir)
    self.path = self.workdir / "selection.json"
    self.history = []
    if not self.metric:
      return
    saved = _read(self.path)
    if saved and (saved.get("metric"), saved.get("mode")) == (self.metric, self.mode):
      # A run that select.patience stopped at the restored step replays nothing: it keeps every
      # evaluation it made, whatever the grid is now.
      kept = [h for h in saved.get("history", [])
              if h["step"] <= restored_step and (stopped or _on_grid(h["step"], config))]
      dropped = sorted({h["step"] for h in saved.get("history", [])} - {h["step"] for h in kept})
      if dropped:
        logging.info("selection: dropping the evaluations of steps %s (after the restored step %d, "
                     "or off the evaluation grid); the replay evaluates its own", dropped,
                     restored_step)
      self.history = kept
    elif saved is not None:
      logging.warning("%s follows %s (%s), not %s (%s); starting the selection afresh", self.path,
                      saved.get("metric"), saved.get("mode"), self.metric, self.mode)
    # Kept weights must be the best entry's: anything else (a stop between the weights' save and
    # selection.json's write, a dropped best) goes, and the replay saves the best again.
    best = self.best
    stale = self._weight_steps() != ({best["step"]} if best else set())
    if jax.process_count() > 1:  # every process has looked before any deletes
      multihost_utils.sync_global_devices("mmjax_selection_read")
    if stale:
      self._drop_weights()

  @property
  def best(self):
    """The history's best entry; ties go to the earliest (a later step must be strictly better)."""
    best = None
    for h in self.history:
      if math.isfinite(h["value"]) and (best is None or (
          h["value"] > best["value"] if self.mode == "max" else h["value"] < best["value"])):
        best = h
    return best

  def exhausted(self) -> bool:
    """With select.patience = p > 0: whether the last p evaluations all failed to beat the best
    (early stopping's rule; with no finite value yet, p evaluations in all)."""
    if not self.patience:
      return False
    best = self.best
    since = len(self.history) - 1 - self.history.index(best) if best else len(self.history)
    return since >= self.patience

  def stop_entry(self) -> dict:
    """results.json's "stopped_early": the evaluation that exhausted the patience."""
    best = self.best
    return {"step": self.history[-1]["step"], "patience": self.patience,
            "best_step": best["step"] if best else None}

  def _weight_steps(self) -> set:
    directory = self.workdir / "best" / "checkpoints"
    return {int(d.name) for d in directory.iterdir() if d.name.isdigit()} if directory.is_dir() \
        else set()

  def _drop_weights(self):
    if jax.process_index() == 0 and (self.workdir / "best").exists():
      shutil.rmtree(self.workdir / "best")
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("mmjax_selection_drop")

  def update(self, step: int, evaluation: dict, save_tree=None) -> bool:
    """Records `evaluation` (as trainer.evaluate returns it) of `step`; True when it is the new
    best. save_tree(): the tree to keep as the best weights (all processes call it together)."""
    if not self.metric:
      return False
    name, number = self.metric.split("/")
    if number not in evaluation.get(name, {}):
      raise KeyError(f"select.metric={self.metric!r}: the evaluation of {name!r} has "
                     f"{sorted(evaluation.get(name, {}))}")
    entry = {"step": step, "value": float(evaluation[name][number]), "eval": evaluation}
    self.history = [h for h in self.history if h["step"] < step] + [entry]
    best = self.best
    improved = best is entry
    if improved and self.keep_weights and save_tree is not None:
      # One step in best/ at a time, saved into an empty folder: orbax refuses a step that exists
      # (a final evaluation redone after a stop), and keeps its newest save, not its highest step.
      self._drop_weights()
      ckpt = checkpoint.Checkpointer(self.workdir / "best", keep=1)
      try:
        ckpt.save(step, save_tree(), {"step": step, "metric": self.metric, "value": entry["value"]})
      finally:
        ckpt.close()
    if jax.process_index() == 0:
      writers.write_json_atomic(self.path, {"metric": self.metric, "mode": self.mode,
                                            "best": best, "history": self.history})
    return improved

  def result(self):
    """results.json's "selected": the chosen step, its value and its whole evaluation, and where
    its weights are (None when not kept, or lost to a resume whose replay chose otherwise)."""
    if not self.metric:
      return None
    best = self.best or {"step": None, "value": None, "eval": None}
    return {"metric": self.metric, "mode": self.mode, "evaluations": len(self.history), **best,
            "weights": str(self.workdir / "best") if self.keep_weights and best["step"] is not None
            and best["step"] in self._weight_steps() else None}
