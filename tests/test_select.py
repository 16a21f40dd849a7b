"""Checkpoint selection (config.select): the best evaluation and its weights, alone, resumed, swept."""
import json
import shutil

import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import REPO
from mmjax import config as config_lib
from mmjax import experiments
from mmjax import methods
from mmjax.train import checkpoint, select, steps, sweep, trainer

METRIC = "source_val/accuracy"


def _fields(seed=0, **overrides):
  return {"seed": str(seed), "train.steps": "30", "train.log_every": "10",
          "checkpoint.every": "10", "eval_batch": "1024", "eval_every": "5",
          "select.metric": METRIC, **overrides}


def _config(seed=0, pair="books_dvd", **overrides):
  return config_lib.load_with_overrides(str(REPO / f"configs/amazon.py:dann/{pair}/val"),
                                        _fields(seed, **overrides))


def _logged(workdir, metric=METRIC):
  """{step: value} of every evaluation the run logged to metrics.jsonl."""
  rows = [json.loads(r) for r in (workdir / "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: r[metric] for r in rows if metric in r}


def _selector_config(metric="a/accuracy", mode="max", keep_weights=False, steps=25):
  return ml_collections.ConfigDict({"select": {"metric": metric, "mode": mode,
                                               "keep_weights": keep_weights},
                                    "eval_every": 5, "train": {"steps": steps}})


def _tree(step):
  return {"w": jnp.full((3,), float(step))}


def _kept(workdir):
  """(step, w[0]) of the one checkpoint in workdir/best, or None when there is none."""
  directory = workdir / "best" / "checkpoints"
  if not directory.is_dir():
    return None
  manager = ocp.CheckpointManager(directory.absolute(),
                                  options=ocp.CheckpointManagerOptions(read_only=True))
  found = manager.all_steps()
  assert len(found) == 1, found
  tree = manager.restore(found[0], args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  manager.close()
  return found[0], float(np.asarray(tree["state"]["w"])[0])


def test_selector_keeps_the_first_best_and_skips_nan(tmp_path):
  sel = select.Selector(tmp_path, _selector_config(), restored_step=0)
  values = {5: 0.6, 10: 0.8, 15: float("nan"), 20: 0.8, 25: 0.7}
  improved = [sel.update(s, {"a": {"accuracy": v, "loss": 1 - v}}) for s, v in values.items()]
  assert improved == [True, True, False, False, False]
  result = sel.result()
  assert (result["step"], result["value"], result["evaluations"]) == (10, 0.8, 5)
  assert result["eval"] == {"a": {"accuracy": 0.8, "loss": pytest.approx(0.2)}}
  low = select.Selector(tmp_path, _selector_config("a/loss", "min"), restored_step=0)
  for s, v in values.items():
    low.update(s, {"a": {"accuracy": v, "loss": 1 - v}})
  assert low.result()["step"] == 10
  # A NaN never wins, not even as the first evaluation.
  first_nan = select.Selector(tmp_path / "nan", _selector_config(), restored_step=0)
  (tmp_path / "nan").mkdir()
  for s, v in {5: float("nan"), 10: 0.5, 15: 0.4}.items():
    first_nan.update(s, {"a": {"accuracy": v}})
  assert first_nan.result()["step"] == 10
  with pytest.raises(KeyError, match="has \\['accuracy', 'loss'\\]"):
    select.Selector(tmp_path, _selector_config("a/top5"), 0).update(5, {"a": {
        "accuracy": 1.0, "loss": 0.0}})


def test_selector_resumed_forgets_evaluations_after_the_restored_step(tmp_path):
  sel = select.Selector(tmp_path, _selector_config(), restored_step=0)
  for s, v in {5: 0.6, 10: 0.7, 15: 0.9}.items():
    sel.update(s, {"a": {"accuracy": v}})
  again = select.Selector(tmp_path, _selector_config(), restored_step=10)
  assert [h["step"] for h in again.history] == [5, 10] and again.best["step"] == 10
  # The replay of steps 11.. evaluates step 15 again (here lower): the choice stays at step 10.
  again.update(15, {"a": {"accuracy": 0.65}})
  assert again.result()["step"] == 10
  # Another metric, or an unreadable file: the selection starts afresh.
  assert select.Selector(tmp_path, _selector_config(mode="min"), restored_step=15).history == []
  (tmp_path / "selection.json").write_text("{not json")
  assert select.Selector(tmp_path, _selector_config(), restored_step=15).history == []


def test_selector_history_keeps_only_the_current_evaluation_grid(tmp_path):
  """A finished run of 23 steps given 40: its last step's evaluation (23, off the grid of 5s) is
  not one the longer run makes, so it can no longer be chosen."""
  sel = select.Selector(tmp_path, _selector_config(steps=23), restored_step=0)
  for s, v in {5: 0.6, 10: 0.7, 15: 0.6, 20: 0.65, 23: 0.9}.items():
    sel.update(s, {"a": {"accuracy": v}})
  assert sel.result()["step"] == 23
  longer = select.Selector(tmp_path, _selector_config(steps=40), restored_step=23)
  assert [h["step"] for h in longer.history] == [5, 10, 15, 20] and longer.best["step"] == 10


def test_kept_weights_follow_the_best_through_stops(tmp_path):
  config = _selector_config(keep_weights=True)
  sel = select.Selector(tmp_path, config, restored_step=0)
  for s, v in {5: 0.6, 10: 0.8, 15: 0.7}.items():
    sel.update(s, {"a": {"accuracy": v}}, lambda s=s: _tree(s))
  assert _kept(tmp_path) == (10, 10.0) and sel.result()["weights"] == str(tmp_path / "best")
  # Stopped during the last step's evaluation after its weights were saved (results.json not
  # written): the resumed run evaluates step 25 again and saves the same step again.
  sel.update(25, {"a": {"accuracy": 0.9}}, lambda: _tree(25))
  again = select.Selector(tmp_path, config, restored_step=25)
  assert again.update(25, {"a": {"accuracy": 0.9}}, lambda: _tree(25))
  assert _kept(tmp_path) == (25, 25.0)
  # Stopped between the weights' save and selection.json's write: the file names step 10, the
  # folder holds 20. The folder is emptied, and the replay saves step 20 again.
  sel = select.Selector(tmp_path / "b", config, restored_step=0)
  (tmp_path / "b").mkdir()
  for s, v in {5: 0.6, 10: 0.8}.items():
    sel.update(s, {"a": {"accuracy": v}}, lambda s=s: _tree(s))
  saved = (tmp_path / "b" / "selection.json").read_text()
  sel.update(15, {"a": {"accuracy": 0.7}}, lambda: _tree(15))
  sel.update(20, {"a": {"accuracy": 0.95}}, lambda: _tree(20))
  (tmp_path / "b" / "selection.json").write_text(saved)
  resumed = select.Selector(tmp_path / "b", config, restored_step=10)
  assert _kept(tmp_path / "b") is None and resumed.result()["weights"] is None
  resumed.update(15, {"a": {"accuracy": 0.7}}, lambda: _tree(15))
  resumed.update(20, {"a": {"accuracy": 0.95}}, lambda: _tree(20))
  assert _kept(tmp_path / "b") == (20, 20.0)
  # A best whose weights are gone is reported without them.
  shutil.rmtree(tmp_path / "b" / "best")
  assert resumed.result()["step"] == 20 and resumed.result()["weights"] is None


def test_bad_select_configs_are_refused_before_training(tmp_path):
  with pytest.raises(config_lib.ConfigError, match="no eval set 'target_val'.*source_test, "
                     "source_val, target_test"):
    trainer.train_and_evaluate(_config(**{"select.metric": "target_val/accuracy"}), tmp_path)
  with pytest.raises(config_lib.ConfigError, match="expected '<eval set>/<number>'"):
    select.check(_config(**{"select.metric": "accuracy"}))
  with pytest.raises(config_lib.ConfigError, match="select.mode='best'"):
    select.check(_config(**{"select.mode": "best"}))
  with pytest.raises(config_lib.ConfigError, match="needs 0 < eval_every < train.steps"):
    select.check(_config(**{"eval_every": "0"}))
  with pytest.raises(config_lib.ConfigError, match="needs 0 < eval_every < train.steps"):
    select.check(_config(**{"eval_every": "30"}))
  with pytest.raises(config_lib.ConfigError, match="unknown config key 'select.metrc'"):
    _config(**{"select.metrc": METRIC})
  assert not (tmp_path / "checkpoints").exists()
  # A number the eval set does not report: refused from the eval step's output, alone and in sweeps.
  top5 = {"select.metric": "source_val/top5"}
  with pytest.raises(config_lib.ConfigError, match="'source_val' reports accuracy, loss, n"):
    trainer.train_and_evaluate(_config(**top5), tmp_path / "alone")
  with pytest.raises(config_lib.ConfigError, match="'source_val' reports accuracy, loss, n"):
    sweep.train_runs([sweep.Run(_config(seed=s, **top5), tmp_path / f"swept{s}") for s in (0, 1)])
  for workdir in ("alone", "swept0", "swept1"):  # not one step trained or saved
    assert not list((tmp_path / workdir).glob("checkpoints/*"))


@pytest.fixture(scope="module")
def selected_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("selected")
  return workdir, trainer.train_and_evaluate(_config(), workdir)


def test_selected_is_the_logged_best_and_its_weights_give_its_numbers(selected_run):
  workdir, res = selected_run
  logged = _logged(workdir)
  assert sorted(logged) == [5, 10, 15, 20, 25, 30]
  best = max(logged, key=lambda s: (logged[s], -s))  # the first of equal values
  chosen = res["selected"]
  assert (chosen["step"], chosen["value"]) == (best, logged[best])
  assert chosen["eval"]["target_test"]["accuracy"] == _logged(workdir, "target_test/accuracy")[best]
  assert res["eval"]["source_val"]["accuracy"] == logged[30]  # "eval" stays the last step's
  # The kept weights, evaluated again, give the chosen step's numbers.
  assert chosen["weights"] == str(workdir / "best")
  _assert_weights_give(_config(), workdir, chosen)


def test_a_refused_metric_leaves_the_kept_weights(selected_run, tmp_path):
  """A resumed run (resume_check=warn) given a metric its eval set does not report is refused before
  its Selector, which would have cleared best/ as another metric's weights."""
  workdir = tmp_path / "run"
  shutil.copytree(selected_run[0], workdir)
  (workdir / "results.json").unlink()  # unfinished, so the run would resume
  with pytest.raises(config_lib.ConfigError, match="'source_val' reports"):
    trainer.train_and_evaluate(_config(**{"select.metric": "source_val/top5",
                                          "resume_check": "warn"}), workdir)
  assert (workdir / "best" / "checkpoints" / str(selected_run[1]["selected"]["step"])).is_dir()


def _assert_weights_give(config, workdir, chosen):
  """workdir/best's weights, evaluated again, give the chosen step's accuracies."""
  params, model_state, step = checkpoint.read_variables(str(workdir / "best"))
  assert step == chosen["step"]
  method = methods.get_method(config.method)
  again = trainer.evaluate(method, config, method.build_model(config), params,
                           trainer.load_eval_sets(config), steps.Partitioner("jit"), 1024,
                           model_state=model_state)
  for name in ("source_val", "target_test"):
    np.testing.assert_allclose(again[name]["accuracy"], chosen["eval"][name]["accuracy"])


def test_resumed_run_chooses_as_the_uninterrupted_one(selected_run, tmp_path):
  reference, res = selected_run
  workdir = tmp_path / "run"
  trainer.train_and_evaluate(_config(), workdir)
  # A stop after step 10's checkpoint: later checkpoints and results gone, selection.json kept.
  for step in (20, 30):
    shutil.rmtree(workdir / "checkpoints" / str(step))
  (workdir / "results.json").unlink()
  again = trainer.train_and_evaluate(_config(), workdir)
  assert {k: again["selected"][k] for k in ("step", "value", "eval", "evaluations")} == {
      k: res["selected"][k] for k in ("step", "value", "eval", "evaluations")}
  assert checkpoint.read_variables(str(workdir / "best"))[2] == res["selected"]["step"]


def test_sweep_selects_as_each_run_alone(selected_run, tmp_path):
  reference, alone = selected_run
  configs = [_config(**{"train.sweep_axis": "map"}),
             _config(seed=3, pair="kitchen_electronics", **{"train.sweep_axis": "map"})]
  runs = [sweep.Run(c, tmp_path / f"swept{i}") for i, c in enumerate(configs)]
  swept = sweep.train_runs(runs)
  assert swept[0]["selected"]["step"] == alone["selected"]["step"]
  np.testing.assert_allclose(swept[0]["selected"]["value"], alone["selected"]["value"])
  for i, res in enumerate(swept):
    logged = _logged(tmp_path / f"swept{i}")
    best = max(logged, key=lambda s: (logged[s], -s))
    assert res["selected"]["step"] == best
    _assert_weights_give(configs[i], tmp_path / f"swept{i}", res["selected"])


def test_meta_trainer_selects_on_meta_test_and_keeps_those_weights(tmp_path):
  from mmjax.data import episodes
  from mmjax.methods import maml
  from mmjax.train import meta_trainer
  config = config_lib.load_with_overrides(str(REPO / "configs/sinusoid.py:maml_cpu"), {
      "train.steps": "6", "train.log_every": "2", "checkpoint.every": "6", "meta.meta_batch": "8",
      "meta.test_tasks": "10", "meta.test_inner_steps": "2", "eval_every": "2",
      "select.metric": "meta_test/loss", "select.mode": "min"})
  # A number meta_test does not report is refused before the first step, as in the trainer.
  bad = config.copy_and_resolve_references()
  bad.select.metric = "meta_test/top5"
  with pytest.raises(config_lib.ConfigError, match=r"'meta_test' reports loss, loss_ci95, "
                     r"loss_step0, loss_step1, loss_step2, n$"):
    meta_trainer.train_and_evaluate(bad, tmp_path / "refused")
  other = bad.copy_and_resolve_references()
  other.seed = 1
  with pytest.raises(config_lib.ConfigError, match="'meta_test' reports loss, loss_ci95"):
    sweep.train_runs([sweep.Run(bad, tmp_path / "refused0"), sweep.Run(other, tmp_path / "r1")])
  for workdir in ("refused", "refused0", "r1"):  # no step trained: nothing logged
    assert not (tmp_path / workdir / "metrics.jsonl").exists()
  res = meta_trainer.train_and_evaluate(config, tmp_path)
  logged = _logged(tmp_path, "meta_test/loss")
  assert sorted(logged) == [2, 4, 6]
  best = min(logged, key=lambda s: (logged[s], s))
  assert (res["selected"]["step"], res["selected"]["value"]) == (best, logged[best])
  params, _, step = checkpoint.read_variables(str(tmp_path / "best"))
  assert step == best
  partitioner = steps.Partitioner("jit")
  meta_test = meta_trainer.make_meta_test(config, maml.build_model(config), partitioner)
  source = episodes.make_task_source(config, config.meta.test_split)
  again = meta_test(params, source)
  np.testing.assert_allclose(again["loss"], res["selected"]["value"], rtol=1e-5)
  assert meta_test.reported(params, source) == set(again)  # the check's numbers are the real ones


def _stop_step(values: dict, patience: int, mode: str, last: int):
  """Early stopping's rule written out: the first evaluation before the last step after which
  `patience` evaluations in a row have not strictly beaten the best; None if it never stops."""
  best, since = None, 0
  for step in sorted(s for s in values if s != last):
    better = best is None or (values[step] > best if mode == "max" else values[step] < best)
    best, since = (values[step], 0) if better else (best, since + 1)
    if since >= patience:
      return step
  return None


@pytest.mark.parametrize("metric,mode,patience", [(METRIC, "max", 1), ("source_val/loss", "min", 2)])
def test_patience_stops_where_the_full_runs_evaluations_say(selected_run, tmp_path, metric, mode,
                                                            patience):
  """A run with select.patience stops at the step the rule gives on an identical run's logged
  evaluations, reports that step's evaluation, and counts as finished when started again (also
  after a stop before its results.json was written)."""
  full = _logged(selected_run[0], metric)
  expected = _stop_step(full, patience, mode, 30)
  assert expected is not None and expected < 25  # the test run does stop early
  fields = _fields(**{"select.metric": metric, "select.mode": mode,
                      "select.patience": str(patience)})
  cell = experiments.Cell(row="DANN", column="B→D", seed=0,
                          config="configs/amazon.py:dann/books_dvd/val",
                          overrides=tuple((k, v) for k, v in fields.items() if k != "seed"))
  config, workdir = experiments.cell_config(cell), experiments.cell_dir(tmp_path, cell)
  res = trainer.train_and_evaluate(config, workdir)
  assert experiments.is_finished(tmp_path, cell)  # a table counts the stopped run as finished
  assert res["step"] == expected
  assert res["stopped_early"]["step"] == expected and res["stopped_early"]["patience"] == patience
  logged = _logged(workdir, metric)
  assert sorted(logged) == [s for s in sorted(full) if s <= expected]  # nothing after the stop
  np.testing.assert_allclose([logged[s] for s in sorted(logged)],
                             [full[s] for s in sorted(logged)], rtol=1e-6)
  assert res["eval"]["source_val"] == pytest.approx(
      {k: _logged(workdir, f"source_val/{k}")[expected] for k in ("accuracy", "loss", "n")})
  pick = (max if mode == "max" else min)(logged, key=lambda s: (logged[s], -s if mode == "max"
                                                                else s))
  assert res["selected"]["step"] == pick and res["selected"]["step"] == res["stopped_early"][
      "best_step"]
  assert expected in checkpoint.Checkpointer(workdir, 3).manager.all_steps()
  rows = (workdir / "metrics.jsonl").read_text()
  assert trainer.train_and_evaluate(config, workdir) == res  # finished: nothing trains
  # Killed after the stop's checkpoint, before results.json, and started again with another
  # eval_every (a field a resumed run may change): the checkpoint says where the run stopped, and
  # the stopped run keeps its evaluations and its choice.
  (workdir / "results.json").unlink()
  again = trainer.train_and_evaluate(_config(**{**dict(cell.overrides), "eval_every": "10"}),
                                     workdir)
  for key in ("step", "eval", "stopped_early", "selected"):
    assert again[key] == res[key], key
  assert (workdir / "metrics.jsonl").read_text() == rows


def test_a_full_run_with_patience_killed_before_its_results_is_not_called_stopped(tmp_path):
  config = _config(**{"select.patience": "10"})  # 5 evaluations in the loop: it never stops
  res = trainer.train_and_evaluate(config, tmp_path)
  assert res["step"] == 30 and "stopped_early" not in res
  (tmp_path / "results.json").unlink()
  again = trainer.train_and_evaluate(config, tmp_path)
  assert again["step"] == 30 and "stopped_early" not in again
  assert (again["eval"], again["selected"]) == (res["eval"], res["selected"])


def test_patience_configs(tmp_path):
  with pytest.raises(config_lib.ConfigError, match="select.patience=2 stops on select.metric"):
    select.check(_config(**{"select.metric": "", "select.patience": "2"}))
  with pytest.raises(config_lib.ConfigError, match="expected an int >= 0"):
    select.check(_config(**{"select.patience": "-1"}))


def test_sweep_with_patience_stops_each_run_as_alone(selected_run, tmp_path):
  """In a sweep, each run stops where it stops alone (the rule on an identical full run's logged
  evaluations, and a solo run with patience), the others going on; a run killed after its stop's
  checkpoint is finished from that checkpoint's record."""
  patience = {"select.patience": "1", "train.sweep_axis": "map"}
  configs = [_config(**patience), _config(seed=3, pair="kitchen_electronics", **patience)]
  assert config_lib.sweep_key(configs[0]) == config_lib.sweep_key(configs[1]) is not None
  full = _logged(selected_run[0])
  expected = _stop_step(full, 1, "max", 30)
  runs = [sweep.Run(c, tmp_path / f"swept{i}") for i, c in enumerate(configs)]
  swept = sweep.train_runs(runs)
  alone = trainer.train_and_evaluate(configs[1], tmp_path / "alone1")
  assert (swept[0]["step"], swept[0]["stopped_early"]["step"]) == (expected, expected)
  assert swept[1]["step"] == alone["step"] != expected  # each its own stop (or none)
  assert swept[1].get("stopped_early") == alone.get("stopped_early")
  assert swept[1]["selected"]["step"] == alone["selected"]["step"]
  np.testing.assert_allclose(swept[1]["eval"]["source_val"]["accuracy"],
                             alone["eval"]["source_val"]["accuracy"])
  # The stop's train numbers (its partial log window) and the evaluations it chose among.
  assert swept[1]["final_train"] == pytest.approx(alone["final_train"], rel=1e-5)
  history = lambda d: json.loads((d / "selection.json").read_text())["history"]
  assert [h["step"] for h in history(tmp_path / "swept1")] == [
      h["step"] for h in history(tmp_path / "alone1")]
  for i, res in enumerate(swept):  # nothing logged or saved after a run's stop
    workdir = tmp_path / f"swept{i}"
    assert max(_logged(workdir)) == res["step"]
    assert max(checkpoint.Checkpointer(workdir, 3).manager.all_steps()) == res["step"]
  np.testing.assert_allclose([_logged(tmp_path / "swept0")[s] for s in sorted(full) if s <= expected],
                             [full[s] for s in sorted(full) if s <= expected], rtol=1e-6)
  # Killed before results.json: the sweep finishes the stopped run from its checkpoint's record.
  (tmp_path / "swept0" / "results.json").unlink()
  rows = (tmp_path / "swept0" / "metrics.jsonl").read_text()
  again = sweep.train_runs(runs)
  for key in ("step", "eval", "stopped_early", "selected"):
    assert again[0][key] == swept[0][key], key
  assert (tmp_path / "swept0" / "metrics.jsonl").read_text() == rows


def test_meta_trainer_stops_with_patience(tmp_path):
  """The meta trainer's loop stops as the trainer's. Its meta-test loss falls at every evaluation
  here, so the test selects on its maximum, which stops the run at its second evaluation."""
  from mmjax.train import meta_trainer
  fields = {"train.steps": "12", "train.log_every": "2", "checkpoint.every": "12",
            "meta.meta_batch": "8", "meta.test_tasks": "10", "meta.test_inner_steps": "2",
            "eval_every": "2", "select.metric": "meta_test/loss", "select.mode": "max"}
  load = lambda **o: config_lib.load_with_overrides(str(REPO / "configs/sinusoid.py:maml_cpu"),
                                                    {**fields, **o})
  meta_trainer.train_and_evaluate(load(), tmp_path / "full")
  full = _logged(tmp_path / "full", "meta_test/loss")
  expected = _stop_step(full, 1, "max", 12)
  assert expected is not None and expected < 10
  res = meta_trainer.train_and_evaluate(load(**{"select.patience": "1"}), tmp_path / "early")
  assert (res["step"], res["stopped_early"]["step"]) == (expected, expected)
  np.testing.assert_allclose(res["eval"]["meta_test"]["loss"], full[expected], rtol=1e-5)
  assert max(_logged(tmp_path / "early", "meta_test/loss")) == expected
  # Killed before results.json, a stop is finished by the other mode from its checkpoint's record:
  # the solo run's by a sweep (beside another seed, which stops in the sweep), that one's alone.
  (tmp_path / "early" / "results.json").unlink()
  runs = [sweep.Run(load(**{"select.patience": "1"}), tmp_path / "early"),
          sweep.Run(load(**{"select.patience": "1", "seed": "1"}), tmp_path / "seed1")]
  swept = sweep.train_runs(runs)
  assert "stopped_early" in swept[1]
  (tmp_path / "seed1" / "results.json").unlink()
  alone = meta_trainer.train_and_evaluate(runs[1].config, tmp_path / "seed1")
  for key in ("step", "eval", "stopped_early", "selected"):
    assert swept[0][key] == res[key], key
    assert alone[key] == swept[1][key], key
