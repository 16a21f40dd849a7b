"""Tables: aggregation against numpy, the three formats, skipping finished cells, the quick digits table."""
import csv
import dataclasses
import io
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np

import pytest

from mmjax import experiments, table_script, tables
from conftest import xla_flags

REPO = pathlib.Path(__file__).resolve().parents[1]

SPEC = tables.TableSpec(
    name="t", title="Toy", metric="target_test/accuracy", rows=["a", "b"], columns=["X→Y"],
    protocol="fixed", published={("a", "X→Y"): 0.5}, published_source="paper",
    extra_metrics={"src": "source_test/accuracy"})


def _fake_cells(root, values):
  cells = experiments.grid([{"row": "a", "column": "X→Y", "config": "configs/digits.py"}],
                           range(len(values)))
  for cell, v in zip(cells, values):
    d = experiments.cell_dir(root, cell)
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps({
        "eval": {"target_test": {"accuracy": v}, "source_test": {"accuracy": 1 - v}},
        "wall_time_s": 2.0}))
  return cells


def test_collect_gives_mean_std_n_and_difference(tmp_path):
  values = [0.61, 0.64, 0.58, 0.70]
  cells = _fake_cells(tmp_path, values)
  cells += experiments.grid([{"row": "b", "column": "X→Y", "config": "configs/digits.py"}], [0])
  recs = tables.collect(tmp_path, cells, SPEC)
  a = next(r for r in recs if r["row"] == "a")
  assert a["n"] == 4
  np.testing.assert_allclose(a["mean"], np.mean(values))
  np.testing.assert_allclose(a["std"], np.std(values, ddof=1))
  np.testing.assert_allclose(a["diff"], np.mean(values) - 0.5)
  np.testing.assert_allclose(a["src"], 1 - np.mean(values))
  assert a["wall_time_s"] == 8.0
  b = next(r for r in recs if r["row"] == "b")
  assert b["n"] == 0 and b["published"] is None and b["diff"] is None


def test_table_flags_adjust_the_spec_and_the_caption_names_every_override():
  plain = table_script.adjust_spec(SPEC)
  assert plain == SPEC
  spec = table_script.adjust_spec(dataclasses.replace(SPEC, notes="The recipe."),
                                  checkpoint="selected", note="On an H200.",
                                  overrides=["train.steps=50000", "eval_every=2000"])
  assert (spec.name, spec.checkpoint, spec.protocol) == (f"{SPEC.name}_selected", "selected",
                                                         "selected_checkpoint")
  assert spec.notes == ("The recipe. On an H200. Every cell ran with --set train.steps=50000, "
                        "eval_every=2000.")
  quick = table_script.adjust_spec(SPEC, quick_note="100 steps", overrides=["optim.lr=0.5"])
  assert quick.notes == ("QUICK CHECK: 100 steps; not a reproduction. Every cell ran with --set "
                         "optim.lr=0.5.")
  assert quick.name == SPEC.name
  # The overrides reach the written caption.
  assert "Every cell ran with --set train.steps=50000" in tables.caption(spec, [{"n": 5}], 5)


def test_selected_checkpoint_tables_read_each_runs_chosen_step(tmp_path):
  last, chosen = [0.61, 0.64, 0.58], [0.66, 0.65, 0.70]
  cells = _fake_cells(tmp_path, last)
  for cell, v in zip(cells, chosen):
    path = experiments.cell_dir(tmp_path, cell) / "results.json"
    res = json.loads(path.read_text())
    res["selected"] = {"metric": "source_val/accuracy", "mode": "max", "step": 40, "value": 0.9,
                       "eval": {"target_test": {"accuracy": v}, "source_test": {"accuracy": 0.5}}}
    path.write_text(json.dumps(res))
  spec = tables.TableSpec(**{**vars(SPEC), "checkpoint": "selected",
                             "protocol": "selected_checkpoint"})
  a = next(r for r in tables.collect(tmp_path, cells, spec) if r["row"] == "a")
  np.testing.assert_allclose([a["mean"], a["src"]], [np.mean(chosen), 0.5])
  last_a = next(r for r in tables.collect(tmp_path, cells, SPEC) if r["row"] == "a")
  np.testing.assert_allclose(last_a["mean"], np.mean(last))
  md = tables.to_markdown(spec, tables.collect(tmp_path, cells, spec), 3)
  assert "Selection metric: source_val/accuracy (max)." in md
  assert "oracle (an upper bound)." not in md
  assert "stopped early" not in md
  path = experiments.cell_dir(tmp_path, cells[0]) / "results.json"  # one run stopped early
  path.write_text(json.dumps({**json.loads(path.read_text()),
                              "stopped_early": {"step": 20, "patience": 2, "best_step": 10}}))
  assert (f"1 of {len(cells)} runs stopped early (config.select.patience)"
          in tables.to_markdown(SPEC, tables.collect(tmp_path, cells, SPEC), 3))
  for cell in cells:  # selected on the target test set: the caption calls it an oracle
    path = experiments.cell_dir(tmp_path, cell) / "results.json"
    res = json.loads(path.read_text())
    res["selected"]["metric"] = "target_test/accuracy"
    path.write_text(json.dumps(res))
  md = tables.to_markdown(spec, tables.collect(tmp_path, cells, spec), 3)
  assert ("Selection metric: target_test/accuracy (max), a target-label oracle (an upper bound)."
          in md)
  # A cell run without config.select cannot be reported at a selected step.
  path = experiments.cell_dir(tmp_path, cells[0]) / "results.json"
  path.write_text(json.dumps({**json.loads(path.read_text()), "selected": None}))
  with pytest.raises(ValueError, match="no selected evaluation.*select.metric"):
    tables.collect(tmp_path, cells, spec)


def test_mean_column_averages_the_columns_that_ran(tmp_path):
  spec = tables.TableSpec(**{**vars(SPEC), "columns": ["X→Y", "Y→X"], "mean_column": True,
                             "published": {("a", "X→Y"): 0.5, ("a", "Y→X"): 0.7}})
  cells = _fake_cells(tmp_path, [0.6, 0.8])
  recs = tables.collect(tmp_path, cells, spec)
  mean_a = next(r for r in recs if r["row"] == "a" and r["column"].startswith("mean"))
  assert mean_a["column"] == "mean of 1/2" and mean_a["n"] == 2
  np.testing.assert_allclose([mean_a["mean"], mean_a["published"]], [0.7, 0.5])


def test_formats_carry_the_same_numbers(tmp_path):
  cells = _fake_cells(tmp_path, [0.6, 0.7])
  recs = tables.collect(tmp_path, cells, SPEC)
  md = tables.to_markdown(SPEC, recs, 2)
  assert "| X→Y | a | 65.0 ± 7.1 | 2 | 50.0 | +15.0 | 35.0 |" in md
  assert "| X→Y | b | not run | 0 |" in md
  assert "mean ± std over 0–2 seed(s)" in md and "fixed hyperparameters" in md
  tex = tables.to_latex(SPEC, recs, 2)
  for piece in ("\\toprule", "\\midrule", "\\bottomrule", "65.0 $\\pm$ 7.1", "X$\\to$Y",
                "\\caption{", "\\label{tab:t}"):
    assert piece in tex
  rows = list(csv.DictReader(io.StringIO(tables.to_csv(SPEC, recs))))
  assert abs(float(rows[0]["mean"]) - 0.65) < 1e-12 and rows[0]["n"] == "2" and rows[1]["published"] == ""


def test_runner_never_reruns_a_finished_cell(tmp_path):
  cells = _fake_cells(tmp_path, [0.6])
  before = (experiments.cell_dir(tmp_path, cells[0]) / "results.json").stat().st_mtime_ns
  status = experiments.Runner(tmp_path).run(cells)
  assert status == {cells[0].key: "skipped"}
  d = experiments.cell_dir(tmp_path, cells[0])
  assert (d / "results.json").stat().st_mtime_ns == before and not (d / "log.txt").exists()


def test_quick_digits_table_survives_kill_9_and_fills_its_rows(tmp_path):
  """Kill the runner (and its run) after the first cell, run again: nothing lost, nothing redone."""
  args = [sys.executable, str(REPO / "experiments/digits_table.py"), f"--workdir={tmp_path}",
          "--quick", "--adapt_seeds=0"]  # adaptation rows listed, not run (time)
  env = {**os.environ, "XLA_FLAGS": xla_flags(1)}
  proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, start_new_session=True)
  first = tmp_path / "source_only/mnist_to_usps/seed_0/results.json"
  start = time.time()
  while not first.exists():
    assert proc.poll() is None and time.time() - start < 300
    time.sleep(0.05)
  os.killpg(proc.pid, signal.SIGKILL)
  proc.wait()
  finished_before = first.read_text()
  mtime = first.stat().st_mtime_ns
  out = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert first.stat().st_mtime_ns == mtime and first.read_text() == finished_before
  all_rows = list(csv.DictReader((tmp_path / "tables/digits.csv").open()))
  adapt = {(r["column"], r["row"]): r for r in all_rows if r["n"] == "0"}
  assert len(adapt) == 8 and adapt[("MNIST→USPS", "DANN")]["published"] == "0.917"
  rows = [r for r in all_rows if r["n"] != "0"]
  assert [(r["column"], r["row"]) for r in rows] == [
      ("MNIST→USPS", "source only"), ("MNIST→USPS", "train on target"),
      ("USPS→MNIST", "source only"), ("USPS→MNIST", "train on target")]
  for r in rows:
    assert r["n"] == "1" and 0.0 <= float(r["mean"]) <= 1.0
    assert 0.0 <= float(r["source test acc."]) <= 1.0
  assert [r["published"] for r in rows if r["row"] == "source only"] == ["0.821", "0.746"]
  md = (tmp_path / "tables/digits.md").read_text()
  assert "QUICK CHECK" in md and "| MNIST→USPS | source only |" in md
  for name in ("digits.tex", "digits_bars.png", "digits_bars.pdf", "digits_curves.png"):
    assert (tmp_path / "tables" / name).stat().st_size > 0


def test_quick_amazon_table_has_every_row_and_the_mean(tmp_path):
  env = {**os.environ, "XLA_FLAGS": xla_flags(1)}
  out = subprocess.run([sys.executable, str(REPO / "experiments/amazon_table.py"),
                        f"--workdir={tmp_path}", "--quick"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = list(csv.DictReader((tmp_path / "tables/amazon.csv").open()))
  ran = [r for r in rows if r["n"] == "1"]
  assert {(r["column"], r["row"]) for r in ran} >= {
      ("B→D", "DANN"), ("K→B", "NN (source only)"), ("mean of 4/12", "DANN")}
  for r in ran:
    assert 0.0 <= float(r["mean"]) <= 1.0 and r["published"] != ""


def test_quick_amazon_selection_reports_the_candidate_each_criterion_prefers(tmp_path):
  """The model-selection table (shared with experiments/office_selection.py), checked against the
  choices recomputed here from every forward and reverse run's results.json."""
  env = {**os.environ, "XLA_FLAGS": xla_flags(1)}
  out = subprocess.run([sys.executable, str(REPO / "experiments/amazon_selection.py"),
                        f"--workdir={tmp_path}", "--quick"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=900)
  fatal = out.stderr.find("Fatal Python error")  # a crash: its message and where, not the modules
  assert out.returncode == 0, (out.stderr[max(0, fatal - 3000):fatal + 4000] if fatal >= 0
                               else out.stderr[-3000:])
  forward, reverse = {}, {}
  for path in tmp_path.glob("**/results.json"):
    config = json.loads((path.parent / "config.json").read_text())
    evals = json.loads(path.read_text())["eval"]
    runs = reverse if config["data"]["train"].startswith("npz:") else forward
    runs[config["adapt"]["lambda_max"]] = evals
  assert len(forward) == len(reverse) == 9 and min(forward) == 0.01 and max(forward) == 1.0
  target = {lam: e["target_test"]["accuracy"] for lam, e in forward.items()}
  best = lambda score: min(score, key=lambda lam: (-score[lam], lam))  # ties: first in the grid
  expected = {
      "DANN, lambda_max=0.1 fixed": target[0.1],
      "DANN, source validation": target[best({k: e["source_val"]["accuracy"]
                                                for k, e in forward.items()})],
      "DANN, reverse validation": target[best({k: e["source_val"]["accuracy"]
                                                 for k, e in reverse.items()})],
      "DANN, target oracle (upper bound)": max(target.values()),
  }
  rows = {r["row"]: r for r in csv.DictReader((tmp_path / "tables/amazon_selection.csv").open())
          if r["column"] == "B→D"}
  assert {row: float(r["mean"]) for row, r in rows.items()} == pytest.approx(expected, abs=1e-6)
  assert rows["DANN, reverse validation"]["published"] == "0.784"
  assert rows["DANN, source validation"]["published"] == ""
  assert "Chosen per task" in (tmp_path / "tables/amazon_selection.md").read_text()


def test_a_one_seed_cell_shows_its_value_without_a_spread(tmp_path):
  cells = _fake_cells(tmp_path, [0.6])
  md = tables.to_markdown(SPEC, tables.collect(tmp_path, cells, SPEC), 1)
  assert "| X→Y | a | 60.0 | 1 |" in md and "60.0 ±" not in md


def test_only_keeps_the_cells_of_the_listed_config_args():
  settings = [{"row": r, "column": "c", "config": f"configs/sort_of_clevr.py:{r}"}
              for r in ("cnn_mlp", "early", "cross_attention")]
  cells = experiments.grid(settings, range(2))
  kept = table_script.only_cells(cells, ["early", "cnn_mlp"])
  assert sorted((c.row, c.seed) for c in kept) == [("cnn_mlp", 0), ("cnn_mlp", 1), ("early", 0),
                                                   ("early", 1)]
  assert table_script.only_cells(cells, []) == cells
  with pytest.raises(SystemExit, match="unknown config args"):
    table_script.only_cells(cells, ["erly"])


def test_set_flags_become_every_cells_overrides_and_reach_its_config():
  pairs = table_script.set_overrides(["data.order=numpy", "optim.lr=0.5", "evals.x.split=a=b"])
  assert pairs == (("data.order", "numpy"), ("optim.lr", "0.5"), ("evals.x.split", "a=b"))
  for bad in ("data.order", "=numpy"):
    with pytest.raises(SystemExit, match="KEY=VALUE"):
      table_script.set_overrides([bad])
  cells = experiments.grid([{"row": "r", "column": "c", "config": "configs/digits.py:mnist_usps"}],
                           [0, 1], pairs[:2])
  config = experiments.cell_config(cells[1])
  assert (config.data.order, config.optim.lr, config.seed) == ("numpy", 0.5, 1)
