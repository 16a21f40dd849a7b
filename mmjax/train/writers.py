"""Metrics out of a run: TensorBoard events, workdir/metrics.jsonl, a progress bar, results.json.

Only process 0 writes files; the others only log. TensorBoard events are written with the
`tensorboard` package's record writer and scalar protos: what clu's writer wrote, without importing
TensorFlow (about 5 s of every process's start). Where `tensorboard` cannot be
imported, scalars and the steps/s report go to the log and metrics.jsonl only.
"""
import json
import os
import pathlib
import socket
import sys
import time

import jax
from absl import logging
from tqdm import tqdm

try:  # these three import neither TensorFlow nor tensorboard's TF-or-stub `compat.tf`
  from tensorboard.compat.proto import event_pb2 as _event_pb2
  from tensorboard.plugins.scalar import summary_v2 as _scalar_summary
  from tensorboard.summary.writer import record_writer as _record_writer
except ImportError as _tensorboard_error:  # noqa: N816
  _record_writer = None
  TENSORBOARD_MISSING = str(_tensorboard_error)
else:
  TENSORBOARD_MISSING = None


def write_json_atomic(path: pathlib.Path, obj) -> None:
  """Writes JSON through a temporary file and a rename, so a crash never leaves half a file."""
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
  os.replace(tmp, path)


class Writers:
  """One object for every sink of train and eval scalars."""

  def __init__(self, workdir: pathlib.Path, total_steps: int, start_step: int, log_every: int):
    self.lead = jax.process_index() == 0
    self.tensorboard = _LogWriter()
    if self.lead and _record_writer is None:
      logging.warning("no TensorBoard events in %s: the tensorboard package cannot be imported "
                      "(%s); metrics go to metrics.jsonl and the log", workdir, TENSORBOARD_MISSING)
    self.jsonl_path = workdir / "metrics.jsonl"
    # On resume: the rows logged after the checkpoint go (they are logged again); those logged at
    # its step before it was saved are written to the new event file again, after the
    # session-start event at that step that makes TensorBoard drop the old files' later steps.
    kept = _drop_rows_after(self.jsonl_path, start_step, total_steps) if self.lead else []
    if self.lead and _record_writer is not None:
      events = _EventWriter(workdir, start_step)
      for row in kept:
        events.write_scalars(start_step, {k: v for k, v in row.items() if k != "step"})
      self.tensorboard = _Both(self.tensorboard, events)
    self.report = _Progress(self.tensorboard, log_every, total_steps)
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
  """Scalars to the log, one line a step."""

  def write_scalars(self, step: int, values: dict) -> None:
    logging.info("[%d] %s", step, ", ".join(f"{k}={v:.6g}" for k, v in values.items()))

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


class _EventWriter:
  """Scalars as TensorBoard events (the scalars plugin's tensor summaries, as tf.summary.scalar
  writes them) in `workdir`/events.out.tfevents.*: TFRecords of Event protos, written through
  tensorboard's RecordWriter into a plain file and flushed at every call."""

  def __init__(self, workdir: pathlib.Path, start_step: int = 0):
    name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.0"
    self.path = pathlib.Path(workdir) / name
    self.records = _record_writer.RecordWriter(open(self.path, "ab"))  # noqa: SIM115
    self._write(_event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))
    # Every start of the run marks a session: at a resume (any START after a run's first),
    # TensorBoard drops the earlier files' steps from start_step on (Writers writes the rows of
    # start_step that the checkpoint covers again; the later ones this process logs again).
    self._write(_event_pb2.Event(wall_time=time.time(), step=int(start_step),
                                 session_log=_event_pb2.SessionLog(status=_event_pb2.SessionLog.START)))
    self.records.flush()

  def _write(self, event) -> None:
    self.records.write(event.SerializeToString())

  def write_scalars(self, step: int, values: dict) -> None:
    now = time.time()
    for tag, value in values.items():
      self._write(_event_pb2.Event(wall_time=now, step=int(step),
                                   summary=_scalar_summary.scalar_pb(tag, float(value))))
    self.records.flush()

  def flush(self) -> None:
    self.records.flush()

  def close(self) -> None:
    if not self.records.closed:
      self.records.close()


class _Both:
  """Every call to both writers."""

  def __init__(self, *writers):
    self.writers = writers

  def write_scalars(self, step: int, values: dict) -> None:
    for writer in self.writers:
      writer.write_scalars(step, values)

  def flush(self) -> None:
    for writer in self.writers:
      writer.flush()

  def close(self) -> None:
    for writer in self.writers:
      writer.close()


class _Progress:
  """Every `every` steps: steps/s since the last report to the writer (and so the log), and the
  ETA to the log."""

  def __init__(self, writer, every: int, total_steps: int):
    self.writer, self.every, self.total = writer, max(int(every), 1), total_steps
    self.last = None

  def __call__(self, step: int) -> None:
    if step % self.every:
      return
    now = time.perf_counter()
    if self.last is not None and step > self.last[0]:
      rate = (step - self.last[0]) / (now - self.last[1])
      self.writer.write_scalars(step, {"steps_per_sec": rate})
      logging.info("step %d/%d, ETA %.0f s", step, self.total, max(self.total - step, 0) / rate)
    self.last = (step, now)


def _drop_rows_after(path: pathlib.Path, step: int, total_steps: int) -> list[dict]:
  """On resume, forgets the rows logged after the checkpoint we resumed from (they are logged
  again), and returns the kept rows of its step.

  Every trainer logs a step's train row and periodic evaluation before saving it; the last step's
  evaluation comes after its checkpoint (the final evaluation), so at `total_steps` only train rows
  are kept.
  """
  if not path.exists():
    return []
  lines = [line for line in path.read_text().splitlines() if line.strip()]
  rows = [json.loads(line) for line in lines]

  def keep(row):
    return row["step"] < step or (row["step"] == step and (
        step < total_steps or any(k.startswith("train/") for k in row)))

  kept = [(line, row) for line, row in zip(lines, rows) if keep(row)]
  if len(kept) != len(lines):
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line, _ in kept))
    os.replace(tmp, path)
  return [row for _, row in kept if row["step"] == step]
