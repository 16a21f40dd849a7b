"""The engine end to end on real digits: devices, pmap, resume, preemption, corruption, NaN, transfer.

Runs here use 4 fake CPU devices (conftest); runs that need another device or process count, or a
real kill, go through launch.py in subprocesses.
"""
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from mmjax import config as config_lib
from mmjax import data
from mmjax import train
from mmjax.train import checkpoint, transfer
from conftest import env_without_tensorflow, tensorboard_scalars, xla_flags

REPO = pathlib.Path(__file__).resolve().parents[1]
SPEC = "configs/digits.py:usps_mnist"
SMALL = {"train.steps": "30", "train.log_every": "5", "checkpoint.every": "10",
         "data.global_batch": "32", "eval_batch": "1024"}


def small_config(spec=SPEC, **overrides):
  cfg = config_lib.load(str(REPO / spec))
  for key, value in {**SMALL, **overrides}.items():
    config_lib.override(cfg, key, str(value))
  return cfg


def launch(workdir, *, devices=4, extra=(), overrides=None, spec=SPEC, wait=True, env=None):
  args = [sys.executable, str(REPO / "launch.py"), f"--config={spec}", f"--workdir={workdir}"]
  args += [f"--config.{k}={v}" for k, v in {**SMALL, **(overrides or {})}.items()] + list(extra)
  full_env = {**os.environ, "XLA_FLAGS": xla_flags(devices),
              **(env or {})}
  proc = subprocess.Popen(args, cwd=REPO, env=full_env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  if not wait:
    return proc
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, out[-3000:]
  return out


def curve(workdir):
  rows = [json.loads(r) for r in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def results(workdir):
  return json.loads((pathlib.Path(workdir) / "results.json").read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """One uninterrupted in-process run on 4 devices that several tests compare against."""
  workdir = tmp_path_factory.mktemp("reference")
  train.train_and_evaluate(small_config(), workdir)
  return workdir


def test_run_writes_config_metrics_results_and_tensorboard(reference):
  res = results(reference)
  assert res["step"] == 30 and res["devices"] == 4
  assert set(res["eval"]) == {"source_test", "target_test"}
  assert res["eval"]["source_test"]["n"] == 2007 and res["eval"]["target_test"]["n"] == 10000
  # 30 steps of SGD on USPS must beat chance clearly on its own test set.
  assert res["eval"]["source_test"]["accuracy"] > 0.5
  assert json.loads((reference / "config.json").read_text())["train"]["steps"] == 30
  assert sorted(curve(reference)) == [5, 10, 15, 20, 25, 30]
  # TensorBoard's own reader finds every scalar of metrics.jsonl in the events (float32 there).
  rows = [json.loads(r) for r in (reference / "metrics.jsonl").read_text().splitlines()]
  logged = {(r["step"], k): v for r in rows for k, v in r.items() if k != "step"}
  read = {(step, tag): value for tag, pairs in tensorboard_scalars(reference).items()
          for step, value in pairs}
  assert len(list(reference.glob("events.out.tfevents.*"))) == 1
  assert set(logged) == set(read) and len(logged) >= 12
  for key, value in logged.items():
    np.testing.assert_allclose(read[key], value, rtol=1e-6, err_msg=str(key))
  assert sorted(int(p.name) for p in (reference / "checkpoints").iterdir()) == [10, 20, 30]


def test_evaluations_share_one_compiled_step_and_the_kept_batches_equal_streamed_ones(
    tmp_path, monkeypatch):
  """A run evaluating every 10 steps traces its eval step once (it used to compile one per
  evaluation), and the eval batches kept on the devices give what batches cut afresh each time
  give."""
  from mmjax.methods import supervised
  from mmjax.train import trainer
  traces = []
  make_eval = supervised.make_eval

  def counting(config):
    fn = make_eval(config)
    return lambda *args: traces.append(1) or fn(*args)

  monkeypatch.setattr(supervised, "make_eval", counting)
  kept = train.train_and_evaluate(small_config(eval_every="10"), tmp_path / "kept")
  assert len(traces) == 1
  evals = lambda d: [r for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())
                     if "target_test/accuracy" in r]
  assert [r["step"] for r in evals(tmp_path / "kept")] == [10, 20, 30]
  monkeypatch.setattr(trainer, "EVAL_CACHE_BYTES", 0)  # every eval set streamed each time
  streamed = train.train_and_evaluate(small_config(eval_every="10"), tmp_path / "streamed")
  assert streamed["eval"] == kept["eval"]
  assert evals(tmp_path / "streamed") == evals(tmp_path / "kept")


def test_one_device_gives_the_same_loss_curve_as_four(reference, tmp_path):
  launch(tmp_path / "one", devices=1)
  one, four = curve(tmp_path / "one"), curve(reference)
  assert results(tmp_path / "one")["devices"] == 1
  assert one.keys() == four.keys()
  np.testing.assert_allclose([one[s] for s in sorted(one)], [four[s] for s in sorted(four)],
                             rtol=2e-5)


def _assert_selected_is_the_logged_best(workdir, metric="source_test/accuracy"):
  """config.select's choice is the best logged evaluation, and best/ holds that step's weights."""
  rows = [json.loads(r) for r in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]
  logged = {r["step"]: r[metric] for r in rows if metric in r}
  best = max(logged, key=lambda s: (logged[s], -s))
  chosen = results(workdir)["selected"]
  assert (chosen["step"], chosen["value"]) == (best, logged[best])
  assert checkpoint.read_variables(str(pathlib.Path(workdir) / "best"))[2] == best
  return logged


SELECT = {"eval_every": "10", "select.metric": "source_test/accuracy"}


def test_pmap_gives_the_same_numbers_as_jit(reference, tmp_path):
  train.train_and_evaluate(small_config(parallel="pmap", **SELECT), tmp_path)
  assert sorted(_assert_selected_is_the_logged_best(tmp_path)) == [10, 20, 30]
  pm, jt = curve(tmp_path), curve(reference)
  np.testing.assert_allclose([pm[s] for s in sorted(pm)], [jt[s] for s in sorted(jt)], rtol=2e-5)
  a, b = results(tmp_path)["eval"], results(reference)["eval"]
  for name in a:
    assert abs(a[name]["accuracy"] - b[name]["accuracy"]) <= 2 / b[name]["n"]


def test_finished_run_is_not_redone(reference):
  before = (reference / "results.json").read_text()
  again = train.train_and_evaluate(small_config(), reference)
  assert again == json.loads(before)
  assert (reference / "results.json").read_text() == before


def test_run_killed_between_its_last_checkpoint_and_results_logs_each_row_once(reference, tmp_path):
  """Its restart evaluates again at the last step: metrics.jsonl and TensorBoard keep one copy of
  each row, and equal the uninterrupted run's."""
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  (workdir / "results.json").unlink()
  again = train.train_and_evaluate(small_config(), workdir)
  assert again["eval"] == results(reference)["eval"]
  rows = lambda d: (d / "metrics.jsonl").read_text().splitlines()
  assert rows(workdir) == rows(reference)
  assert len(list(workdir.glob("events.out.tfevents.*"))) == 2
  assert tensorboard_scalars(workdir) == tensorboard_scalars(reference)


def _wait_for(predicate, proc, timeout=240):
  start = time.time()
  while not predicate():
    if proc.poll() is not None:
      raise AssertionError(f"run ended before the event: {proc.stdout.read()[-3000:]}")
    if time.time() - start > timeout:
      proc.kill()
      raise AssertionError("timed out")
    time.sleep(0.02)


def test_kill_9_and_restart_gives_exactly_the_uninterrupted_results(tmp_path):
  long = {"train.steps": "200", "checkpoint.every": "50", "train.log_every": "25"}
  # The killed run's two processes cannot import TensorFlow: they read the split cache (made here
  # if it is missing) and still write TensorBoard events.
  for name, split in (("usps", "train"), ("usps", "test"), ("mnist", "test")):
    data.load_split(name, split)
  no_tf = env_without_tensorflow(MMJAX_ARRAYS_DIR="")
  launch(tmp_path / "straight", devices=2, overrides=long)
  proc = launch(tmp_path / "killed", devices=2, overrides=long, wait=False, env=no_tf)
  # Killed once step 75 is logged after checkpoint 50: the restart logs it again.
  _wait_for(lambda: (tmp_path / "killed/checkpoints/50").is_dir() and
            75 in curve(tmp_path / "killed"), proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (tmp_path / "killed/results.json").exists(), "the run finished before the kill"
  out = launch(tmp_path / "killed", devices=2, overrides=long, env=no_tf)
  assert "resumed from" in out and "from the split cache" in out
  straight, resumed = results(tmp_path / "straight"), results(tmp_path / "killed")
  assert resumed["eval"] == straight["eval"]
  assert resumed["final_train"] == straight["final_train"]
  assert curve(tmp_path / "killed") == curve(tmp_path / "straight")
  # Two event files; the second restarts at the checkpoint, so TensorBoard shows each step once.
  assert len(list((tmp_path / "killed").glob("events.out.tfevents.*"))) == 2
  assert tensorboard_scalars(tmp_path / "killed") == tensorboard_scalars(tmp_path / "straight")


def test_sigterm_saves_and_exits_zero(tmp_path):
  proc = launch(tmp_path, devices=1, wait=False,
                overrides={"train.steps": "100000", "checkpoint.every": "100000"})
  _wait_for(lambda: (tmp_path / "metrics.jsonl").exists(), proc)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out[-3000:]
  saved = [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
  assert len(saved) == 1 and 0 < saved[0] < 100000
  assert "preempted: saved step" in out
  assert not (tmp_path / "results.json").exists()


def _damage(step_dir: pathlib.Path):
  """Truncates every data file of a checkpoint, as a crash or a full disk would."""
  for f in step_dir.rglob("*"):
    if f.is_file():
      f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 3])


def test_corrupt_latest_checkpoint_falls_back_to_previous(reference, tmp_path, caplog):
  workdir = tmp_path / "run"
  train.train_and_evaluate(small_config(**{"train.steps": "20"}), workdir)
  _damage(workdir / "checkpoints/20")
  (workdir / "results.json").unlink()
  caplog.set_level("WARNING")
  res = train.train_and_evaluate(small_config(), workdir)
  assert any("checkpoints/20" in r.getMessage() and "corrupt" in r.getMessage()
             for r in caplog.records)
  assert (workdir / "checkpoints_corrupt/20").is_dir()
  # Resumed from step 10 and retrained 11..30: the same numbers as the uninterrupted run.
  assert res["eval"] == results(reference)["eval"]


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  train.train_and_evaluate(small_config(**{"train.steps": "10"}), tmp_path)
  bad = small_config(**{"train.steps": "30", "optim.lr": "nan", "resume_check": "warn"})
  with pytest.raises(train.NonFiniteLossError, match=r"non-finite loss at step 12\b.*checkpoints/10"):
    train.train_and_evaluate(bad, tmp_path)
  assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [10]
  params, step = checkpoint.read_params(str(tmp_path))
  assert step == 10 and all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_init_from_and_freeze_fine_tune_usps_from_mnist(tmp_path):
  mnist = tmp_path / "mnist"
  train.train_and_evaluate(small_config("configs/digits.py:mnist_usps", **{"train.steps": "10"}),
                           mnist)
  tuned = tmp_path / "usps"
  cfg = small_config("configs/digits.py:mnist_usps_oracle", **{
      "train.steps": "10", "init_from.workdir": str(mnist), "freeze": "^(conv|fc)"})
  assert cfg.data.train == "usps"
  train.train_and_evaluate(cfg, tuned)
  source, _ = checkpoint.read_params(str(mnist))
  after, _ = checkpoint.read_params(str(tuned))
  from mmjax.train.optim import param_paths
  source, after = param_paths(source), param_paths(after)
  for path in source:
    unchanged = np.array_equal(source[path], after[path])
    assert unchanged == (not path.startswith("head")), path


def test_init_from_mismatch_lists_names_and_shapes(tmp_path):
  mnist = tmp_path / "mnist"
  train.train_and_evaluate(small_config("configs/digits.py:mnist_usps", **{"train.steps": "5"}),
                           mnist)
  cfg = small_config(**{"model.num_classes": "5", "init_from.workdir": str(mnist)})
  with pytest.raises(transfer.TransferError, match=r"(?s)head/bias: checkpoint shape \(10,\) != "
                     r"model shape \(5,\).*head/kernel"):
    train.train_and_evaluate(cfg, tmp_path / "bad")


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_one_process(reference, tmp_path):
  """2 processes x 2 devices over 127.0.0.1 (gloo) == 1 process x 4 devices, then resume in 1."""
  port = _free_port()
  procs = [launch(tmp_path, devices=2, wait=False, overrides=SELECT,
                  extra=[f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                         f"--process_id={i}"]) for i in range(2)]
  for p in procs:
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out[-3000:]
  two, one = curve(tmp_path), curve(reference)
  assert results(tmp_path)["processes"] == 2
  np.testing.assert_allclose([two[s] for s in sorted(two)], [one[s] for s in sorted(one)],
                             rtol=2e-5)
  # config.select across 2 processes: the choice and its weights (saved by both processes).
  assert sorted(_assert_selected_is_the_logged_best(tmp_path)) == [10, 20, 30]
  # A checkpoint written by 2 processes restores in 1 process (with another device count).
  out = launch(tmp_path, devices=1, overrides={**SELECT, "train.steps": "35"})
  assert "resumed from" in out and results(tmp_path)["step"] == 35
  assert sorted(_assert_selected_is_the_logged_best(tmp_path)) == [10, 20, 30, 35]


def _launch_processes(workdir, count, overrides=None):
  port = _free_port()
  procs = [launch(workdir, devices=1, wait=False, overrides=overrides,
                  extra=[f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={count}",
                         f"--process_id={i}"]) for i in range(count)]
  outs = []
  for p in procs:
    out, _ = p.communicate(timeout=400)
    assert p.returncode == 0, out[-3000:]
    outs.append(out)
  return outs


def test_four_processes_match_one_and_checkpoints_move_between_process_counts(reference, tmp_path):
  """4 processes x 1 device == 1 process x 4 devices; checkpoints restore across 4 <-> 1 processes."""
  four = tmp_path / "four"
  _launch_processes(four, 4)
  assert results(four)["processes"] == 4
  np.testing.assert_allclose([curve(four)[s] for s in sorted(curve(four))],
                             [curve(reference)[s] for s in sorted(curve(reference))], rtol=2e-5)
  # Written by 4 processes, continued in 1; written by 1 (the reference), continued in 4.
  longer = {"train.steps": "35"}
  out = launch(four, devices=1, overrides=longer)
  assert "resumed from" in out and results(four)["step"] == 35
  one = tmp_path / "one"
  shutil.copytree(reference, one)
  outs = _launch_processes(one, 4, overrides=longer)
  assert "resumed from" in outs[0] and results(one)["processes"] == 4
  assert curve(one)[35] == pytest.approx(curve(four)[35], rel=2e-5)
  assert (results(one)["eval"]["target_test"]["accuracy"]
          == pytest.approx(results(four)["eval"]["target_test"]["accuracy"], abs=1e-6))
