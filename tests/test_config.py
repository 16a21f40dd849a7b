"""Configs: loading path:arg, overrides, unknown keys, and every config in configs/ building."""
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

from mmjax import config as config_lib
from mmjax import methods, models

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.py"))


def test_load_with_arg_and_overrides():
  cfg = config_lib.load_with_overrides(
      str(REPO / "configs/digits.py:usps_mnist"),
      {"train.steps": "200", "optim.lr": "0.05", "optim.nesterov": "true", "data.dir": "/x"})
  assert cfg.data.train == "usps"
  assert cfg.evals.target_test.dataset == "mnist"
  assert cfg.train.steps == 200 and isinstance(cfg.train.steps, int)
  assert cfg.optim.lr == 0.05
  assert cfg.optim.nesterov is True
  assert cfg.data.dir == "/x"


def test_unknown_override_names_key_and_nearest():
  cfg = config_lib.load(str(REPO / "configs/digits.py:mnist_usps"))
  with pytest.raises(config_lib.ConfigError, match=r"'optim.lrr'.*Nearest valid keys: optim.lr"):
    config_lib.override(cfg, "optim.lrr", "0.1")
  with pytest.raises(config_lib.ConfigError, match=r"'trian.steps'.*Nearest valid keys: train"):
    config_lib.override(cfg, "trian.steps", "5")


def test_bad_value_type_is_named():
  cfg = config_lib.load(str(REPO / "configs/digits.py:mnist_usps"))
  with pytest.raises(config_lib.ConfigError, match="train.steps"):
    config_lib.override(cfg, "train.steps", "many")


def test_config_file_with_misspelled_key_is_rejected(tmp_path):
  bad = tmp_path / "bad.py"
  bad.write_text("from mmjax.config import base_config\n"
                 "def get_config(arg=None):\n"
                 "  c = base_config()\n"
                 "  c.train.stpes = 5\n"
                 "  return c\n")
  with pytest.raises(config_lib.ConfigError, match=r"train.stpes.*steps"):
    config_lib.load(str(bad))


def test_launch_stops_on_unknown_key_before_any_work(tmp_path):
  workdir = tmp_path / "run"
  proc = subprocess.run(
      [sys.executable, str(REPO / "launch.py"), "--config=configs/digits.py:mnist_usps",
       f"--workdir={workdir}", "--config.optim.momentun=0.5"],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert "optim.momentun" in proc.stderr and "optim.momentum" in proc.stderr
  assert not workdir.exists()


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_config_builds(path):
  """Each config (with each arg it documents) loads, serialises, and builds its model."""
  spec = importlib.util.spec_from_file_location(path.stem, path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  args = list(getattr(mod, "ARGS", [None]))
  for arg in args:
    cfg = config_lib.load(f"{path}:{arg}" if arg else str(path))
    json.loads(cfg.to_json_best_effort())
    method = methods.get_method(cfg.method)
    assert method.streams(cfg)
    model = method.build_model(cfg)
    backbone = getattr(model, "backbone", model)
    for field, value in cfg.model.items():  # every config.model field reaches the module
      if field != "name":
        assert getattr(backbone, field) == (tuple(value) if isinstance(value, list) else value)


def test_unknown_model_field_is_named():
  cfg = config_lib.load(str(REPO / "configs/digits.py:mnist_usps"))
  with cfg.unlocked():
    cfg.model.hiden = 3
  with pytest.raises(ValueError, match="hiden"):
    models.build_model(cfg.model)


@pytest.mark.parametrize("env,expected", [
    ({}, False), ({"SLURM_NTASKS": "1"}, False), ({"SLURM_NTASKS": "4"}, True),
    ({"TPU_WORKER_HOSTNAMES": "t1v-0"}, False), ({"TPU_WORKER_HOSTNAMES": "t1v-0,t1v-1"}, True)])
def test_launch_detects_slurm_and_tpu_pods(env, expected):
  """launch.py calls jax.distributed.initialize() by itself in a multi-task SLURM job or a TPU pod."""
  clean = {k: v for k, v in os.environ.items()
           if k not in ("SLURM_NTASKS", "TPU_WORKER_HOSTNAMES")}
  out = subprocess.run([sys.executable, "-c", "import launch; print(launch.auto_multiprocess())"],
                       cwd=REPO, env={**clean, **env}, capture_output=True, text=True, check=True)
  assert out.stdout.strip() == str(expected)


@pytest.mark.parametrize("script", ["scripts/slurm.sbatch", "scripts/tpu_pod.sh"])
def test_launch_scripts_parse_and_pass_the_config_to_launch_py(script):
  subprocess.run(["bash", "-n", str(REPO / script)], check=True)
  assert "launch.py --config=" in (REPO / script).read_text()


def test_a_run_written_before_newer_keys_loads_with_their_defaults(tmp_path):
  """config.json of an older run (before data.order, data.arrays_dir, adapt.gamma_per_step,
  optim.decay_per_step existed) reads back with those keys at the defaults that keep its behaviour."""
  cfg = config_lib.load(str(REPO / "configs/digits_adapt.py:dann/mnist_usps"))
  old = cfg.to_dict()
  for group, key in (("data", "order"), ("data", "arrays_dir"), ("adapt", "gamma_per_step"),
                     ("optim", "decay_per_step")):
    del old[group][key]
  old["optim"]["lr"] = 0.123  # the run's own values win over the defaults
  (tmp_path / "config.json").write_text(json.dumps(old))
  back = config_lib.from_workdir(tmp_path)
  assert (back.data.order, back.data.arrays_dir, back.adapt.gamma_per_step,
          back.optim.decay_per_step) == ("tf", None, 0.0, 0.0)
  assert back.optim.lr == 0.123 and back.data.target == "usps" and back.to_dict().keys() == cfg.to_dict().keys()


def test_a_workdir_with_another_configs_run_is_refused_and_free_fields_may_change(tmp_path):
  """check_same_run compares the stored config.json with the new config field by field."""
  cfg = config_lib.load(str(REPO / "configs/digits_adapt.py:dann/mnist_usps"))
  config_lib.write_json(cfg, tmp_path / "config.json")
  config_lib.check_same_run(config_lib.load_with_overrides(  # nothing saved yet: free to reuse
      str(REPO / "configs/digits_adapt.py:dann/mnist_usps"), {"optim.lr": "0.5"}), tmp_path)
  (tmp_path / "checkpoints" / "500").mkdir(parents=True)
  config_lib.check_same_run(cfg, tmp_path)
  free = {"train.steps": "6000", "train.log_every": "7", "checkpoint.every": "9", "eval_every": "11",
          "parallel": "pmap", "data.arrays_dir": "/elsewhere", "train.sweep_axis": "vmap"}
  config_lib.check_same_run(config_lib.load_with_overrides(
      str(REPO / "configs/digits_adapt.py:dann/mnist_usps"), free), tmp_path)
  changed = config_lib.load_with_overrides(str(REPO / "configs/digits_adapt.py:dann/mnist_usps"),
                                           {"optim.lr": "0.5", "optim.momentum": "0.5"})
  with pytest.raises(config_lib.ConfigMismatchError) as e:
    config_lib.check_same_run(changed, tmp_path)
  assert "optim.lr: 0.01 there, 0.5 now" in str(e.value)
  assert "optim.momentum: 0.9 there, 0.5 now" in str(e.value)
  assert config_lib.run_differences(cfg, changed) == {"optim.lr": (0.01, 0.5),
                                                      "optim.momentum": (0.9, 0.5)}
  changed.resume_check = "warn"  # logs the differences and goes on
  config_lib.check_same_run(changed, tmp_path)
  changed.resume_check = "never"
  with pytest.raises(config_lib.ConfigError, match="resume_check"):
    config_lib.check_same_run(changed, tmp_path)
  # A run written before a key existed ran with that key's default: no difference for it...
  old = json.loads((tmp_path / "config.json").read_text())
  del old["adapt"]["gamma_per_step"]
  (tmp_path / "config.json").write_text(json.dumps(old))
  config_lib.check_same_run(cfg, tmp_path)
  # ...but a new value for it is one.
  cfg.adapt.gamma_per_step = 0.001
  with pytest.raises(config_lib.ConfigMismatchError, match="gamma_per_step: 0.0 there, 0.001 now"):
    config_lib.check_same_run(cfg, tmp_path)
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(config_lib.ConfigMismatchError, match="unreadable"):
    config_lib.check_same_run(cfg, tmp_path)
