"""Experiment configs: the engine's defaults, loading `path.py:arg`, overrides, and key checking.

Every config in `configs/` starts from `base_config()` and is returned locked, so a misspelled key
(in a config file or on the command line) stops the run before any work is done.
"""
import ast
import dataclasses
import difflib
import importlib.util
import json
import pathlib

import ml_collections
from absl import logging


class ConfigError(ValueError):
  """A config or an override names a key that does not exist, or has a value of the wrong type."""


def base_config() -> ml_collections.ConfigDict:
  """Every key the engine reads, with its default. Configs override fields; they add none."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.trainer = "standard"           # mmjax.train registry: the loop that runs the method
  c.method = "supervised"          # mmjax.methods registry
  c.parallel = "jit"               # "jit" (NamedSharding over a mesh) or "pmap"
  c.dtype = "float32"              # compute dtype of the model; params stay float32

  c.model = ml_collections.ConfigDict()
  c.model.name = "lenet"           # mmjax.models registry
  c.model.num_classes = 10

  c.data = ml_collections.ConfigDict()
  c.data.dir = None                # raw files; default $MMJAX_DATA_DIR, then ~/mmjax_data
  c.data.tfds_dir = None           # prepared tfds data; default $MMJAX_TFDS_DIR, then ~/tensorflow_datasets
  c.data.arrays_dir = None         # exported arrays (python -m mmjax.data.export), read before tfds;
                                   #   default $MMJAX_ARRAYS_DIR; with them, no TensorFlow needed
  c.data.order = "tf"              # training example order: "tf" (TF's stateless shuffle, computed in
                                   #   numpy) or "numpy" (numpy's Philox); each epoch a permutation
                                   #   drawn from (seed, epoch)
  c.data.train = "mnist"           # dataset trained on
  c.data.input_key = "image"       # the batch entry the model reads ("image", "features")
  c.data.train_split = "train"
  c.data.target = ""               # unlabelled target dataset of adaptation methods (dann)
  c.data.target_split = "train"
  c.data.global_batch = 128        # per stream, summed over all devices of all processes

  c.evals = ml_collections.ConfigDict()   # name -> ConfigDict(dataset, split)
  c.eval_every = 0                 # steps between evaluations; 0: only at the end
  c.eval_batch = 1000
  c.select = ml_collections.ConfigDict()  # checkpoint selection (mmjax/train/select.py)
  c.select.metric = ""             # "<eval set>/<number>" (e.g. "source_val/accuracy"): results.json
                                   #   gets "selected", the evaluation of the best step; "": off
  c.select.mode = "max"            # max | min (e.g. a loss); ties go to the earlier step
  c.select.keep_weights = True     # that step's train state in workdir/best/checkpoints
  c.select.patience = 0            # > 0: stop the run once this many evaluations in a row have not
                                   #   beaten the best (early stopping; results.json "step" is the
                                   #   stop step, "stopped_early" says so); 0: train every step

  c.adapt = ml_collections.ConfigDict()  # domain adaptation (method dann)
  c.adapt.gamma = 10.0             # reversal strength lambda_p =
  c.adapt.lambda_max = 1.0         #   lambda_max * (2 / (1 + exp(-gamma p)) - 1), p = progress, with
  c.adapt.gamma_per_step = 0.0     #   gamma + gamma_per_step * train.steps in place of gamma (so with
                                   #   gamma 0: 2 / (1 + exp(-gamma_per_step i)) - 1 at step i)
  c.adapt.domain_hidden = 1024     # domain classifier: domain_layers x domain_hidden, ReLU
  c.adapt.domain_layers = 2
  c.adapt.domain_norm = False      # batch norm before each domain-classifier ReLU (running averages)
  c.adapt.domain_init = "flax"     # domain classifier's initialisers: flax | torch (mmjax.models.inits)
  c.adapt.randomized = False       # cdan: randomized map (R_f f) * (R_g g) / sqrt(d) instead of f x g
  c.adapt.randomized_dim = 1024    # cdan: d, the randomized map's size (R_f, R_g fixed by c.seed)
  c.adapt.mmd_weight = 1.0         # dan: loss = class loss + mmd_weight * MK-MMD^2(features)
  c.adapt.mmd_estimator = "unbiased"  # dan: unbiased (i != j pairs) | biased (all pairs)
  c.adapt.kernel_mul = 2.0         # dan: Gaussian bandwidths b * kernel_mul^(k - kernel_num // 2),
  c.adapt.kernel_num = 5           #   k < kernel_num, b the mean squared distance in the batch

  c.vqa = ml_collections.ConfigDict()  # visual question answering (method vqa)
  c.vqa.questions_per_image = 1    # training pairs per image and step, drawn without replacement
  c.vqa.question_types = ()        # names of the dataset's `question_type` ids: eval accuracy per type

  c.meta = ml_collections.ConfigDict()  # meta-learning (trainer "meta", method "maml")
  c.meta.algorithm = "maml"        # maml | fomaml (first order) | anil (adapt the head only) |
                                   #   metasgd (learned per-parameter inner lr) | reptile
  c.meta.dataset = "omniglot"      # "sinusoid", or a labelled dataset of mmjax.data (episodes)
  c.meta.train_split = "train"     # split the training tasks come from
  c.meta.test_split = "test"       # split the meta-test tasks come from
  c.meta.rotate_classes = False    # rotations by 90, 180, 270 degrees are new classes (Omniglot)
  c.meta.ways = 5                  # N classes per task (ignored by sinusoid)
  c.meta.shots = 1                 # K support examples per class (per task for sinusoid)
  c.meta.queries = 15              # Q query examples per class (per task for sinusoid)
  c.meta.inner_steps = 1           # gradient steps on the support set while meta-training
  c.meta.inner_lr = 0.4            # alpha; Meta-SGD's initial per-parameter rate
  c.meta.test_inner_steps = 3      # steps at meta-test; every step count up to it is reported
  c.meta.meta_batch = 32           # tasks per meta-update, summed over all devices
  c.meta.test_tasks = 600          # meta-test tasks (mean and 95% confidence interval)
  c.meta.test_seed = 0             # meta-test tasks come from (test_seed, index): same for all runs
  c.meta.loss = "cross_entropy"    # cross_entropy (classification) | mse (regression)
  c.meta.head = "head"             # anil: params under this top-level name are adapted
  c.meta.task_map = "vmap"         # how a meta-batch's tasks run in the step: vmap | map (lax.map)
                                   # | unroll (one copy per task); the same math

  c.train = ml_collections.ConfigDict()
  c.train.steps = 1000
  c.train.log_every = 50
  c.train.sweep_axis = "unroll"    # sweep mode: one copy of the step per run, one call per step
                                   # (safe default); "vmap" batches runs (tiny models), "map" loops
                                   # them in lax.map. XLA:CPU runs convs in loops or vmapped ~30x
                                   # slower (benchmarks/README.md, "Sweeps")

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "sgd"             # sgd | adam | adamw
  c.optim.lr = 0.01
  c.optim.momentum = 0.9           # sgd only; 0 disables it
  c.optim.nesterov = False
  c.optim.weight_decay = 0.0
  c.optim.schedule = "constant"    # constant | cosine | warmup_cosine | dann
  c.optim.warmup_steps = 0
  c.optim.decay_alpha = 10.0       # "dann": lr / (1 + alpha p)^beta, p = step / train.steps, with
  c.optim.decay_per_step = 0.0     #   alpha = decay_alpha + decay_per_step * train.steps (so with
                                   #   decay_alpha 0: lr (1 + decay_per_step i)^-beta at step i,
                                   #   Caffe's "inv" policy, whatever train.steps is)
  c.optim.decay_beta = 0.75
  c.optim.grad_clip_norm = 0.0     # 0 disables clipping

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every = 500         # steps; the last step is always saved
  c.checkpoint.keep = 3

  c.resume_check = "error"         # a workdir holding checkpoints or results of a different config:
                                   #   "error" stops, "warn" logs the differing fields and goes on
                                   #   (e.g. runs written before a config's recipe was refactored)

  c.init_from = ml_collections.ConfigDict()
  c.init_from.workdir = ""         # another run's workdir; "" disables
  c.init_from.step = -1            # -1: its latest checkpoint
  c.init_from.include = ".*"       # regex over param paths ("Conv_0/kernel") to copy
  c.freeze = ""                    # regex over param paths kept fixed; "" freezes nothing
  return c


def _nearest(key: str, candidates) -> str:
  close = difflib.get_close_matches(key, list(candidates), n=3, cutoff=0.5)
  return ", ".join(close) if close else ", ".join(sorted(candidates))


def _all_paths(cfg, prefix=""):
  for k, v in cfg.items():
    path = f"{prefix}{k}"
    yield path
    if isinstance(v, ml_collections.ConfigDict):
      yield from _all_paths(v, path + ".")


def _parse_value(text: str, current):
  """Parses a command-line value as the type of the field it replaces."""
  if isinstance(current, bool):
    if text.lower() in ("true", "1", "yes"):
      return True
    if text.lower() in ("false", "0", "no"):
      return False
    raise ConfigError(f"expected true or false, got {text!r}")
  if isinstance(current, int):
    return int(text)
  if isinstance(current, float):
    return float(text)
  if isinstance(current, str):
    return text
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def override(cfg: ml_collections.ConfigDict, key: str, text: str) -> None:
  """Sets `cfg.<key>` (dotted) from a command-line string, naming the nearest keys if it is unknown."""
  parts = key.split(".")
  if len(parts) == 2 and parts[0] == "model" and parts[1] not in cfg.model:
    _add_model_field(cfg, parts[1], text)
    return
  node = cfg
  for i, part in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      where = ".".join(parts[:i]) or "the config"
      options = node.keys() if isinstance(node, ml_collections.ConfigDict) else []
      prefix = ".".join(parts[:i]) + "." if i else ""
      raise ConfigError(
          f"unknown config key {key!r}: {where} has no field {part!r}. "
          f"Nearest valid keys: {', '.join(prefix + o for o in _nearest(part, options).split(', '))}")
    if i < len(parts) - 1:
      node = node[part]
  current = node[parts[-1]]
  if isinstance(current, ml_collections.ConfigDict):
    raise ConfigError(f"config key {key!r} is a group; set one of its fields: "
                      f"{', '.join(key + '.' + k for k in current.keys())}")
  try:
    node[parts[-1]] = _parse_value(text, current)
  except (ValueError, TypeError) as e:
    raise ConfigError(f"bad value {text!r} for config key {key!r} "
                      f"(currently {current!r}): {e}") from None


def _add_model_field(cfg: ml_collections.ConfigDict, field: str, text: str) -> None:
  """`model.<field>` for a hyperparameter the config leaves at the model's default: allowed when
  the model (mmjax.models registry) has that field, parsed against the field's default."""
  fields = _model_fields(cfg.model.get("name"))
  if field not in fields:
    raise ConfigError(
        f"unknown config key 'model.{field}': neither the config nor model "
        f"{cfg.model.get('name')!r} has it. Nearest valid keys: "
        f"{', '.join('model.' + o for o in _nearest(field, sorted(set(cfg.model.keys()) | set(fields))).split(', '))}")
  default = fields[field].default
  if default is dataclasses.MISSING:
    raise ConfigError(f"model.{field} has no default to parse {text!r} against; set it in the config")
  try:
    if isinstance(default, tuple):  # "20,50" or "(20, 50)" or "image,audio"; one value: (value,)
      try:
        value = ast.literal_eval(text)
      except (ValueError, SyntaxError):
        value = tuple(part.strip() for part in text.split(","))
      value = list(value) if isinstance(value, (list, tuple)) else [value]
    else:
      value = _parse_value(text, default)
  except (ValueError, TypeError) as e:
    raise ConfigError(f"bad value {text!r} for config key 'model.{field}' "
                      f"(model default {default!r}): {e}") from None
  with cfg.unlocked():
    cfg.model[field] = value


def check_keys(cfg: ml_collections.ConfigDict) -> None:
  """Rejects keys a config file added that the engine does not know (configs must start from base)."""
  known = set(_all_paths(base_config()))
  for path in _all_paths(cfg):
    top = path.split(".")[0]
    if top in ("evals", "model") and path.count(".") >= 1:
      continue  # free-form groups: eval names, model hyperparameters (checked by the model)
    if path not in known:
      parent, _, leaf = path.rpartition(".")
      siblings = [p.rpartition(".")[2] for p in known if p.rpartition(".")[0] == parent]
      raise ConfigError(f"unknown config key {path!r}. Nearest valid keys: "
                        f"{_nearest(leaf, siblings)}")


def load_module(path):
  """Imports a config file as a module (for get_config, and sweep() for the experiment runner)."""
  file = pathlib.Path(path)
  if not file.is_file():
    raise ConfigError(f"config file {path!r} does not exist (expected e.g. configs/digits.py:mnist_usps)")
  module_spec = importlib.util.spec_from_file_location(f"mmjax_config_{file.stem}", file)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def load(spec: str) -> ml_collections.ConfigDict:
  """Loads `path/to/config.py[:arg]` by calling its `get_config(arg)`; returns it locked."""
  path, _, arg = spec.partition(":")
  module = load_module(path)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"{path} has no get_config(arg=None)")
  cfg = module.get_config(arg or None)
  check_keys(cfg)
  cfg.lock()
  return cfg


def load_with_overrides(spec: str, overrides: dict) -> ml_collections.ConfigDict:
  """load(spec) with command-line overrides applied; model.name first, since which model.<field>
  keys exist depends on it."""
  cfg = load(spec)
  for key, text in sorted(overrides.items(), key=lambda kv: kv[0] != "model.name"):
    override(cfg, key, text)
  check_values(cfg)
  return cfg


def check_values(cfg: ml_collections.ConfigDict) -> None:
  """Values the engine can check before building anything: the initialiser schemes."""
  from mmjax.models import inits  # noqa: PLC0415
  for key, value in (("adapt.domain_init", cfg.adapt.get("domain_init")),
                     ("model.param_init", cfg.model.get("param_init"))):
    if value is not None and value not in inits.SCHEMES:
      raise ConfigError(f"{key}={value!r}: expected one of {', '.join(inits.SCHEMES)}")


def write_json(cfg: ml_collections.ConfigDict, path: pathlib.Path) -> None:
  path.write_text(json.dumps(json.loads(cfg.to_json_best_effort()), indent=2, sort_keys=True) + "\n")


def from_workdir(workdir) -> ml_collections.ConfigDict:
  """The resolved config a run wrote to `workdir/config.json` (lists stand for tuples).

  Keys the engine gained after the run was written take their defaults, which keep the old
  behaviour (e.g. data.order "tf", adapt.gamma_per_step 0), so older runs still load for analysis.
  """
  path = pathlib.Path(workdir) / "config.json"
  if not path.exists():
    raise FileNotFoundError(f"{path} does not exist: {workdir} is not an mmjax run's workdir")
  return ml_collections.ConfigDict(_fill_missing(json.loads(path.read_text()),
                                                 base_config().to_dict()))


def _fill_missing(loaded: dict, defaults: dict) -> dict:
  for key, value in defaults.items():
    if key not in loaded:
      loaded[key] = value
    elif isinstance(value, dict) and isinstance(loaded[key], dict):
      _fill_missing(loaded[key], value)
  return loaded


# Fields a run may change between its starts in one workdir: where files live, how often it logs,
# evaluates and saves, what it evaluates, how it is laid out on devices (jit or pmap, alone or in a
# sweep, a meta-batch's tasks vmapped, mapped or unrolled: the same math), and train.steps (to extend a finished run; schedules that depend on it change from the
# resumed step on). Any other change makes it a different run, which must not resume this one's
# checkpoint or take its results.
RESUME_FREE_FIELDS = ("data.dir", "data.tfds_dir", "data.arrays_dir", "eval_every", "eval_batch",
                      "evals", "train.log_every", "train.sweep_axis", "train.steps", "parallel",
                      "checkpoint", "meta.test_tasks", "meta.test_inner_steps", "meta.task_map",
                      "resume_check")


class ConfigMismatchError(ConfigError):
  """A workdir holds a run (checkpoints or results) of a different config than the one given."""


def _model_fields(name) -> dict:
  """{field name: dataclasses.Field} of the hyperparameters of registered model `name` (none for an
  unknown name): its dataclass fields but flax's parent and name and the config-wide dtype."""
  from mmjax import models  # noqa: PLC0415 (configs load without the models otherwise)
  cls = models.MODELS.get(name)
  if cls is None:
    return {}
  return {f.name: f for f in dataclasses.fields(cls) if f.name not in ("parent", "name", "dtype")}


def _model_defaults(name) -> dict:
  """{"model.<field>": default} of a registered model's hyperparameters (a config that leaves one
  out runs with that default)."""
  return {f"model.{k}": list(f.default) if isinstance(f.default, tuple) else f.default
          for k, f in _model_fields(name).items() if f.default is not dataclasses.MISSING}


def run_differences(stored: ml_collections.ConfigDict, cfg: ml_collections.ConfigDict) -> dict:
  """{field path: (stored value, new value)} for the fields outside RESUME_FREE_FIELDS that differ.

  Fields only one side has are compared with their base_config default (a run written before a
  key existed behaved as its default).
  """
  free = lambda path: any(path == f or path.startswith(f + ".") for f in RESUME_FREE_FIELDS)
  old, new = flat_fields(stored), flat_fields(cfg)
  defaults = {**_model_defaults(cfg.model.get("name")), **flat_fields(base_config())}
  missing = object()
  out = {}
  for path in sorted(set(old) | set(new)):
    if free(path):
      continue
    a, b = old.get(path, defaults.get(path, missing)), new.get(path, defaults.get(path, missing))
    if a != b:
      out[path] = (None if a is missing else a, None if b is missing else b)
  return out


def run_finished(results: dict, config, default_step=None) -> bool:
  """Whether a results.json is of a run that is done under `config`: it reached train.steps, or
  select.patience stopped it at or before them. `default_step`: the step of results without one."""
  step = results.get("step", default_step)
  return step == config.train.steps or (
      "stopped_early" in results and step is not None and step <= config.train.steps)


def check_same_run(cfg: ml_collections.ConfigDict, workdir) -> None:
  """Raises ConfigMismatchError when `workdir` already holds a checkpoint or results of a run
  whose config.json differs from `cfg` outside RESUME_FREE_FIELDS; a workdir without either (a run
  that stopped before its first save) may be reused freely."""
  if cfg.resume_check not in ("error", "warn"):
    raise ConfigError(f"resume_check={cfg.resume_check!r}: expected 'error' or 'warn'")
  workdir = pathlib.Path(workdir)
  checkpoints = workdir / "checkpoints"
  started = (workdir / "results.json").exists() or (
      checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir()))
  if not started or not (workdir / "config.json").exists():
    return
  try:
    stored = from_workdir(workdir)
  except (json.JSONDecodeError, ValueError) as e:
    raise ConfigMismatchError(
        f"{workdir / 'config.json'} is unreadable ({e}), so this workdir's checkpoints cannot be "
        "matched to a config: use a new --workdir, or delete this one to start over") from e
  diffs = [f"{k}: {a!r} there, {b!r} now" for k, (a, b) in run_differences(stored, cfg).items()]
  if diffs and cfg.resume_check == "warn":
    logging.warning("%s holds a run of a different config; going on as resume_check='warn' asks: %s",
                    workdir, "; ".join(diffs))
  elif diffs:
    listed = "; ".join(diffs[:8])
    more = f" (and {len(diffs) - 8} more)" if len(diffs) > 8 else ""
    raise ConfigMismatchError(
        f"{workdir} holds a run of a different config ({listed}{more}). Resuming it would mix "
        "two runs and reusing its results would mislabel them: use a new --workdir, or delete "
        "this one to start over (or set resume_check='warn' to go on anyway). Fields that may "
        "change between starts: "
        f"{', '.join(RESUME_FREE_FIELDS)}.")


# Sweep mode (mmjax/train/sweep.py): fields that may differ between the runs of one sweep, besides
# float hyperparameters and the eval sets.
SWEEP_FREE_FIELDS = ("seed", "data.train", "data.target")


def flat_fields(cfg: ml_collections.ConfigDict) -> dict:
  """{"a.b.c": value} for every leaf of the config, as its JSON form gives it."""
  def flat(tree, prefix=""):
    out = {}
    for key, value in tree.items():
      if isinstance(value, dict):
        out.update(flat(value, f"{prefix}{key}."))
      else:
        out[f"{prefix}{key}"] = value
    return out
  return flat(json.loads(cfg.to_json_best_effort()))


def sweep_key(cfg: ml_collections.ConfigDict):
  """Configs with equal keys can train as one sweep; None when this config cannot sweep at all.

  Runs of a sweep may differ in seed, data.train / data.target (datasets of equal array shapes),
  evals and any float field; everything else (shapes, steps, code paths) must be equal.
  """
  if cfg.trainer not in ("standard", "meta") or cfg.parallel != "jit" or cfg.init_from.workdir:
    return None
  key = {path: "<float>" if isinstance(value, float) else value
         for path, value in flat_fields(cfg).items()
         if path not in SWEEP_FREE_FIELDS and not path.startswith("evals.")}
  return json.dumps(key, sort_keys=True)


def varying_floats(configs) -> dict:
  """{field path: [value per config]} for the float fields whose values differ between configs."""
  fields = [flat_fields(c) for c in configs]
  return {path: [f[path] for f in fields] for path, value in fields[0].items()
          if isinstance(value, float) and any(f[path] != value for f in fields)}
