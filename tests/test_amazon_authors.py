"""experiments/amazon_authors.py: the DANN authors' shallow algorithm, checked against their code's
hand-written updates (a numpy transcription of DANN.py's fit loop), their early-stopping rule on hand
examples, and a quick run on the real Amazon files."""
import csv
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import xla_flags

REPO = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("amazon_authors", REPO / "experiments/amazon_authors.py")
authors = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(authors)


def _authors_deltas_fit(p, xs, ys, xt, target_index, lam, lr):
  """DANN.py's inner loop as the authors wrote it: hand-derived deltas, one example at a time."""
  W, V, b, c, w, d = (p[k].copy() for k in ("W", "V", "b", "c", "w", "d"))
  sig = lambda z: 1.0 / (1.0 + np.exp(-z))
  for i in range(len(xs)):
    x, y = xs[i], ys[i]
    h = sig(W @ x + b)
    z = V @ h + c
    o = np.exp(z) / np.exp(z).sum()
    y_hot = np.zeros(2)
    y_hot[y] = 1.0
    delta_c = o - y_hot
    delta_V = np.outer(delta_c, h)
    delta_b = (V.T @ delta_c) * h * (1 - h)
    delta_W = np.outer(delta_b, x)
    delta_w, delta_d = 0.0, 0.0
    if lam:
      g = sig(w @ h + d)
      delta_d = lam * (1 - g)
      delta_w = delta_d * h
      tmp = delta_d * w * h * (1 - h)
      delta_b = delta_b + tmp
      delta_W = delta_W + np.outer(tmp, x)
      x2 = xt[target_index[i]]
      h2 = sig(W @ x2 + b)
      g2 = sig(w @ h2 + d)
      delta_d = delta_d - lam * g2
      delta_w = delta_w - lam * g2 * h2
      tmp = -lam * g2 * w * h2 * (1 - h2)
      delta_b = delta_b + tmp
      delta_W = delta_W + np.outer(tmp, x2)
    W, b, V, c = W - lr * delta_W, b - lr * delta_b, V - lr * delta_V, c - lr * delta_c
    w, d = w + lr * delta_w, d + lr * delta_d
  return {"W": W, "V": V, "b": b, "c": c, "w": w, "d": d}


@pytest.mark.parametrize("lam", [0.0, 0.7])
def test_autodiff_step_equals_the_authors_hand_written_updates(lam):
  rng = np.random.RandomState(3)
  xs = rng.poisson(0.8, size=(25, 40)).astype(np.float64)
  xt = rng.poisson(0.8, size=(30, 40)).astype(np.float64)
  ys = rng.randint(2, size=25)
  target_index = rng.randint(30, size=25)
  p = authors.init_params(np.random.RandomState(0), 40, hidden=6)
  p["w"] = rng.normal(size=6)  # a nonzero domain regressor, so every term of the update shows
  with jax.enable_x64(True):
    step = authors.make_step(lam, lr=0.05)
    got, _ = jax.lax.scan(step, jax.tree.map(jax.numpy.asarray, p),
                          (xs, ys, xt[target_index]))
    got = jax.device_get(got)
  want = _authors_deltas_fit(p, xs, ys, xt, target_index, lam, lr=0.05)
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-11, atol=1e-13, err_msg=k)
    if k in ("w", "d"):
      assert (np.abs(got[k] - p[k]).max() > 1e-4) == bool(lam), k  # only DANN moves the regressor
  assert np.abs(got["W"] - p["W"]).max() > 1e-3


def test_fit_equals_the_authors_loop_with_their_draws_and_early_stopping():
  """train() against DANN.py's fit written out in numpy: their init, one target draw per example
  from the same generator, their stopping rule inline, and the best epoch's weights."""
  rng = np.random.RandomState(10)  # a problem whose best epoch (23) extends the horizon past 30
  n, features = 40, 30
  direction = rng.normal(size=features)
  x = rng.poisson(1.0, size=(n + 10, features)).astype(np.float64)
  y = ((x - 1.0) @ direction + rng.normal(scale=3.0, size=n + 10) > 0).astype(int)
  xs, ys, xv, yv = x[:n], y[:n], x[n:], y[n:]
  xt = rng.poisson(1.3, size=(35, features)).astype(np.float64)
  lam, lr, seed, max_epochs = 0.3, 0.1, 7, 60
  best, best_epoch, last_epoch, best_error = authors.train(xs, ys, xt, xv, yv, lam=lam, lr=lr,
                                                           seed=seed, max_epochs=max_epochs)
  # DANN.py's fit, numpy only.
  g = np.random.RandomState(seed)
  bound = lambda i, o: np.sqrt(6.0 / (i + o))
  p = {"W": bound(features, 50) * (2 * g.rand(50, features) - 1),
       "V": bound(50, 2) * (2 * g.rand(2, 50) - 1), "b": np.zeros(50), "c": np.zeros(2),
       "w": np.zeros(50), "d": np.zeros(())}
  best_risk, until, want = 2.0, 30, None
  for t in range(max_epochs):
    draws = np.array([g.randint(len(xt)) for _ in range(n)])
    p = _authors_deltas_fit(p, xs, ys, xt, draws, lam, lr)
    risk = np.mean(authors.predict(p, xv) != yv)
    if risk <= best_risk:
      best_risk, want, want_epoch = risk, {k: v.copy() for k, v in p.items()}, t
      until = max(until, int(1.5 * t))
    elif t > until:
      break
  assert (best_epoch, last_epoch, best_error) == (want_epoch, t, best_risk)
  assert (best_epoch, last_epoch) == (23, 35)  # stopped at the first epoch past int(1.5 * 23)
  for k in ("W", "V", "b", "c"):
    np.testing.assert_allclose(best[k], want[k], rtol=1e-9, atol=1e-12, err_msg=k)


def test_init_follows_the_authors_bounds():
  p = authors.init_params(np.random.RandomState(1), 5000)
  assert p["W"].shape == (50, 5000) and p["V"].shape == (2, 50)
  bound = np.sqrt(6 / 5050)
  assert bound * 0.99 < np.abs(p["W"]).max() <= bound
  assert not p["w"].any() and not p["b"].any() and p["d"] == 0


def test_early_stopping_is_the_authors_rule():
  # A best at epoch 40 extends training to epoch 60: the first non-best epoch after it stops.
  errors = [0.5] + [0.4] * 39 + [0.3] + [0.35] * 30
  assert authors.early_stopping(errors) == (40, 61)
  # Ties count as new bests (<=): the last of equal errors is kept, and moves the horizon.
  assert authors.early_stopping([0.3, 0.3, 0.3] + [0.4] * 40) == (2, 31)
  assert authors.early_stopping([0.3] * 22 + [0.4] * 20) == (21, 32)
  # Nothing better after the start: at least 30 epochs, stop at the 31st.
  assert authors.early_stopping([0.2] + [0.25] * 50) == (0, 31)
  # Fewer epochs than the horizon: the last epoch is the last trained.
  assert authors.early_stopping([0.3, 0.2, 0.25]) == (1, 2)


def test_published_numbers_are_the_amazon_tables():
  spec = importlib.util.spec_from_file_location("amazon_table", REPO / "experiments/amazon_table.py")
  amazon_table = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(amazon_table)
  assert authors.PUBLISHED == amazon_table.PUBLISHED


def test_pairs_parse_both_spellings():
  assert authors.parse_pair("dvd_books") == authors.parse_pair("D->B") == "D→B"
  with pytest.raises(ValueError, match="unknown pair"):
    authors.parse_pair("D→D")


def test_table_folder_names_pairs_and_seeds_unless_the_full_table():
  assert authors.table_dir(list(authors.PUBLISHED), range(5)) == "table"
  assert authors.table_dir(list(reversed(authors.PUBLISHED)), [0, 1, 2, 3, 4]) == "table"
  assert authors.table_dir(["D→B", "K→E"], [0]) == "table_DB_KE_seeds0"
  assert authors.table_dir(list(authors.PUBLISHED), [12342]) == "table_seeds12342"
  assert authors.table_dir(["D→B"], range(5)) == "table_DB"


def test_quick_run_on_the_amazon_files_writes_the_table_and_resumes(tmp_path):
  env = {**os.environ, "XLA_FLAGS": xla_flags(1)}
  args = [sys.executable, str(REPO / "experiments/amazon_authors.py"), f"--workdir={tmp_path}",
          "--quick", "--pairs=D→B,K→E"]
  out = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = {(r["column"], r["row"]): r for r in csv.DictReader(
      (tmp_path / "lam0.1_lr0.001_ep3/table_DB_KE_seeds0/amazon_authors.csv").open())}
  for key in [("D→B", "DANN"), ("K→E", "NN (source only)")]:
    assert rows[key]["n"] == "1" and 0.5 < float(rows[key]["mean"]) <= 1.0
  assert float(rows[("D→B", "DANN")]["published"]) == pytest.approx(0.723)
  runs = sorted(tmp_path.glob("lam*/*/*/seed_0.json"))
  assert len(runs) == 4
  record = json.loads(runs[0].read_text())
  assert record["epochs_trained"] == 3 and 0 <= record["best_epoch"] <= 2
  # Run again: the finished runs are read back, not retrained, and give the same table.
  table = tmp_path / "lam0.1_lr0.001_ep3/table_DB_KE_seeds0/amazon_authors.csv"
  before = table.read_text()
  stamps = [p.stat().st_mtime_ns for p in runs]
  out = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert [p.stat().st_mtime_ns for p in runs] == stamps
  assert table.read_text() == before


def test_quick_reverse_validation_keeps_the_lambda_with_the_best_reverse_score(tmp_path):
  env = {**os.environ, "XLA_FLAGS": xla_flags(1)}
  out = subprocess.run([sys.executable, str(REPO / "experiments/amazon_authors.py"),
                        f"--workdir={tmp_path}", "--quick", "--pairs=D→B",
                        "--reverse_lams=0.1,1"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  runs = {lam: json.loads((tmp_path / f"lam{lam}_lr0.001_ep3/dann/dvd_books/seed_0.json").read_text())
          for lam in ("0.1", "1")}
  for r in runs.values():
    assert 0.0 <= r["reverse_valid_accuracy"] <= 1.0
  # Recomputed here from the runs' records: the grid's first lambda wins ties.
  chosen = max(runs, key=lambda lam: (runs[lam]["reverse_valid_accuracy"], lam == "0.1"))
  oracle = max(runs, key=lambda lam: (runs[lam]["target_test_accuracy"], lam == "0.1"))
  rows = {r["row"]: r for r in csv.DictReader(
      (tmp_path / "reverse_0.1_1_lr0.001_ep3/table_DB_seeds0/amazon_authors_selection.csv").open())}
  assert float(rows["DANN, reverse validation"]["mean"]) == pytest.approx(
      runs[chosen]["target_test_accuracy"])
  assert float(rows["DANN, target oracle (upper bound)"]["mean"]) == pytest.approx(
      runs[oracle]["target_test_accuracy"])
  md = (tmp_path / "reverse_0.1_1_lr0.001_ep3/table_DB_seeds0/amazon_authors_selection.md").read_text()
  assert f"D→B: reverse validation {chosen}, oracle {oracle}" in md
