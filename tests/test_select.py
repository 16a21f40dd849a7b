"""Checkpoint selection (config.select): the best evaluation and its weights, alone, resumed, swept."""
import json
import shutil

import ml_collections
import numpy as np
import pytest

from conftest import REPO
from mmjax import config as config_lib
from mmjax.train import checkpoint, select, steps, sweep, trainer

METRIC = "source_val/accuracy"


def _config(seed=0, pair="books_dvd", **overrides):
  fields = {"seed": str(seed), "train.steps": "30", "train.log_every": "10",
            "checkpoint.every": "10", "eval_batch": "1024", "eval_every": "5",
            "select.metric": METRIC, **overrides}
  return config_lib.load_with_overrides(str(REPO / f"configs/amazon.py:dann/{pair}/val"), fields)


def _logged(workdir, metric=METRIC):
  """{step: value} of every evaluation the run logged to metrics.jsonl."""
  rows = [json.loads(r) for r in (workdir / "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: r[metric] for r in rows if metric in r}


def _selector_config(metric="a/accuracy", mode="max", keep_weights=False):
  return ml_collections.ConfigDict({"select": {"metric": metric, "mode": mode,
                                               "keep_weights": keep_weights}})


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


def test_bad_select_configs_are_refused_before_training(tmp_path):
  with pytest.raises(config_lib.ConfigError, match="no eval set 'target_val'.*source_test, "
                     "source_val, target_test"):
    trainer.train_and_evaluate(_config(**{"select.metric": "target_val/accuracy"}), tmp_path)
  with pytest.raises(config_lib.ConfigError, match="expected '<eval set>/<number>'"):
    select.check(_config(**{"select.metric": "accuracy"}), ["source_val"])
  with pytest.raises(config_lib.ConfigError, match="select.mode='best'"):
    select.check(_config(**{"select.mode": "best"}), ["source_val"])
  with pytest.raises(config_lib.ConfigError, match="needs eval_every > 0"):
    select.check(_config(**{"eval_every": "0"}), ["source_val"])
  with pytest.raises(config_lib.ConfigError, match="unknown config key 'select.metrc'"):
    _config(**{"select.metrc": METRIC})
  assert not (tmp_path / "checkpoints").exists()


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
  params, model_state, step = checkpoint.read_variables(str(workdir / "best"))
  assert step == best
  config = _config()
  from mmjax import methods
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
    assert checkpoint.read_variables(str(tmp_path / f"swept{i}" / "best"))[2] == best
