"""Sweep mode: many runs of one model trained together, as one jitted program over a run axis.

Paper tables are grids of small runs (seeds x domain pairs x hyperparameters). Runs whose configs
agree on everything that sets shapes and code paths train together: they may differ in `seed`,
`data.train` / `data.target` (datasets whose arrays have equal shapes but for the number of
examples), `evals`, and any float hyperparameter (optim.lr, adapt.lambda_max, meta.inner_lr, ...).
The train step is mapped over a leading run axis of params, optimizer state, rng, data order and
hyperparameters (`jax.vmap`, or `lax.map` with config.train.sweep_axis = "map", which is faster
for matmul-bound models on XLA:CPU), and scanned over the steps between two log, eval or checkpoint
steps, so the host dispatches once per chunk of steps rather than once per step and run.

Each run keeps its own workdir exactly as if it had trained alone: config.json, metrics.jsonl,
TensorBoard events, orbax checkpoints (the same tree and metadata, so either mode resumes the
other's checkpoints) and results.json. Run i's numbers equal its solo run's up to float rounding
(tests/test_sweep.py). A run whose loss turns non-finite stops being saved and is reported; the
others go on. A run that select.patience stops is saved and finished at its stop step, as alone;
the others go on, and the sweep ends when every run has stopped or reached train.steps. (A stopped
run's row is still computed with the others' until then: the mapped program has a fixed shape.)
Sweeps run in one process (the experiment runner starts one per group of cells).
"""
import collections
import copy
import dataclasses
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from mmjax import config as config_lib
from mmjax import data as data_lib
from mmjax import methods
from mmjax.data import episodes
from mmjax.data.pipeline import IndexStream
from mmjax.methods import maml
from mmjax.methods.inputs import example_inputs
from mmjax.train import checkpoint, meta_trainer, optim, select, steps, trainer, writers

class SweepError(ValueError):
  """These runs cannot train as one sweep (the experiment runner then runs them one by one)."""


@dataclasses.dataclass
class Run:
  config: ml_collections.ConfigDict
  workdir: pathlib.Path


def with_hparams(config, hparams: dict):
  """A copy of `config` with the fields of `hparams` (paths -> values, traced inside the sweep)."""
  if not hparams:
    return config
  out = copy.deepcopy(config)
  for path, value in hparams.items():
    *parents, leaf = path.split(".")
    node = out
    for name in parents:
      node = node[name]
    with node.ignore_type():
      node[leaf] = value
  return out


def _make_tx(config, params):
  return optim.make_optimizer(config.optim, config.train.steps, params=params, freeze=config.freeze)


def _row(tree, i):
  return jax.tree.map(lambda x: x[i], tree)


def _stack(trees):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _abstract(tree):
  """Shapes of one run's tree (the stacked tree minus its run axis), for orbax restores."""
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype, sharding=device), tree)


AXES = ("unroll", "vmap", "map")
# Runs evaluated together hold at most this many eval rows at once (runs x eval_batch).
EVAL_RUNS_ROWS = 8192


def _map_runs(fn, axis: str):
  """fn(*per-run args) over the leading run axis of every arg: "vmap" batches the runs, "map" loops
  over them (lax.map), "unroll" writes one copy of the step per run into the program."""
  if axis not in AXES:
    raise ValueError(f"unknown config.train.sweep_axis {axis!r}; use {', '.join(AXES)}")
  return lambda *args: maml.over_tasks(lambda a: fn(*a), args, axis)  # the same three ways


class _Standard:
  """The standard trainer's runs: per-run batches gathered on the device from stacked datasets."""

  scalar_prefix = None  # eval results are {eval set: metrics}

  def __init__(self, runs, hparams):
    self.runs, self.hparams = runs, hparams
    self.config = config = runs[0].config
    self.unroll = config.train.sweep_axis == "unroll"
    self.method = methods.get_method(config.method)
    self.partitioner = steps.Partitioner("jit")
    self.batch = config.data.global_batch
    self.eval_batch = -(-config.eval_batch // jax.device_count()) * jax.device_count()
    self._loaded = {}
    specs = [self.method.streams(r.config) for r in runs]
    self.data, self.uid, self.sizes, self.capacity = {}, {}, {}, {}
    for name in specs[0]:
      self._stack_stream(name, [s[name] for s in specs])
    first = self._load(*specs[0][next(iter(specs[0]))])
    self.example = (self.method.example_inputs(config, first)
                    if hasattr(self.method, "example_inputs")
                    else example_inputs(first, config.data.input_key))
    self.eval_sets = [{n: self._load(ev.dataset, ev.split) for n, ev in r.config.evals.items()}
                      for r in runs]
    self._eval_steps = {}
    self._eval_runs = None
    self._eval_batches = trainer.EvalBatches(self.partitioner, self.eval_batch)

  def _load(self, dataset, split):
    if (dataset, split) not in self._loaded:
      self._loaded[dataset, split] = data_lib.load_split(
          dataset, split, data_dir=self.config.data.dir, tfds_dir=self.config.data.tfds_dir,
          arrays_dir=self.config.data.arrays_dir)
    return self._loaded[dataset, split]

  def _stack_stream(self, name, specs):
    """The distinct datasets of stream `name`, padded to equal length, stacked and flattened."""
    unique = sorted(set(specs))
    arrays = [self._load(*u) for u in unique]
    shapes = [{k: (v.shape[1:], v.dtype) for k, v in a.items()} for a in arrays]
    if any(s != shapes[0] for s in shapes):
      raise SweepError(f"stream {name!r}: datasets {unique} differ in array shapes {shapes}")
    sizes = [len(a["label"]) for a in arrays]
    capacity = max(sizes)
    self.data[name] = {k: jnp.asarray(np.concatenate([
        np.pad(a[k], [(0, capacity - len(a[k]))] + [(0, 0)] * (a[k].ndim - 1)) for a in arrays]))
                       for k in arrays[0]}
    self.uid[name] = np.array([unique.index(s) for s in specs], np.int32)
    self.sizes[name] = [sizes[u] for u in self.uid[name]]
    self.capacity[name] = capacity

  def init(self, seeds):
    config, method, example = self.config, self.method, self.example

    def one(seed, hp):
      cfg = with_hparams(config, hp)
      params, model_state = steps.split_variables(
          method.build_model(cfg).init(jax.random.PRNGKey(seed), example, train=False))
      state = steps.new_state(params, _make_tx(cfg, params), model_state)
      return {"state": state, "rng": jax.random.PRNGKey(seed + 1)}

    return jax.jit(jax.vmap(one))(jnp.asarray(seeds), self.hparams)

  def start(self, positions):
    """Per-run index streams from the restored data positions ({stream: examples consumed})."""
    self.streams = [{name: IndexStream(self.sizes[name][i], r.config.seed + 7919 * j,
                                       positions[i].get(name, 0), order=r.config.data.order)
                     for j, name in enumerate(self.data)} for i, r in enumerate(self.runs)]

  def inputs(self, first_step, count, members):
    """Row indices of the next `count` steps of runs `members`: {stream: [runs, count, batch]};
    advances those runs' streams."""
    del first_step
    return {name: np.stack([self.streams[i][name].take(count * self.batch).reshape(
        count, self.batch) for i in members]) for name in self.data}

  def run_chunk(self, tree, hp, inputs, shared):
    """`inputs`: this run's row indices [steps, batch] per stream and its dataset ids."""
    cfg = with_hparams(self.config, hp)
    update = steps.make_update(self.method.make_loss(cfg), self.method.build_model(cfg),
                               _make_tx(cfg, tree["state"].params), cfg.train.steps)

    def body(state, idx):
      batch = {name: _gather(shared[name], inputs["uid"][name], idx[name], self.capacity[name])
               for name in shared}
      return update(state, batch, tree["rng"])

    state, metrics = _steps(body, tree["state"], inputs["idx"], self.unroll)
    return {"state": state, "rng": tree["rng"]}, metrics

  def shared(self, members):
    """Arrays every run reads (the stacked datasets) and per-run constants (dataset ids)."""
    return self.data, {"uid": {name: u[np.array(members)] for name, u in self.uid.items()}}

  def save_meta(self, i, step):
    return {"step": step, "data_position": {n: s.position for n, s in self.streams[i].items()},
            "global_batch": self.batch}

  def _eval_step(self, i):
    """Run i's model and its compiled eval step, shared by the runs of equal hyperparameters."""
    cfg = self.runs[i].config
    key = tuple(float(v[i]) for v in self.hparams.values())
    model = self.method.build_model(cfg)
    if key not in self._eval_steps:
      self._eval_steps[key] = trainer.make_eval_step(self.method, cfg, model, self.partitioner)
    return model, self._eval_steps[key]

  def _batches(self, i):
    """Run i's eval batches by eval set name, kept by (dataset, split) for all runs."""
    evals = self.runs[i].config.evals
    return lambda name, arrays: self._eval_batches((evals[name].dataset, evals[name].split),
                                                   arrays)

  def _state(self, tree):
    return jax.device_put((tree["state"].params, tree["state"].model_state),
                          self.partitioner.replicated)

  def evaluate(self, i, tree):
    """Run i's evaluation, alone (a method whose evaluation collects per-example outputs)."""
    model, eval_step = self._eval_step(i)
    params, model_state = self._state(tree)
    return trainer.evaluate(self.method, self.runs[i].config, model, params, self.eval_sets[i],
                            self.partitioner, self.eval_batch, eval_step=eval_step,
                            model_state=model_state, batches=self._batches(i))

  def check_selection(self, tree):
    """select.check_reported for the sweep's runs (they share select.metric and eval set names)."""
    cfg = self.runs[0].config
    if not cfg.select.metric:
      return
    params, model_state = self._state(_row(tree, 0))
    select.check_reported(cfg, trainer.reported_numbers(
        self.method, cfg, self._eval_step(0)[1], self.eval_sets[0], self._batches(0), params,
        model_state))

  def evaluate_runs(self, indices, tree, rows):
    """Evaluations of runs `indices` whose states are rows `rows` of `tree`.

    Runs that read the same eval sets are evaluated together: their params stacked, each batch
    kept on the devices and the runs mapped over it as config.train.sweep_axis maps them in
    training ("vmap", "map"; at most EVAL_RUNS_ROWS // eval_batch runs a call, at least one), or one
    run a call ("unroll"). The Amazon table's 5 seeds a pair share every batch.
    """
    if getattr(self.method, "EVAL_COLLECTS", False):
      return [self.evaluate(i, _row(tree, j)) for i, j in zip(indices, rows)]
    groups = collections.defaultdict(list)
    for i, j in zip(indices, rows):
      evals = self.runs[i].config.evals
      groups[tuple((n, evals[n].dataset, evals[n].split) for n in sorted(evals))].append((i, j))
    # Unrolled runs (conv models on XLA:CPU) go one a call: a call of k runs would compile k copies
    # of the model for each new k, and LeNet's evaluation gains nothing from sharing batches.
    most = 1 if self.config.train.sweep_axis == "unroll" else max(
        1, EVAL_RUNS_ROWS // self.eval_batch)
    results = {}
    for members in groups.values():
      parts = -(-len(members) // most)
      for k in range(parts):  # near-equal parts: few distinct shapes to compile
        results.update(self._evaluate_together(members[k * len(members) // parts:
                                                       (k + 1) * len(members) // parts], tree))
    return [results[i] for i in indices]

  def _evaluate_together(self, members, tree):
    """{run index: evaluation} of runs `members` ((index, row) pairs) that share eval sets."""
    if self._eval_runs is None:
      config, method, p = self.config, self.method, self.partitioner

      def runs(params, model_state, hp, batch):  # the batch shared, the runs mapped as in training
        def one(params, model_state, hp):
          cfg = with_hparams(config, hp)
          return method.make_eval(cfg)(steps.with_state(method.build_model(cfg), model_state),
                                       params, batch)
        return _map_runs(one, config.train.sweep_axis)(params, model_state, hp)

      self._eval_runs = jax.jit(runs,
                                in_shardings=(p.replicated, p.replicated, p.replicated,
                                              p.batch_sharding),
                                out_shardings=p.replicated)
    index = np.array([i for i, _ in members])
    rows = np.array([j for _, j in members])
    params, model_state, hp = jax.device_put(
        (jax.tree.map(lambda v: v[rows], (tree["state"].params, tree["state"].model_state))
         + (jax.tree.map(lambda v: v[index], self.hparams),)), self.partitioner.replicated)
    window = steps.DispatchWindow()
    first = members[0][0]
    batches = self._batches(first)
    sums = {}
    for name, arrays in self.eval_sets[first].items():
      total = None
      for batch in batches(name, arrays):
        out = self._eval_runs(params, model_state, hp, batch)
        total = out if total is None else jax.tree.map(jnp.add, total, out)
        window.push(total)
      sums[name] = total
    sums = jax.device_get(sums)
    return {i: {name: self.method.summarize_eval(jax.tree.map(lambda v, k=k: v[k], sums[name]))
                for name in sums}
            for k, (i, _) in enumerate(members)}


def _steps(body, state, xs, single: bool):
  """lax.scan of body over the leading axis of xs; with `single` (one step, no loop at all: XLA:CPU
  lowers convolutions inside loops to slow generic code) body applied to the only step."""
  if not single:
    return jax.lax.scan(body, state, xs)
  state, out = body(state, jax.tree.map(lambda v: v[0], xs))
  return state, jax.tree.map(lambda v: v[None], out)


def _gather(arrays, uid, idx, capacity):
  """One run's batch from its dataset's rows, converted as TrainIterator converts them."""
  rows = uid * capacity + idx
  batch = {}
  for key, value in arrays.items():
    value = value[rows]
    if value.dtype == jnp.uint8:
      value = value.astype(jnp.float32) / 255.0
    batch[key] = value
  batch["label"] = batch["label"].astype(jnp.int32)
  return batch


class _Meta:
  """The meta trainer's runs: each run's tasks drawn from (its seed, step), as alone."""

  scalar_prefix = "meta_test"

  def __init__(self, runs, hparams):
    self.runs, self.hparams = runs, hparams
    self.config = config = runs[0].config
    self.unroll = config.train.sweep_axis == "unroll"
    meta_trainer.check_config(config)
    self.partitioner = steps.Partitioner("jit")
    self.train_tasks = episodes.make_task_source(config, config.meta.train_split)
    self.test_tasks = episodes.make_task_source(config, config.meta.test_split)
    self.example = example_inputs(self.train_tasks.task(config.seed, 0, 0)["support"],
                                  config.data.input_key)
    self.seeds = np.array([r.config.seed for r in runs], np.int32)
    self._tests = {}

  def init(self, seeds):
    config, example = self.config, self.example
    maml.check_config(config, jax.eval_shape(
        lambda: maml.build_model(config).init(jax.random.PRNGKey(0), example, train=False))["params"])

    def one(seed, hp):
      cfg = with_hparams(config, hp)
      params = maml.build_model(cfg).init(jax.random.PRNGKey(seed), example, train=False)["params"]
      meta_params = maml.init_meta_params(cfg, params)
      return {"state": steps.new_state(meta_params, _make_tx(cfg, meta_params))}

    return jax.jit(jax.vmap(one))(jnp.asarray(seeds), self.hparams)

  def start(self, positions):
    del positions  # tasks come from (seed, step) alone

  def inputs(self, first_step, count, members):
    """Tasks of steps first_step + 1 .. + count of runs `members`: leaves [runs, count,
    meta_batch, ...]."""
    meta_batch = self.config.meta.meta_batch
    seeds = self.seeds[np.array(members)]
    # The tasks of step s are drawn from (seed, s - 1), as in the meta trainer.
    task_steps = np.arange(first_step, first_step + count, dtype=np.int32)
    if hasattr(self.train_tasks, "grid"):
      shape = (len(seeds), count, meta_batch)
      return self.train_tasks.grid(
          np.broadcast_to(seeds[:, None, None], shape),
          np.broadcast_to(task_steps[None, :, None], shape),
          np.broadcast_to(np.arange(meta_batch, dtype=np.int32), shape))
    per_run = [_stack([episodes.batch(self.train_tasks, int(seed), int(s), range(meta_batch))
                       for s in task_steps]) for seed in seeds]
    return _stack(per_run)

  def run_chunk(self, tree, hp, tasks, shared):
    del shared
    cfg = with_hparams(self.config, hp)
    update = meta_trainer.make_meta_update(maml.make_meta_grad(cfg, maml.build_model(cfg)),
                                           _make_tx(cfg, tree["state"].params))
    state, metrics = _steps(lambda s, t: update(s, t, None), tree["state"], tasks, self.unroll)
    return {"state": state}, metrics

  def shared(self, members):
    del members
    return None, {}

  def save_meta(self, i, step):
    del i
    return {"step": step, "meta_batch": self.config.meta.meta_batch}

  def _test(self, i):
    """Run i's meta-test, compiled once for the runs of equal hyperparameters."""
    cfg = self.runs[i].config
    key = tuple(float(v[i]) for v in self.hparams.values())
    if key not in self._tests:
      self._tests[key] = meta_trainer.make_meta_test(cfg, maml.build_model(cfg), self.partitioner)
    return self._tests[key]

  def evaluate(self, i, tree):
    params = jax.device_put(tree["state"].params, self.partitioner.replicated)
    return {"meta_test": self._test(i)(params, self.test_tasks)}

  def check_selection(self, tree):
    """select.check_reported for the sweep's runs, from the meta-test's output shapes."""
    cfg = self.runs[0].config
    if cfg.select.metric:
      params = jax.device_put(_row(tree, 0)["state"].params, self.partitioner.replicated)
      select.check_reported(cfg, self._test(0).reported(params, self.test_tasks))

  def evaluate_runs(self, indices, tree, rows):
    return [self.evaluate(i, _row(tree, j)) for i, j in zip(indices, rows)]


def check_runs(runs) -> None:
  """Raises SweepError unless these runs can train as one sweep."""
  keys = {config_lib.sweep_key(r.config) for r in runs}
  if None in keys:
    raise SweepError("a run's config cannot sweep (trainer standard or meta, parallel jit, no "
                     "init_from)")
  if len(keys) > 1:
    raise SweepError("the runs' configs differ in fields other than seed, datasets, evals and "
                     "float hyperparameters")
  if jax.process_count() > 1:
    raise SweepError("sweeps run in one process; launch multi-process runs one at a time")
  if len({str(r.workdir) for r in runs}) != len(runs):
    raise SweepError("two runs of a sweep share a workdir")


def train_runs(runs) -> list:
  """Trains `runs` as one sweep; returns each run's results (as trainer.train_and_evaluate's),
  None for a run that failed, or {"preempted": True, ...} after SIGTERM."""
  check_runs(runs)
  for r in runs:
    select.check(r.config)
  results = [trainer.finished_results(pathlib.Path(r.workdir), r.config) for r in runs]
  todo = [i for i, res in enumerate(results) if res is None]
  if not todo:
    return results
  runs_todo = [runs[i] for i in todo]
  for r in runs_todo:
    pathlib.Path(r.workdir).mkdir(parents=True, exist_ok=True)
    config_lib.write_json(r.config, pathlib.Path(r.workdir) / "config.json")
  for i, res in zip(todo, _Sweep(runs_todo).train()):
    results[i] = res
  return results


class _Sweep:
  """The loop of one sweep: restore, chunks of steps, logs, evals, checkpoints, results."""

  def __init__(self, runs):
    self.runs = runs
    self.config = runs[0].config
    self.start_time = time.time()
    hparams = config_lib.varying_floats([r.config for r in runs])
    if hparams:
      logging.info("sweep hyperparameters per run: %s", hparams)
    kind = _Meta if self.config.trainer == "meta" else _Standard
    self.kind = kind(runs, {k: jnp.asarray(v, jnp.float32) for k, v in hparams.items()})
    self.chunk = jax.jit(self._chunk, donate_argnums=0)

  def _chunk(self, tree, per_run, inputs, shared):
    """Every run's steps; per_run = (float hyperparameters, constants), each [runs] leading."""
    def one(t, hp, constants, i):
      return self.kind.run_chunk(t, hp, {"idx": i, **constants} if constants else i, shared)
    return _map_runs(one, self.config.train.sweep_axis)(tree, *per_run, inputs)

  def _run_steps(self, tree, per_run, inputs, shared, count):
    """`count` steps of every run: one call, or with "unroll" one call per step (XLA:CPU runs
    convolutions inside loops ~30x slower than outside, so that mode keeps steps out of loops)."""
    if not self.kind.unroll:
      tree, metrics = self.chunk(tree, per_run, inputs, shared)
      return tree, jax.device_get(metrics)
    parts = []
    for k in range(count):
      tree, metrics = self.chunk(tree, per_run, jax.tree.map(lambda v: v[:, k:k + 1], inputs),
                                 shared)
      parts.append(metrics)
    return tree, jax.tree.map(lambda *v: np.concatenate(v, axis=1), *jax.device_get(parts))

  def train(self):
    tree = self.kind.init(np.array([r.config.seed for r in self.runs], np.int32))
    self.kind.check_selection(tree)
    trees, starts, positions, walls, stops = [], [], [], [], {}
    for i, run in enumerate(self.runs):
      restored = checkpoint.Checkpointer(run.workdir, self.config.checkpoint.keep)
      got = restored.restore_latest(_abstract(tree))
      restored.close()
      trees.append(got[0] if got else _row(tree, i))
      positions.append(got[1].get("data_position", {}) if got else {})
      walls.append(got[1]["wall_time_s"] if got else 0.0)
      starts.append(got[1]["step"] if got else 0)
      early, final = trainer.stopped_at(got[1] if got else {}, run.config)
      if early is not None:  # select.patience stopped it there (killed before results.json)
        stops[i] = early, final
    self.kind.start(positions)
    self.walls = walls
    results = [None] * len(self.runs)
    for i, (early, final) in stops.items():
      selector = select.Selector(self.runs[i].workdir, self.runs[i].config, starts[i], stopped=True)
      results[i] = self._results(i, final, {}, len(self.runs), i, selector, early)
    starts_todo = {starts[i] for i in range(len(self.runs)) if i not in stops}
    if len(starts_todo) > 1:  # runs restored at different steps train in turn, each group a sweep
      logging.info("runs restored at steps %s; training them group by group", starts)
    preempted = False
    for start in sorted(starts_todo):
      members = [i for i, s in enumerate(starts) if s == start and i not in stops]
      if preempted:  # a SIGTERM during an earlier group: the later groups wait for the restart
        out = [{"preempted": True, "step": start}] * len(members)
      else:
        out = self._train_group(members, _stack([trees[i] for i in members]), start)
      for i, res in zip(members, out):
        results[i] = res
        preempted = preempted or bool(res and res.get("preempted"))
    return results

  def _train_group(self, members, tree, start):
    config, kind = self.config, self.kind
    total, log_every = config.train.steps, config.train.log_every
    boundaries = [log_every, config.checkpoint.every] + ([config.eval_every] if config.eval_every
                                                         else [])
    hparams = jax.tree.map(lambda v: v[np.array(members)], kind.hparams)
    alive = [True] * len(members)  # False: a non-finite loss, or stopped by select.patience
    stopped = {}  # row: results of a run that select.patience stopped
    sums = [collections.defaultdict(float) for _ in members]
    counts = [0] * len(members)
    values = [{} for _ in members]
    preemption = trainer.Preemption()
    selectors = [select.Selector(self.runs[i].workdir, self.runs[i].config, start)
                 for i in members]
    shared, constants = kind.shared(members)

    def evaluate_live(tree):
      """{row: evaluation} of the group's runs still training (finite loss, not stopped)."""
      live = [j for j in range(len(members)) if alive[j]]
      return dict(zip(live, kind.evaluate_runs([members[j] for j in live], tree, live)))

    def log_train(j, step):
      values[j] = {f"train/{k}": v / counts[j] for k, v in sums[j].items()}
      outs[j].scalars(step, values[j])
      sums[j], counts[j] = collections.defaultdict(float), 0
    step = start
    outs = []  # every run's writers, closed by the finally below
    try:
      outs.extend(writers.Writers(pathlib.Path(self.runs[i].workdir), total, start, log_every)
                  for i in members)
      while step < total and any(alive):
        end = min([total] + [(step // b + 1) * b for b in boundaries])
        inputs = kind.inputs(step, end - step, members)
        tick = time.time()
        tree, metrics = self._run_steps(tree, (hparams, constants), inputs, shared, end - step)
        logging.info("sweep of %d runs: steps %d-%d at %.1f steps/s per run", len(members),
                     step + 1, end, (end - step) / (time.time() - tick))
        step = end
        for j, i in enumerate(members):
          if not alive[j]:
            continue
          row = {k: np.asarray(v[j], np.float64) for k, v in metrics.items()}
          if not np.all(np.isfinite(row["loss"])):
            alive[j] = False
            bad = step - len(row["loss"]) + 1 + int(np.argmin(np.isfinite(row["loss"])))
            self._note(i, f"non-finite loss at step {bad}; this run stopped (the other runs of "
                          "the sweep went on). Lower optim.lr or add optim.grad_clip_norm.")
            continue
          for k, v in row.items():
            sums[j][k] += float(v.sum())
          counts[j] += len(row["loss"])
          if step % log_every == 0 or step == total:
            log_train(j, step)
          outs[j].step(step)  # steps/s (the sweep's, every run advancing with it) and the bar
        if config.eval_every and step % config.eval_every == 0 and step != total:
          for j, ev in evaluate_live(tree).items():
            outs[j].scalars(step, _scalars(ev))
            selectors[j].update(step, ev, lambda: _row(tree, j))
            if selectors[j].exhausted():  # select.patience: this run stops here, the others go on
              i, early = members[j], selectors[j].stop_entry()
              trainer.save_stop(step, self.runs[i].config, early, ev,
                                lambda s, j=j: log_train(j, s),
                                lambda s, j=j, i=i, **extra: self._save(i, s, _row(tree, j),
                                                                          **extra))
              outs[j].close()  # its events flushed before its results.json says it is finished
              stopped[j] = self._results(i, ev, values[j], len(members), j, selectors[j], early)
              alive[j] = False
        stop = preemption.requested and step != total
        if step % config.checkpoint.every == 0 or step == total or stop:
          for j, i in enumerate(members):
            if alive[j]:
              self._save(i, step, _row(tree, j))
        if stop:
          logging.warning("preempted: saved step %d of %d runs; run the same command to resume",
                          step, sum(alive))
          return [stopped.get(j, {"preempted": True, "step": step}) for j in range(len(members))]
      finals = evaluate_live(tree) if any(alive) else {}
      results = []
      for j, i in enumerate(members):
        if not alive[j]:
          results.append(stopped.get(j))
          continue
        final = finals[j]
        outs[j].scalars(total, _scalars(final))
        selectors[j].update(total, final, lambda: _row(tree, j))
        results.append(self._results(i, final, values[j], len(members), j, selectors[j]))
      return results
    finally:
      preemption.restore()
      for out in outs:
        out.close()

  def _save(self, i, step, tree, **extra):
    run = self.runs[i]
    ckpt = checkpoint.Checkpointer(run.workdir, self.config.checkpoint.keep)
    try:
      ckpt.save(step, tree, {**self.kind.save_meta(i, step),
                             "wall_time_s": self.walls[i] + time.time() - self.start_time,
                             **extra})
    finally:
      ckpt.close()

  def _note(self, i, text):
    logging.error("run %s: %s", self.runs[i].workdir, text)
    with (pathlib.Path(self.runs[i].workdir) / "sweep_errors.txt").open("a") as f:
      f.write(text + "\n")

  def _results(self, i, final, values, size, index, selector, early=None):
    run = self.runs[i]
    return trainer.write_results(
        run.config, pathlib.Path(run.workdir), final, values,
        self.walls[i] + time.time() - self.start_time,
        sweep={"runs": size, "index": index, "axis": run.config.train.sweep_axis},
        **trainer.selected_entry(selector), **trainer.early_entry(early))


def _scalars(evaluation: dict) -> dict:
  return {f"{name}/{k}": v for name, metrics in evaluation.items() for k, v in metrics.items()}
