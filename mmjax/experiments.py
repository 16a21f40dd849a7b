"""Runs the cells of a table: one engine run per (row, column, seed), each in its own workdir.

A cell whose workdir holds a finished `results.json` is never run again; an interrupted cell is
started again with the same command and so resumes from its checkpoint. Cells run as `launch.py`
subprocesses, so a crash or a kill of one never takes another's result with it.
"""
import concurrent.futures
import dataclasses
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time

from absl import logging

from mmjax.config import load_module

REPO = pathlib.Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Cell:
  """One run of a table: its place (row, column, seed) and what to run (config spec + overrides)."""
  row: str
  column: str
  seed: int
  config: str                      # "configs/digits.py:mnist_usps"
  overrides: tuple = ()            # (("train.steps", "100"), ...)
  tag: str = ""                    # tells apart runs of one (row, column, seed): grid candidates

  @property
  def key(self) -> str:
    tag = f"{slug(self.tag)}/" if self.tag else ""
    return f"{slug(self.row)}/{slug(self.column)}/{tag}seed_{self.seed}"


def slug(text: str) -> str:
  return re.sub(r"[^a-z0-9]+", "_", text.lower().replace("→", "_to_")).strip("_")


def load_config_module(config: str):
  """The module of a config file given relative to the repository (for its sweep())."""
  return load_module(REPO / config)


def grid(settings, seeds, overrides=()):
  """Cells for every (row, column, config) setting times every seed, seed by seed: a run cut short
  still gives every row and column, with fewer seeds."""
  return [Cell(row=s["row"], column=s["column"], seed=seed, config=s["config"],
               overrides=tuple(overrides) + tuple(s.get("overrides", ())))
          for seed in seeds for s in settings]


def cell_dir(root: pathlib.Path, cell: Cell) -> pathlib.Path:
  return pathlib.Path(root) / cell.key


def is_finished(root: pathlib.Path, cell: Cell) -> bool:
  path = cell_dir(root, cell) / "results.json"
  try:
    return "eval" in json.loads(path.read_text())
  except (FileNotFoundError, json.JSONDecodeError):
    return False


class Runner:
  """Runs unfinished cells, up to `parallel` at once; SIGTERM/Ctrl-C is passed on to the runs."""

  def __init__(self, root, parallel: int = 1, env=None):
    self.root = pathlib.Path(root)
    self.parallel = max(1, parallel)
    self.env = {**os.environ, **(env or {})}
    self._procs = set()
    self._lock = threading.Lock()
    self._stopping = False

  def run(self, cells) -> dict:
    """Returns {cell.key: "done" | "skipped" | "failed: ..." | "stopped"}."""
    todo = [c for c in cells if not is_finished(self.root, c)]
    status = {c.key: "skipped" for c in cells if c not in todo}
    logging.info("%d cells: %d finished, %d to run", len(cells), len(status), len(todo))
    previous = {s: signal.signal(s, self._stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
      with concurrent.futures.ThreadPoolExecutor(self.parallel) as pool:
        for cell, outcome in zip(todo, pool.map(self._run_cell, todo)):
          status[cell.key] = outcome
    finally:
      for s, handler in previous.items():
        signal.signal(s, handler)
    return status

  def _run_cell(self, cell: Cell) -> str:
    if self._stopping:
      return "stopped"
    workdir = cell_dir(self.root, cell)
    workdir.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, str(REPO / "launch.py"), f"--config={REPO / cell.config}",
            f"--workdir={workdir}", f"--config.seed={cell.seed}"]
    args += [f"--config.{k}={v}" for k, v in cell.overrides]
    start = time.time()
    with (workdir / "log.txt").open("a") as log:
      proc = subprocess.Popen(args, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT)
      with self._lock:
        self._procs.add(proc)
      code = proc.wait()
      with self._lock:
        self._procs.discard(proc)
    if is_finished(self.root, cell):
      logging.info("%s done in %.0f s", cell.key, time.time() - start)
      return "done"
    if self._stopping:
      return "stopped"
    tail = (workdir / "log.txt").read_text()[-2000:]
    logging.error("%s failed (exit %d); log: %s\n%s", cell.key, code, workdir / "log.txt", tail)
    return f"failed: exit {code}, see {workdir / 'log.txt'}"

  def _stop(self, signum, frame):
    del frame
    self._stopping = True
    with self._lock:
      for proc in self._procs:
        proc.send_signal(signal.SIGTERM)  # each run saves a checkpoint and exits
    logging.warning("signal %d: runs asked to save and stop; run the same command to resume", signum)
