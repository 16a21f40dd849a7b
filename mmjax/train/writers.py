"""Metrics out of a run: TensorBoard (clu), workdir/metrics.jsonl, a progress bar, results.json.

Only process 0 writes files; the others only log. Where clu cannot be imported (its TensorBoard
writer needs TensorFlow, e.g. on a GPU image without it), scalars and the steps/s report go to the
log and metrics.jsonl only, and no TensorBoard events are written.
"""
import json
import os
import pathlib
import sys
import time

import jax
from absl import logging
from tqdm import tqdm

try:
  from clu import metric_writers, periodic_actions
except ImportError as _clu_error:  # noqa: N816
  metric_writers = periodic_actions = None
  CLU_MISSING = str(_clu_error)
else:
  CLU_MISSING = None


def write_json_atomic(path: pathlib.Path, obj) -> None:
  """Writes JSON through a temporary file and a rename, so a crash never leaves half a file."""
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
  os.replace(tmp, path)


class Writers:
  """One object for every sink of train and eval scalars."""

  def __init__(self, workdir: pathlib.Path, total_steps: int, start_step: int, log_every: int):
    self.lead = jax.process_index() == 0
    if metric_writers is None:
      logging.warning("no TensorBoard events in %s: clu cannot be imported (%s); metrics go to "
                      "metrics.jsonl and the log", workdir, CLU_MISSING)
      self.tensorboard = _LogWriter()
    else:
      self.tensorboard = metric_writers.create_default_writer(
          str(workdir), just_logging=not self.lead, asynchronous=False)
    self.jsonl_path = workdir / "metrics.jsonl"
    if self.lead:
      _drop_rows_after(self.jsonl_path, start_step)
    self.report = (_Progress(self.tensorboard, log_every) if periodic_actions is None else
                   periodic_actions.ReportProgress(num_train_steps=total_steps, writer=self.tensorboard,
                                                   every_steps=log_every, every_secs=None))
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
    """Flushes and closes the writers; a second call does nothing."""
    if getattr(self, "_closed", False):
      return
    self._closed = True
    if self.bar is not None:
      self.bar.close()
    self.tensorboard.flush()
    self.tensorboard.close()


class _LogWriter:
  """The part of clu's writer the loop uses, writing to the log alone (clu missing)."""

  def write_scalars(self, step: int, values: dict) -> None:
    logging.info("[%d] %s", step, ", ".join(f"{k}={v:.6g}" for k, v in values.items()))

  def write_hparams(self, hparams: dict) -> None:
    logging.info("hparams: %s", hparams)

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


class _Progress:
  """Steps/s every `every` steps to the writer, like clu's ReportProgress (clu missing)."""

  def __init__(self, writer, every: int):
    self.writer, self.every = writer, max(int(every), 1)
    self.last = None

  def __call__(self, step: int) -> None:
    if step % self.every:
      return
    now = time.perf_counter()
    if self.last is not None and step > self.last[0]:
      self.writer.write_scalars(step, {"steps_per_sec": (step - self.last[0]) / (now - self.last[1])})
    self.last = (step, now)


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
