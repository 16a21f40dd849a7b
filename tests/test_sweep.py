"""Sweep mode: runs trained together as one vmapped program equal the same runs trained alone."""
import dataclasses
import json

import jax
import numpy as np
import pytest

from conftest import REPO, tensorboard_scalars
from mmjax import config as config_lib
from mmjax import experiments
from mmjax.data import pipeline, sinusoid
from mmjax.train import checkpoint, meta_trainer, sweep, trainer


def _amazon(arg, pair, seed, **overrides):
  fields = {"seed": str(seed), "train.steps": "30", "train.log_every": "10",
            "checkpoint.every": "10", "eval_batch": "1024", **overrides}
  return config_lib.load_with_overrides(str(REPO / f"configs/amazon.py:{arg}/{pair}"), fields)


def _assert_same_run(swept, alone, swept_dir, alone_dir):
  """Same eval numbers, logged train losses and final params, up to float rounding."""
  for name, metrics in alone["eval"].items():
    for key, value in metrics.items():
      np.testing.assert_allclose(swept["eval"][name][key], value, rtol=1e-5, atol=1e-6,
                                 err_msg=f"{name}/{key}")
  rows = [[json.loads(r) for r in (d / "metrics.jsonl").read_text().splitlines()]
          for d in (swept_dir, alone_dir)]
  losses = [[r["train/loss"] for r in rs if "train/loss" in r] for rs in rows]
  assert len(losses[0]) == len(losses[1]) == 3
  np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
  params = [checkpoint.read_params(str(d))[0] for d in (swept_dir, alone_dir)]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), *params)
  # The same TensorBoard scalars at the same steps, and steps/s (where a restart resets its clock).
  tagged = [{(tag, step) for tag, pairs in tensorboard_scalars(d, skip=()).items()
             for step, _ in pairs} for d in (swept_dir, alone_dir)]
  metrics = [{(tag, step) for tag, step in t if tag != "steps_per_sec"} for t in tagged]
  assert metrics[0] == metrics[1] and any(tag == "steps_per_sec" for tag, _ in tagged[0])


@pytest.mark.parametrize("method,axis", [("nn", "unroll"), ("dann", "map")])
def test_sweep_runs_equal_solo_runs(tmp_path, method, axis):
  """Runs with different seeds, domain pairs and float hyperparameters (lr, lambda) in one sweep
  give what each gives alone (supervised and DANN; unrolled and lax.map over runs; vmap: MAML)."""
  cells = [("books_dvd", 0, {"optim.lr": "0.05", "adapt.lambda_max": "0.1"}),
           ("kitchen_electronics", 3, {"optim.lr": "0.1", "adapt.lambda_max": "0.3"})]
  configs = [_amazon(method, pair, seed, **{"train.sweep_axis": axis, **o})
             for pair, seed, o in cells]
  runs = [sweep.Run(c, tmp_path / f"swept{i}") for i, c in enumerate(configs)]
  swept = sweep.train_runs(runs)
  assert [r["sweep"] for r in swept] == [{"runs": 2, "index": i, "axis": axis} for i in range(2)]
  for i, config in enumerate(configs):
    alone = trainer.train_and_evaluate(config, tmp_path / f"alone{i}")
    _assert_same_run(swept[i], alone, tmp_path / f"swept{i}", tmp_path / f"alone{i}")
  # The two runs really differ (different data, seed, lr): a sweep that mixed them up would fail.
  assert swept[0]["eval"]["target_test"]["n"] != swept[1]["eval"]["target_test"]["n"]


@pytest.mark.parametrize("axis", sweep.AXES)
def test_runs_evaluated_together_equal_each_run_evaluated_alone(tmp_path, monkeypatch, axis):
  """The sweep's evaluation maps one batch over the runs that read the same eval sets; each run's
  numbers equal its own pass, whatever the grouping, the split into calls and the rows' order."""
  cells = [("books_dvd", 0, "0.05"), ("kitchen_electronics", 1, "0.1"), ("books_dvd", 2, "0.2"),
           ("books_dvd", 3, "0.01"), ("kitchen_electronics", 4, "0.3")]
  runs = [sweep.Run(_amazon("dann", pair, seed, **{"adapt.lambda_max": lam,
                                                   "train.sweep_axis": axis}), tmp_path / str(i))
          for i, (pair, seed, lam) in enumerate(cells)]
  hparams = config_lib.varying_floats([r.config for r in runs])
  kind = sweep._Standard(runs, {k: jax.numpy.asarray(v, np.float32) for k, v in hparams.items()})
  # DANN's evaluation reads no float hyperparameter; this one scales its loss by lambda_max, so a
  # run evaluated with another run's hyperparameters fails below.
  make_eval = kind.method.make_eval

  def scaled(config):
    fn = make_eval(config)
    return lambda *args: {**(out := fn(*args)), "loss": out["loss"] * config.adapt.lambda_max}

  monkeypatch.setattr(kind.method, "make_eval", scaled)
  tree = kind.init(np.array([seed for _, seed, _ in cells], np.int32))
  alone = [kind.evaluate(i, sweep._row(tree, i)) for i in range(len(runs))]
  # 3 runs read books_dvd's eval sets: two calls of them (1 + 2 runs) with 2 batches' worth of
  # rows; unrolled runs go one a call.
  monkeypatch.setattr(sweep, "EVAL_RUNS_ROWS", 2 * kind.eval_batch)
  calls = []
  monkeypatch.setattr(kind, "_evaluate_together",
                      lambda members, t, f=kind._evaluate_together: calls.append(len(members))
                      or f(members, t))
  order = [4, 0, 2, 1, 3]
  together = kind.evaluate_runs(order, tree, order)
  assert sorted(calls) == ([1] * 5 if axis == "unroll" else [1, 2, 2])
  subset = [1, 2, 4]  # a group's rows in a tree of those runs only, as after a restore
  together_subset = kind.evaluate_runs(subset, sweep._stack([sweep._row(tree, i) for i in subset]),
                                       [0, 1, 2])
  for i, got in [*zip(order, together), *zip(subset, together_subset)]:
    assert got.keys() == alone[i].keys()
    for name, metrics in alone[i].items():
      assert got[name]["n"] == metrics["n"]
      np.testing.assert_allclose([got[name]["accuracy"], got[name]["loss"]],
                                 [metrics["accuracy"], metrics["loss"]], rtol=1e-5,
                                 err_msg=f"run {i} {name}")
  # Every run's numbers differ (seeds, pairs): a mix-up of runs or rows would fail above.
  assert len({round(a["target_test"]["loss"], 6) for a in alone}) == len(runs)


def test_maml_sweep_equals_solo_runs(tmp_path):
  """Second-order MAML on sinusoids: seeds and inner rates differ per run."""
  configs = [config_lib.load_with_overrides(str(REPO / "configs/sinusoid.py:maml_cpu"), {
      "seed": str(seed), "meta.inner_lr": lr, "train.steps": "30", "train.log_every": "10",
      "checkpoint.every": "10", "meta.test_tasks": "20", "meta.meta_batch": "8"})
             for seed, lr in ((0, "0.01"), (1, "0.03"))]
  swept = sweep.train_runs([sweep.Run(c, tmp_path / f"swept{i}") for i, c in enumerate(configs)])
  for i, config in enumerate(configs):
    alone = meta_trainer.train_and_evaluate(config, tmp_path / f"alone{i}")
    _assert_same_run(swept[i], alone, tmp_path / f"swept{i}", tmp_path / f"alone{i}")


class _PreemptAfter(trainer.Preemption):
  """SIGTERM as the sweep sees it, arriving after the first chunk of steps."""
  checks = 0

  @property
  def requested(self):
    _PreemptAfter.checks += 1
    return _PreemptAfter.checks >= 1

  @requested.setter
  def requested(self, value):
    del value


def test_preempted_sweep_resumes_and_loses_nothing(tmp_path, monkeypatch):
  """Stop after step 10 of 30, drop one run's checkpoint (as if it died earlier), run again: each
  run resumes from its own checkpoint and ends where it would have alone."""
  configs = [_amazon("nn", pair, seed) for pair, seed in (("books_dvd", 0), ("dvd_books", 1))]
  runs = [sweep.Run(c, tmp_path / f"swept{i}") for i, c in enumerate(configs)]
  monkeypatch.setattr(trainer, "Preemption", _PreemptAfter)
  first = sweep.train_runs(runs)
  assert all(r == {"preempted": True, "step": 10} for r in first)
  assert not (tmp_path / "swept0/results.json").exists()
  assert checkpoint.Checkpointer(tmp_path / "swept0", 3).latest_step() == 10
  import shutil
  shutil.rmtree(tmp_path / "swept1/checkpoints")
  # Runs restored at different steps train group by group; a SIGTERM in the first group (run 1,
  # from step 0) leaves the next one (run 0, from step 10) untrained for the restart.
  assert sweep.train_runs(runs) == [{"preempted": True, "step": 10}] * 2
  assert checkpoint.Checkpointer(tmp_path / "swept0", 3).latest_step() == 10
  monkeypatch.undo()
  shutil.rmtree(tmp_path / "swept1/checkpoints")
  resumed = sweep.train_runs(runs)
  for i, config in enumerate(configs):
    alone = trainer.train_and_evaluate(config, tmp_path / f"alone{i}")
    _assert_same_run(resumed[i], alone, tmp_path / f"swept{i}", tmp_path / f"alone{i}")
  assert sweep.train_runs(runs)[0]["wall_time_s"] == resumed[0]["wall_time_s"]  # finished: kept


class _PreemptAtCheckpoint(trainer.Preemption):
  """SIGTERM agreed on at step 10, which is also a checkpoint step (checkpoint.every=10)."""

  def agreed(self, step, every):
    return step == 10


@pytest.mark.parametrize("kind", ["trainer", "meta_trainer"])
def test_sigterm_on_a_checkpoint_step_saves_it_once_and_resumes(tmp_path, monkeypatch, kind):
  """A SIGTERM seen at a step that was just checkpointed saved that step a second time, which orbax
  refuses (StepAlreadyExistsError): the run crashed instead of exiting cleanly. Now it saves once."""
  if kind == "trainer":
    config, module = _amazon("nn", "books_dvd", 0), trainer
  else:
    config = config_lib.load_with_overrides(str(REPO / "configs/sinusoid.py:maml_cpu"), {
        "train.steps": "30", "train.log_every": "10", "checkpoint.every": "10",
        "meta.test_tasks": "20", "meta.meta_batch": "8"})
    module = meta_trainer
  monkeypatch.setattr(trainer, "Preemption", _PreemptAtCheckpoint)
  assert module.train_and_evaluate(config, tmp_path / "stopped") == {"preempted": True, "step": 10}
  assert checkpoint.Checkpointer(tmp_path / "stopped", 3).manager.all_steps() == [10]
  monkeypatch.undo()
  resumed = module.train_and_evaluate(config, tmp_path / "stopped")
  straight = module.train_and_evaluate(config, tmp_path / "straight")
  assert resumed["eval"] == straight["eval"]


def test_sweep_key_and_bad_sweeps(tmp_path):
  base = _amazon("dann", "books_dvd", 0)
  same = [_amazon("dann", "kitchen_dvd", 4, **{"optim.lr": "0.2"}), base]
  assert {config_lib.sweep_key(c) for c in same} == {config_lib.sweep_key(base)}
  assert config_lib.varying_floats(same) == {"optim.lr": [0.2, 0.05]}
  for other in (_amazon("nn", "books_dvd", 0), _amazon("dann", "books_dvd", 0, **{
      "train.steps": "31"}), _amazon("dann", "books_dvd", 0, **{"model.hidden": "(20,)"})):
    assert config_lib.sweep_key(other) != config_lib.sweep_key(base)
  with pytest.raises(sweep.SweepError, match="differ in fields"):
    sweep.train_runs([sweep.Run(base, tmp_path / "a"),
                      sweep.Run(_amazon("nn", "books_dvd", 0), tmp_path / "b")])
  with pytest.raises(sweep.SweepError, match="share a workdir"):
    sweep.train_runs([sweep.Run(base, tmp_path / "a"), sweep.Run(same[0], tmp_path / "a")])
  # Datasets whose arrays differ in shape cannot share a sweep.
  rng = np.random.default_rng(0)
  for name, dim in (("five", 5), ("six", 6)):
    np.savez(tmp_path / f"{name}.npz", features=rng.random((20, dim), np.float32),
             label=rng.integers(0, 2, 20).astype(np.int32))
  mixed = [_amazon("nn", "books_dvd", 0, **{"data.train": f"npz:{tmp_path / n}.npz",
                                               "evals.target_test.dataset": f"npz:{tmp_path / n}.npz",
                                               "evals.target_test.split": "train",
                                               "evals.source_test.dataset": f"npz:{tmp_path / n}.npz",
                                               "evals.source_test.split": "train"})
           for n in ("five", "six")]
  with pytest.raises(sweep.SweepError, match="differ in array shapes"):
    sweep.train_runs([sweep.Run(c, tmp_path / f"m{i}") for i, c in enumerate(mixed)])


def test_index_stream_is_the_train_iterators_order():
  arrays = {"features": np.arange(70, dtype=np.float32)[:, None], "label": np.zeros(70, np.int32)}
  for position in (0, 20, 139):
    iterator = pipeline.TrainIterator(arrays, global_batch=32, seed=5, position=position)
    stream = pipeline.IndexStream(70, seed=5, position=position)
    for _ in range(6):
      np.testing.assert_array_equal(next(iterator)["features"][:, 0], stream.take(32))
    assert stream.position == iterator.position


def test_sinusoid_tasks_are_the_same_one_by_one_and_as_a_grid():
  source = sinusoid.SinusoidTasks(shots=5, queries=3)
  grid = jax.device_get(source.grid(np.array([[4, 9]]), np.array([[7, 7]]), np.array([[2, 3]])))
  for j, (seed, index) in enumerate(((4, 2), (9, 3))):
    task = source.task(seed, 7, index)
    amplitude, phase, x = source.parameters(seed, 7, index)
    np.testing.assert_array_equal(grid["support"]["x"][0, j], task["support"]["x"])
    np.testing.assert_array_equal(task["query"]["x"][:, 0], x[5:])
    np.testing.assert_allclose(task["query"]["label"][:, 0], amplitude * np.sin(x[5:] - phase),
                               rtol=1e-5, atol=1e-6)


def test_runner_sweeps_compatible_cells_and_runs_the_rest_alone(tmp_path):
  overrides = (("train.steps", "20"), ("train.log_every", "10"), ("checkpoint.every", "20"))
  settings = [{"row": "NN", "column": c, "config": f"configs/amazon.py:nn/{a}"}
              for c, a in (("B→D", "books_dvd"), ("K→E", "kitchen_electronics"))]
  cells = experiments.grid(settings, [0], overrides) + [experiments.Cell(
      "NN", "longer", 0, "configs/amazon.py:nn/books_dvd", overrides + (("train.steps", "30"),))]
  assert [len(g) for g in experiments.sweep_groups(cells)] == [2, 1]
  more = cells[:2] + [dataclasses.replace(c, seed=1) for c in cells[:2]] + cells[2:]
  assert [[(c.column, c.seed) for c in g] for g in experiments.sweep_groups(more, max_size=3)] == [
      [("B→D", 0), ("K→E", 0), ("B→D", 1)], [("K→E", 1)], [("longer", 0)]]
  status = experiments.Runner(tmp_path).run(cells)
  assert set(status.values()) == {"done"}
  results = [json.loads((experiments.cell_dir(tmp_path, c) / "results.json").read_text())
             for c in cells]
  assert [r.get("sweep", {}).get("runs") for r in results] == [2, 2, None]
  assert len(list((tmp_path / "sweeps").glob("*.json"))) == 1
  # A rerun with another lr: the cell whose workdir holds the old run is kept out of the sweep
  # (its run alone stops with the differences), so the new cells still sweep together.
  relr = dataclasses.replace(cells[0], overrides=cells[0].overrides + (("optim.lr", "0.123"),))
  new = [dataclasses.replace(c, seed=1) for c in (relr, cells[1])]
  assert [[(c.column, c.seed) for c in g] for g in experiments.Runner(tmp_path).groups(
      [relr] + new)] == [[("B→D", 1), ("K→E", 1)], [("B→D", 0)]]


def test_a_changed_config_neither_resumes_nor_reuses_another_runs_workdir(tmp_path):
  """The engine refuses a workdir whose checkpoints or results came from a different config, and a
  table counts a cell finished only when its workdir's run has the cell's config."""
  cell = experiments.Cell(row="NN", column="B→D", seed=0, config="configs/amazon.py:nn/books_dvd",
                          overrides=(("train.steps", "30"), ("train.log_every", "10"),
                                     ("checkpoint.every", "10"), ("eval_batch", "1024")))
  workdir = experiments.cell_dir(tmp_path, cell)
  first = trainer.train_and_evaluate(experiments.cell_config(cell), workdir)
  assert experiments.is_finished(tmp_path, cell)
  relogged = dataclasses.replace(cell, overrides=cell.overrides + (("train.log_every", "5"),))
  assert trainer.train_and_evaluate(experiments.cell_config(relogged), workdir) == first
  assert experiments.is_finished(tmp_path, relogged)
  other = dataclasses.replace(cell, overrides=cell.overrides + (("optim.lr", "0.123"),))
  assert not experiments.is_finished(tmp_path, other)
  longer = dataclasses.replace(cell, overrides=cell.overrides + (("train.steps", "40"),))
  assert not experiments.is_finished(tmp_path, longer)  # its run would extend this one to 40
  for train in (trainer.train_and_evaluate, lambda c, w: sweep.train_runs([sweep.Run(c, w)])):
    with pytest.raises(config_lib.ConfigMismatchError, match="optim.lr"):
      train(experiments.cell_config(other), workdir)
  (workdir / "results.json").unlink()  # interrupted after its last checkpoint: resume refused too
  with pytest.raises(config_lib.ConfigMismatchError, match="optim.lr"):
    trainer.train_and_evaluate(experiments.cell_config(other), workdir)
  assert trainer.train_and_evaluate(experiments.cell_config(cell), workdir)["eval"] == first["eval"]
