"""Whole tables in sweep mode against run by run: wall time, speedup and equality of the results.

python benchmarks/sweep_tables.py [--tables=amazon,sinusoid] [--solo_cells=N] [--full_solo]
    [--parallel=2]

For each table it runs the table script in sweep mode (the default) into a fresh workdir and times
it, then trains `--solo_cells` of its cells again one by one (spread over the sweeps, each as its
own `launch.py` process, as `--nosweep` runs them) and times those. The run-by-run time of the
whole table is the mean solo cell time times the number of cells (measured in full with
--full_solo). It checks that each re-run cell's metric equals the swept cell's and writes
benchmarks/results/sweep_tables.json.
"""
import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
# table -> (script and flags, metric compared between modes, cells re-run alone by default)
TABLES = {
    "amazon": (["experiments/amazon_table.py", "--seeds=5"], ("target_test", "accuracy"), 4),
    "sinusoid": (["experiments/sinusoid_table.py", "--seeds=5", "--budget=full"],
                 ("meta_test", "loss_step10"), 2),
}


def _metric(workdir, path):
  results = json.loads((pathlib.Path(workdir) / "results.json").read_text())
  return results["eval"][path[0]][path[1]]


def _sweep_runs(root):
  """Every run the table's sweeps trained: [{"config", "overrides", "workdir"}]."""
  runs = []
  for spec in sorted((root / "sweeps").glob("*.json")):
    runs.append(json.loads(spec.read_text())["runs"])
  return runs


def _spread(groups, count):
  """`count` runs taken round-robin over the sweeps, so every sweep (row) is represented."""
  picked, i = [], 0
  while len(picked) < min(count, sum(map(len, groups))):
    for group in groups:
      if i < len(group) and len(picked) < count:
        picked.append(group[i])
    i += 1
  return picked


def bench_table(name, solo_cells, full_solo, work, parallel):
  script, metric, default_solo = TABLES[name]
  solo_cells = solo_cells or default_solo
  root = work / name
  start = time.time()
  subprocess.run([sys.executable, *script, f"--workdir={root / 'sweep'}",
                  f"--out={root / 'tables'}", f"--parallel={parallel}"], cwd=REPO, check=True,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  sweep_s = time.time() - start
  groups = _sweep_runs(root / "sweep")
  cells = sum(map(len, groups))
  solo = [run for group in groups for run in group] if full_solo else _spread(groups, solo_cells)
  times, diffs = [], []
  for i, run in enumerate(solo):
    workdir = root / "solo" / str(i)
    args = [sys.executable, "launch.py", f"--config={run['config']}", f"--workdir={workdir}"]
    args += [f"--config.{k}={v}" for k, v in run["overrides"].items()]
    start = time.time()
    subprocess.run(args, cwd=REPO, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    times.append(time.time() - start)
    diffs.append(abs(_metric(workdir, metric) - _metric(run["workdir"], metric)))
  solo_total = sum(times) if full_solo else sum(times) / len(times) * cells
  row = {"table": name, "cells": cells, "sweeps": len(groups), "sweep_wall_s": sweep_s,
         "solo_cells_timed": len(times), "solo_mean_cell_s": sum(times) / len(times),
         "run_by_run_wall_s": solo_total, "run_by_run_measured_in_full": full_solo,
         "speedup": solo_total / sweep_s, "metric": "/".join(metric),
         "max_abs_metric_diff_sweep_vs_solo": max(diffs), "parallel": parallel}
  print(f"{name}: {cells} cells in {len(groups)} sweeps: sweep mode {sweep_s:.0f} s, run by run "
        f"{solo_total:.0f} s ({'measured' if full_solo else f'{len(times)} cells timed'}), "
        f"speedup {row['speedup']:.1f}x; max |{row['metric']} sweep - solo| = {max(diffs):.2g}")
  return row


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--tables", default="amazon,sinusoid")
  parser.add_argument("--solo_cells", type=int, default=0,
                      help="cells re-run alone (default: 4 for amazon, 2 for sinusoid)")
  parser.add_argument("--full_solo", action="store_true")
  parser.add_argument("--parallel", type=int, default=1, help="sweeps run at once")
  parser.add_argument("--out", default=str(REPO / "benchmarks/results/sweep_tables.json"))
  args = parser.parse_args()
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  with tempfile.TemporaryDirectory() as tmp:
    rows = [bench_table(t, args.solo_cells, args.full_solo, pathlib.Path(tmp), args.parallel)
            for t in args.tables.split(",")]
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.node(),
                             "cpus": os.cpu_count(), "tables": rows}, indent=2) + "\n")
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
