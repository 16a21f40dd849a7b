"""Metrics out of a run: TensorBoard (clu), workdir/metrics.jsonl, a progress bar, results.json.

Only process 0 writes files; the others only log.
"""
import json
import os
import pathlib
import sys

import jax
from clu import metric_writers, periodic_actions
from tqdm import tqdm


def write_json_atomic(path: pathlib.Path, obj) -> None:
  """Writes JSON through a temporary file and a rename, so a crash never leaves half a file."""
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
  os.replace(tmp, path)


class Writers:
  """One object for every sink of train and eval scalars."""

  def __init__(self, workdir: pathlib.Path, total_steps: int, start_step: int, log_every: int):
    self.lead = jax.process_index() == 0
    self.tensorboard = metric_writers.create_default_writer(
        str(workdir), just_logging=not self.lead, asynchronous=False)
    self.jsonl_path = workdir / "metrics.jsonl"
    if self.lead:
      _drop_rows_after(self.jsonl_path, start_step)
    self.report = periodic_actions.ReportProgress(
        num_train_steps=total_steps, writer=self.tensorboard, every_steps=log_every, every_secs=None)
    self.bar = None
    if self.lead and sys.stderr.isatty():
      self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

  def step(self, step: int) -> None:
    """Called after every train step: progress (steps/s, ETA) without touching device values."""
    self.report(step)
    if self.bar is not None:
      self.bar.update(step - self.bar.n)

  def scalars(self, step: int, values: dict) -> None:
    self.tensorboard.write_scalars(step, values)
    if self.lead:
      with self.jsonl_path.open("a") as f:
        f.write(json.dumps({"step": step, **values}) + "\n")
    if self.bar is not None and "train/loss" in values:
      self.bar.set_postfix(loss=f"{values['train/loss']:.4f}", refresh=False)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()
    self.tensorboard.flush()
    self.tensorboard.close()


def _drop_rows_after(path: pathlib.Path, step: int) -> None:
  """On resume, forget rows logged after the checkpoint we resumed from: they are logged again."""
  if not path.exists():
    return
  rows = [line for line in path.read_text().splitlines() if line.strip()]
  kept = [r for r in rows if json.loads(r)["step"] <= step]
  if len(kept) != len(rows):
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(r + "\n" for r in kept))
    os.replace(tmp, path)
