"""Runs the cells of a table: one engine run per (row, column, seed), each in its own workdir.

A cell whose workdir holds a finished `results.json` is never run again; an interrupted cell is
started again with the same command and so resumes from its checkpoint. Cells run as `launch.py`
subprocesses, so a crash or a kill of one never takes another's result with it.

Sweep mode (on unless turned off): cells whose configs differ only in seed, datasets, evals and
float hyperparameters (config.sweep_key) train together as one vmapped program in one subprocess
(mmjax/train/sweep.py), each still in its own workdir. Cells a sweep did not finish (it failed, or
they cannot share it after all) then run one by one, resuming from what the sweep saved.
"""
import concurrent.futures
import dataclasses
import hashlib
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

from mmjax import config as config_lib
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
  still gives every row and column, with fewer seeds. A setting's optional "max_seeds" caps its
  seeds (the table's n column shows each cell's count)."""
  return [Cell(row=s["row"], column=s["column"], seed=seed, config=s["config"],
               overrides=tuple(overrides) + tuple(s.get("overrides", ())))
          for seed in seeds for s in settings if seed < s.get("max_seeds", seed + 1)]


def cell_dir(root: pathlib.Path, cell: Cell) -> pathlib.Path:
  return pathlib.Path(root) / cell.key


_MISMATCHED = set()  # cells whose mismatch was already logged


def is_finished(root: pathlib.Path, cell: Cell) -> bool:
  """Whether the cell's workdir holds finished results of the cell's own config: results written
  under another config (a changed --set, config file or default) are not this cell's, so they are
  neither shown in tables nor kept in place of a run (which then stops with the differences)."""
  path = cell_dir(root, cell) / "results.json"
  try:
    results = json.loads(path.read_text())
  except (FileNotFoundError, json.JSONDecodeError):
    return False
  config = cell_config(cell)
  if "eval" not in results or not config_lib.run_finished(results, config,
                                                          default_step=config.train.steps):
    return False  # unfinished, or finished at another step count (the run then extends it)
  mismatch = _other_run(root, cell, config)
  if mismatch is not None:
    if cell.key not in _MISMATCHED:
      _MISMATCHED.add(cell.key)
      logging.warning("cell %s does not count as finished: %s", cell.key, mismatch)
    return False
  return True


def _other_run(root, cell: Cell, config=None) -> "config_lib.ConfigMismatchError | None":
  """The error config.check_same_run raises when the cell's workdir holds another config's run."""
  try:
    config_lib.check_same_run(config if config is not None else cell_config(cell),
                             cell_dir(root, cell))
  except config_lib.ConfigMismatchError as e:
    return e
  return None


def cell_config(cell: Cell):
  """The resolved config a cell runs (its config spec, overrides and seed)."""
  return config_lib.load_with_overrides(str(REPO / cell.config),
                                        {**dict(cell.overrides), "seed": str(cell.seed)})


def sweep_groups(cells, max_size: int | None = None) -> list:
  """Cells grouped by config.sweep_key, in first-seen order; cells that cannot sweep, or have no
  partner, come as groups of one. With `max_size`, a larger group is cut into consecutive sweeps of
  at most that many cells (a sweep holds every distinct dataset of its runs in memory at once)."""
  groups = {}
  for i, cell in enumerate(cells):
    key = config_lib.sweep_key(cell_config(cell))
    groups.setdefault(key if key is not None else f"solo {i}", []).append(cell)
  size = max_size or max(map(len, groups.values()), default=1)
  return [group[i:i + size] for group in groups.values() for i in range(0, len(group), size)]


class Runner:
  """Runs unfinished cells, up to `parallel` runs or sweeps at once; SIGTERM/Ctrl-C is passed on.

  With `sweep` (the default), compatible cells train together as one sweep (see the docstring),
  at most `max_sweep` cells in one sweep when it is set.
  """

  def __init__(self, root, parallel: int = 1, env=None, sweep: bool = True,
               max_sweep: int | None = None):
    self.root = pathlib.Path(root)
    self.parallel = max(1, parallel)
    self.env = {**os.environ, **(env or {})}
    self.sweep = sweep
    self.max_sweep = max_sweep
    self._procs = set()
    self._lock = threading.Lock()
    self._stopping = False

  def run(self, cells) -> dict:
    """Returns {cell.key: "done" | "skipped" | "failed: ..." | "stopped"}."""
    todo = [c for c in cells if not is_finished(self.root, c)]
    status = {c.key: "skipped" for c in cells if c not in todo}
    groups = self.groups(todo)
    logging.info("%d cells: %d finished, %d to run in %d sweeps and %d single runs", len(cells),
                 len(status), len(todo), sum(len(g) > 1 for g in groups),
                 sum(len(g) == 1 for g in groups))
    previous = {s: signal.signal(s, self._stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
      with concurrent.futures.ThreadPoolExecutor(self.parallel) as pool:
        for outcome in pool.map(self._run_group, groups):
          status.update(outcome)
    finally:
      for s, handler in previous.items():
        signal.signal(s, handler)
    return status

  def groups(self, todo) -> list:
    """The sweeps and single runs that train `todo`. A cell whose workdir holds a run of another
    config runs alone: its run stops with the differing fields (config.check_same_run), and in a
    sweep it would stop its partners too."""
    if not self.sweep:
      return [[c] for c in todo]
    other = [c for c in todo if _other_run(self.root, c) is not None]
    return sweep_groups([c for c in todo if c not in other], self.max_sweep) + [[c] for c in other]

  def _run_group(self, group) -> dict:
    """Runs a sweep of the group's cells, then one by one any cell it did not finish."""
    if len(group) > 1:
      self._run_sweep(group)
    return {cell.key: "done" if len(group) > 1 and is_finished(self.root, cell)
            else self._run_cell(cell) for cell in group}

  def _run_sweep(self, group) -> None:
    if self._stopping:
      return
    spec = {"runs": [{"config": str(REPO / c.config),
                      "overrides": {**dict(c.overrides), "seed": str(c.seed)},
                      "workdir": str(cell_dir(self.root, c))} for c in group]}
    text = json.dumps(spec, indent=1, sort_keys=True)
    name = f"{slug(group[0].row)}_{len(group)}_{hashlib.sha1(text.encode()).hexdigest()[:8]}"
    directory = self.root / "sweeps"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.json").write_text(text)
    for cell in group:
      cell_dir(self.root, cell).mkdir(parents=True, exist_ok=True)
      with (cell_dir(self.root, cell) / "log.txt").open("a") as log:
        log.write(f"trained in sweep {directory / name}.json with {len(group) - 1} other runs; "
                  f"its log: {directory / name}.log\n")
    start = time.time()
    code = self._spawn([sys.executable, str(REPO / "launch.py"), f"--sweep={directory / name}.json"],
                       directory / f"{name}.log")
    finished = sum(is_finished(self.root, c) for c in group)
    logging.info("sweep %s: %d of %d runs finished in %.0f s (exit %d)", name, finished,
                 len(group), time.time() - start, code)
    if finished < len(group) and not self._stopping:
      logging.warning("sweep %s left %d runs unfinished (log: %s); running them one by one",
                      name, len(group) - finished, directory / f"{name}.log")

  def _spawn(self, args, log_path) -> int:
    with open(log_path, "a") as log:
      proc = subprocess.Popen(args, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT)
      with self._lock:
        self._procs.add(proc)
      code = proc.wait()
      with self._lock:
        self._procs.discard(proc)
    return code

  def _run_cell(self, cell: Cell) -> str:
    if self._stopping:
      return "stopped"
    workdir = cell_dir(self.root, cell)
    workdir.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, str(REPO / "launch.py"), f"--config={REPO / cell.config}",
            f"--workdir={workdir}", f"--config.seed={cell.seed}"]
    args += [f"--config.{k}={v}" for k, v in cell.overrides]
    start = time.time()
    code = self._spawn(args, workdir / "log.txt")
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
