"""The train loop: resume, input, model, sharding, update, checkpoints, evaluation, results.

`train_and_evaluate(config, workdir)` is the whole of a run. It is safe to call again on the same
workdir after any stop: it resumes from the newest good checkpoint, or returns a finished run's results.
"""
import functools
import itertools
import json
import pathlib
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

import mmjax
from mmjax import config as config_lib
from mmjax import data as data_lib
from mmjax import methods
from mmjax.methods.inputs import example_inputs
from mmjax.train import checkpoint, optim, select, steps, transfer, writers


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or infinite; the run stopped without overwriting good checkpoints."""


class Preemption:
  """Turns SIGTERM (how cloud TPUs and SLURM announce preemption) into a flag the loop polls."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving a checkpoint and exiting")
    self.requested = True

  def agreed(self, step: int, every: int) -> bool:
    """All processes must stop at the same step; they compare flags every `every` steps."""
    if jax.process_count() == 1:
      return self.requested
    if step % every:
      return False
    flags = multihost_utils.process_allgather(np.array(self.requested))
    return bool(np.any(flags))

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


def finished_results(workdir: pathlib.Path, config):
  """The results of `workdir`'s run when it finished config.train.steps, else None; a workdir that
  holds another config's run raises (config.check_same_run)."""
  config_lib.check_same_run(config, workdir)
  path = workdir / "results.json"
  if not path.exists():
    return None
  try:
    results = json.loads(path.read_text())
  except json.JSONDecodeError:
    logging.warning("%s is unreadable; the run's evaluation will be redone", path)
    return None
  return results if config_lib.run_finished(results, config) else None


def load_eval_sets(config):
  return {name: data_lib.load_split(ev.dataset, ev.split, data_dir=config.data.dir,
                                    tfds_dir=config.data.tfds_dir,
                                    arrays_dir=config.data.arrays_dir)
          for name, ev in config.evals.items()}


def make_eval_step(method, config, model, partitioner):
  """eval_step(params, global batch, model_state) -> the method's eval outputs, compiled for the
  mesh; model_state (batch norm averages, {} for most models) is the TrainState's."""
  eval_fn = method.make_eval(config)
  return jax.jit(lambda params, batch, model_state: eval_fn(steps.with_state(model, model_state),
                                                            params, batch),
                 in_shardings=(partitioner.replicated, partitioner.batch_sharding,
                               partitioner.replicated),
                 out_shardings=partitioner.replicated)


# Eval batches kept on the devices between evaluations, at most this many bytes in all (per
# process); a set that would go past it is cut and sent again at each evaluation.
EVAL_CACHE_BYTES = 1 << 30


class EvalBatches:
  """Each eval set's global batches (masked, padded, converted), built once and kept on the devices.

  Cutting a split into batches and sending them costs ~22 ms of a 71 ms evaluation of the Amazon
  network's three eval sets (8,451 rows of 5000 floats) on the 2-core CPU; a run that evaluates every
  100 steps paid it 30 times. Sets are kept in the order they are first asked for while the kept
  batches' bytes (as sent: padded, and uint8 images as float32) stay within EVAL_CACHE_BYTES; the
  others are streamed each time.
  """

  def __init__(self, partitioner, batch_size: int):
    self.partitioner, self.batch_size = partitioner, batch_size
    self._kept, self.kept_bytes = {}, 0

  def __call__(self, key, arrays):
    if key in self._kept:
      return self._kept[key]
    local = data_lib.eval_batches(arrays, global_batch=self.batch_size,
                                  process_index=jax.process_index(),
                                  process_count=jax.process_count())
    first = next(local, None)
    if first is None:  # an empty split: no batches
      return []
    count = -(-len(arrays["label"]) // self.batch_size)
    size = count * sum(np.asarray(v).nbytes for v in first.values())
    batches = (self.partitioner.global_batch(b) for b in itertools.chain([first], local))
    if self.kept_bytes + size > EVAL_CACHE_BYTES:
      return batches
    self._kept[key] = list(batches)
    self.kept_bytes += size
    return self._kept[key]


def evaluate(method, config, model, params, eval_sets, partitioner, batch_size, eval_step=None,
             model_state=None, batches=None):
  """Full passes over every eval set; returns {name: {accuracy, loss, n}}.

  `eval_step` (from make_eval_step) lets many evaluations and runs of one model share one compiled
  eval step (without it, each call compiles its own). `model_state` is the TrainState's (None: the
  model has none). `batches` (an EvalBatches) keeps the eval sets' batches on the devices between
  calls; they are keyed by eval set name.
  """
  model_state = model_state or {}
  eval_step = eval_step or make_eval_step(method, config, model, partitioner)
  batches = batches or EvalBatches(partitioner, batch_size)
  results = {}
  window = steps.DispatchWindow()
  collect = getattr(method, "EVAL_COLLECTS", False)
  for name, arrays in eval_sets.items():
    sums, parts = None, []
    for batch in batches(name, arrays):
      out = eval_step(params, batch, model_state)
      if collect:  # per-example outputs of the global batch, replicated: keep the real rows
        out = jax.device_get(out)
        parts.append({k: v[out["mask"] > 0] for k, v in out.items() if k != "mask"})
        continue
      sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
      window.push(sums)
    if collect:
      results[name] = method.summarize_eval(
          {k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
    else:
      results[name] = method.summarize_eval(jax.device_get(sums))
  return results


def reported_numbers(method, config, eval_step, eval_sets, batches, params, model_state=None):
  """The numbers config.select.metric's eval set reports, from the eval step's output shapes (no
  evaluation runs); None when selection is off or the method's summary needs real outputs."""
  if not config.select.metric:
    return None
  name = config.select.metric.partition("/")[0]
  if name not in eval_sets:
    return None
  batch = next(iter(batches(name, eval_sets[name])), None)
  if batch is None:  # an empty split: its numbers come from its first evaluation
    return None
  shapes = jax.eval_shape(eval_step, params, batch, model_state or {})
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  if getattr(method, "EVAL_COLLECTS", False):
    zeros = {k: v for k, v in zeros.items() if k != "mask"}
  try:
    return set(method.summarize_eval(zeros))
  except Exception:  # pylint: disable=broad-except  # e.g. a summary of no examples
    return None


def _init_state(config, model, tx_fn, partitioner, example):
  """Params (and optimizer state) created directly with the replicated sharding, or loaded."""
  load = None
  if config.init_from.workdir:
    load = lambda params: transfer.load_pretrained(params, config.init_from)
  return steps.init_state(model, example, tx_fn, partitioner, config.seed, load)


def train_and_evaluate(config, workdir) -> dict:
  """Trains config's model with config's method; returns (and writes) the final results."""
  start_time = time.time()
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  finished = finished_results(workdir, config)
  if finished is not None:
    logging.info("%s already holds the finished run's results; nothing to do", workdir)
    return finished
  select.check(config)
  if jax.process_index() == 0:
    config_lib.write_json(config, workdir / "config.json")

  partitioner = steps.Partitioner(config.parallel)
  partitioner.check_batch(config.data.global_batch, "config.data.global_batch")
  eval_batch = -(-config.eval_batch // jax.device_count()) * jax.device_count()
  method = methods.get_method(config.method)
  model = method.build_model(config)

  # Input: the method's named training streams. Only arrays are loaded here; the iterators start
  # at the restored positions below.
  stream_arrays = {name: data_lib.load_split(dataset, split, data_dir=config.data.dir,
                                             tfds_dir=config.data.tfds_dir,
                                             arrays_dir=config.data.arrays_dir)
                   for name, (dataset, split) in method.streams(config).items()}
  eval_sets = load_eval_sets(config)
  first = next(iter(stream_arrays.values()))
  example = (method.example_inputs(config, first) if hasattr(method, "example_inputs")
             else example_inputs(first, config.data.input_key))

  # Model and optimizer state, then the newest checkpoint if there is one.
  tx_fn = functools.partial(optim.make_optimizer, config.optim, config.train.steps,
                            freeze=config.freeze)
  state, tx = _init_state(config, model, lambda p: tx_fn(params=p), partitioner, example)
  rng = jax.jit(lambda: jax.random.PRNGKey(config.seed + 1),
                out_shardings=partitioner.replicated)()
  ckpt = checkpoint.Checkpointer(workdir, config.checkpoint.keep)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          {"state": state, "rng": rng})
  restored = ckpt.restore_latest(abstract)
  positions, wall_before, meta = {}, 0.0, {}
  if restored is not None:
    tree, meta = restored
    state, rng = tree["state"], tree["rng"]
    positions, wall_before = meta["data_position"], meta["wall_time_s"]
    logging.info("resumed from %s at step %d", ckpt.directory / str(meta["step"]), meta["step"])
  start_step = int(jax.device_get(state.step))
  eval_step = make_eval_step(method, config, model, partitioner)  # compiled once for the run
  eval_batches = EvalBatches(partitioner, eval_batch)
  # Before the Selector, which may clear best/ when the metric changed.
  select.check_reported(config, reported_numbers(method, config, eval_step, eval_sets, eval_batches,
                                                 state.params, state.model_state))
  # select.patience: the stop and its evaluation, when the restored checkpoint is where it stopped
  # the run (killed before results.json was written).
  early, final = stopped_at(meta, config)
  selector = select.Selector(workdir, config, start_step, stopped=early is not None)

  # Each stream has its own order: seed + 7919 * index keeps them apart and reproducible.
  iterators = {name: data_lib.TrainIterator(
      arrays, global_batch=config.data.global_batch, seed=config.seed + 7919 * i,
      position=positions.get(name, 0), process_index=jax.process_index(),
      process_count=jax.process_count(), order=config.data.order)
      for i, (name, arrays) in enumerate(stream_arrays.items())}

  loss_fn = method.make_loss(config)
  update = partitioner.compile_update(steps.make_update(
      loss_fn, model, tx, config.train.steps, "batch" if config.parallel == "pmap" else None))
  batch_shape = {name: data_lib.batch_spec(arrays, config.data.global_batch)
                 for name, arrays in stream_arrays.items()}
  metrics_shape = jax.eval_shape(steps.make_update(loss_fn, model, tx, config.train.steps),
                                 state, batch_shape, rng)[1]
  accumulate = jax.jit(steps.accumulate, out_shardings=partitioner.replicated, donate_argnums=0)
  new_totals = jax.jit(lambda: steps.empty_totals(metrics_shape),
                       out_shardings=partitioner.replicated)
  totals = new_totals()

  preemption = Preemption()

  def mesh_state():
    """The state as replicated arrays on the mesh, whichever mode holds it."""
    return partitioner.from_pmap_state(state) if config.parallel == "pmap" else state

  def save(step, **extra):
    ckpt.save(step, {"state": mesh_state(), "rng": rng},
              {"step": step, "data_position": {n: it.position for n, it in iterators.items()},
               "global_batch": config.data.global_batch,
               "wall_time_s": wall_before + time.time() - start_time, **extra})

  def check_finite(step):
    bad = int(jax.device_get(totals["first_bad_step"]))
    if bad >= 0:
      last = ckpt.latest_step()
      raise NonFiniteLossError(
          f"non-finite loss at step {bad} (detected at step {step}); stopped without saving. "
          f"Last good checkpoint: {ckpt.directory / str(last) if last is not None else 'none'}. "
          "Lower optim.lr, add optim.grad_clip_norm, or check the input data.")

  if config.parallel == "pmap":
    state = partitioner.to_pmap_state(state)
  values = {}
  window = steps.DispatchWindow()

  def log_train(step):
    nonlocal totals, values
    check_finite(step)
    values = train_values(totals)
    out.scalars(step, values)
    totals = new_totals()

  out = writers.Writers(workdir, config.train.steps, start_step, config.train.log_every)
  # (made right before the try whose finally closes it)
  try:
    for step in range(start_step + 1, config.train.steps + 1 if early is None else 0):
      local = {name: next(it) for name, it in iterators.items()}
      if config.parallel == "pmap":
        state, metrics = update(state, partitioner.pmap_batch(local), rng)
        metrics = jax.tree.map(lambda x: x[0], metrics)
      else:
        state, metrics = update(state, partitioner.global_batch(local), rng)
      totals = accumulate(totals, metrics, step)
      window.push(metrics)
      out.step(step)
      last = step == config.train.steps
      if step % config.train.log_every == 0 or last:
        log_train(step)
      if config.eval_every and step % config.eval_every == 0 and not last:
        current = mesh_state()
        ev = evaluate(method, config, model, current.params, eval_sets, partitioner, eval_batch,
                      model_state=current.model_state, eval_step=eval_step,
                      batches=eval_batches)
        out.scalars(step, {f"{n}/{k}": v for n, r in ev.items() for k, v in r.items()})
        selector.update(step, ev, lambda: {"state": current, "rng": rng})
        if selector.exhausted():
          early, final = selector.stop_entry(), ev
      # A SIGTERM that lands on a checkpoint step saves that step once, not twice.
      stop = preemption.agreed(step, config.train.log_every) and not last
      if early is not None:
        save_stop(step, config, early, final, log_train, save)
        break
      if step % config.checkpoint.every == 0 or last or stop:
        check_finite(step)
        save(step)
      if stop:
        logging.warning("preempted: saved step %d to %s; run the same command to resume",
                        step, ckpt.directory)
        return {"preempted": True, "step": step}
    if early is None:
      current = mesh_state()
      final = evaluate(method, config, model, current.params, eval_sets, partitioner, eval_batch,
                       model_state=current.model_state, eval_step=eval_step,
                       batches=eval_batches)
      out.scalars(config.train.steps, {f"{n}/{k}": v for n, r in final.items()
                                       for k, v in r.items()})
      selector.update(config.train.steps, final, lambda: {"state": current, "rng": rng})
  finally:
    preemption.restore()
    out.close()
    ckpt.close()

  results = write_results(config, workdir, final, values, wall_before + time.time() - start_time,
                          **selected_entry(selector), **early_entry(early))
  logging.info("final evaluation: %s", final)
  return results


def write_results(config, workdir: pathlib.Path, evaluation: dict, train_values: dict,
                  wall_time_s: float, **extra) -> dict:
  """A finished run's results.json (written by process 0), the same for every trainer and sweeps."""
  results = {
      "step": config.train.steps,
      "eval": evaluation,
      "final_train": train_values or last_train_row(workdir),
      "wall_time_s": wall_time_s,
      "config": json.loads(config.to_json_best_effort()),
      "devices": jax.device_count(),
      "processes": jax.process_count(),
      "platform": jax.devices()[0].platform,
      "versions": {"mmjax": mmjax.__version__, "jax": jax.__version__},
      **extra,
  }
  if jax.process_index() == 0:
    writers.write_json_atomic(workdir / "results.json", results)
  return results


def selected_entry(selector) -> dict:
  """results.json's "selected" entry when config.select.metric is set (none otherwise)."""
  result = selector.result()
  if result is not None:
    logging.info("selected step %s: %s = %s", result["step"], result["metric"], result["value"])
  return {} if result is None else {"selected": result}


def stopped_at(meta: dict, config):
  """(the stop, its evaluation) from a restored checkpoint's metadata when select.patience stopped
  the run there, else (None, None). The stop is recorded with the checkpoint, not read back from
  selection.json, whose history a changed eval_every or a lost file would change."""
  if not meta.get("stopped_early"):
    return None, None
  logging.info("the checkpoint at step %d is where select.patience=%d stopped this run; "
               "finishing it", meta["step"], config.select.get("patience", 0))
  return meta["stopped_early"], meta["stopped_eval"]


def save_stop(step, config, stop, evaluation, log_train, save) -> None:
  """select.patience's stop at `step`, in the trainer or the meta trainer: the train steps since
  the last log logged (the final train numbers), then the step saved with the stop and its
  evaluation in the checkpoint's metadata, where stopped_at reads them after a kill."""
  if step % config.train.log_every:
    log_train(step)
  save(step, stopped_early=stop, stopped_eval=evaluation)
  logging.info("select.patience: %d evaluations without a new best; stopped at step %d",
               config.select.patience, step)


def train_values(totals) -> dict:
  """The mean train metrics of a log window, {"train/<name>": value}, from steps.accumulate's sums."""
  fetched = jax.device_get(totals)
  return {f"train/{k}": float(v) / int(fetched["count"]) for k, v in fetched["sums"].items()}


def early_entry(stop) -> dict:
  """results.json's "step" and "stopped_early" for a run that select.patience stopped."""
  return {} if stop is None else {"step": stop["step"], "stopped_early": stop}


def last_train_row(workdir: pathlib.Path) -> dict:
  """The last logged train metrics, for a run resumed after its last step (killed during the final eval)."""
  path = workdir / "metrics.jsonl"
  rows = [json.loads(r) for r in path.read_text().splitlines() if r.strip()] if path.exists() else []
  rows = [r for r in rows if any(k.startswith("train/") for k in r)]
  return {k: v for k, v in rows[-1].items() if k.startswith("train/")} if rows else {}
