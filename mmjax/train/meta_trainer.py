"""The meta-learning loop (config.trainer = "meta"): meta-batches of tasks, MAML-style updates.

Like the standard trainer it resumes from the newest good checkpoint, stops on a non-finite loss,
saves and exits on SIGTERM, and returns a finished workdir's results. The tasks of step s come from
(config.seed, s) alone (mmjax.data.episodes), so a checkpoint needs no data position; each process
draws only its share of the meta-batch, which is sharded over the mesh on its task axis.
"""
import pathlib
import time

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from mmjax import config as config_lib
from mmjax.data import episodes
from mmjax.methods import maml
from mmjax.methods.inputs import example_inputs
from mmjax.train import checkpoint, optim, select, steps, trainer, writers

# The "step" of meta-test tasks: one no run reaches, so that sinusoid test tasks (drawn from the
# training distribution) are never training tasks.
TEST_STEP = 2**31 - 1


make_meta_update = steps.make_meta_update  # the meta trainer's step lives with the others


def _local_tasks(source, seed: int, step: int, first: int, count: int):
  """This process's share of tasks [first, first + count) of `step`: the p-th of P equal parts."""
  share = count // jax.process_count()
  start = first + jax.process_index() * share
  return episodes.batch(source, seed, step, range(start, start + share))


def make_meta_test(config, model, partitioner):
  """meta_test(meta_params, source) -> {metric: mean, metric_ci95, metric_step<k>, n}: adapts to
  config.meta.test_tasks tasks with test_inner_steps steps (compiled once per run)."""
  meta = config.meta
  chunk = -(-meta.meta_batch // jax.device_count()) * jax.device_count()
  eval_fn = jax.jit(maml.make_meta_eval(config, model, meta.test_inner_steps),
                    in_shardings=(partitioner.replicated, partitioner.batch_sharding),
                    out_shardings=partitioner.batch_sharding)

  def meta_test(meta_params, source):
    per_task = []
    for first in range(0, meta.test_tasks, chunk):
      # Test task j is (test_seed, TEST_STEP, j) whatever the chunk size; extra tasks are dropped.
      local = _local_tasks(source, meta.test_seed, TEST_STEP, first, chunk)
      out = eval_fn(meta_params, partitioner.global_batch(local))
      per_task.append(jax.device_get(multihost_utils.process_allgather(out, tiled=True)))
    merged = jax.tree.map(lambda *v: np.concatenate(v)[:meta.test_tasks], *per_task)
    return maml.summarize_eval(merged)

  def reported(meta_params, source):
    """The numbers meta_test reports, from eval_fn's output shapes: no task is adapted."""
    tasks = jax.tree.map(lambda v: jax.ShapeDtypeStruct((chunk,) + v.shape[1:], v.dtype),
                         episodes.batch(source, meta.test_seed, TEST_STEP, [0]))
    shapes = jax.eval_shape(eval_fn, meta_params, tasks)
    return set(maml.summarize_eval({k: np.zeros((meta.test_tasks,) + s.shape[1:], s.dtype)
                                    for k, s in shapes.items()}))

  meta_test.reported = reported
  return meta_test


def _init_state(config, model, partitioner, example):
  def init(rng):
    return maml.init_meta_params(config, model.init(rng, example, train=False)["params"])

  meta_params = jax.jit(init, out_shardings=partitioner.replicated)(jax.random.PRNGKey(config.seed))
  maml.check_config(config, meta_params["model"])
  tx = optim.make_optimizer(config.optim, config.train.steps, params=meta_params,
                            freeze=config.freeze)
  state = jax.jit(lambda p: steps.new_state(p, tx),
                  out_shardings=partitioner.replicated)(meta_params)
  return state, tx


def check_config(config):
  if config.method != "maml":
    raise ValueError(f'config.trainer = "meta" runs method "maml", not {config.method!r}')
  if config.init_from.workdir:
    raise ValueError("the meta trainer does not read config.init_from; leave init_from.workdir empty")
  if config.parallel != "jit":
    raise ValueError('the meta trainer shards tasks with jit; set config.parallel = "jit"')
  if config.meta.meta_batch % jax.device_count():
    raise ValueError(f"config.meta.meta_batch={config.meta.meta_batch} must be divisible by the "
                     f"number of devices ({jax.device_count()})")


def train_and_evaluate(config, workdir) -> dict:
  """Meta-trains config's model; meta-tests it at the end (and every config.eval_every steps)."""
  start_time = time.time()
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  finished = trainer.finished_results(workdir, config)
  if finished is not None:
    logging.info("%s already holds the finished run's results; nothing to do", workdir)
    return finished
  check_config(config)
  select.check(config)
  if jax.process_index() == 0:
    config_lib.write_json(config, workdir / "config.json")

  partitioner = steps.Partitioner("jit")
  model = maml.build_model(config)
  train_tasks = episodes.make_task_source(config, config.meta.train_split)
  test_tasks = episodes.make_task_source(config, config.meta.test_split)
  example = example_inputs(train_tasks.task(config.seed, 0, 0)["support"], config.data.input_key)

  state, tx = _init_state(config, model, partitioner, example)
  ckpt = checkpoint.Checkpointer(workdir, config.checkpoint.keep)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          {"state": state})
  restored = ckpt.restore_latest(abstract)
  wall_before, meta = 0.0, {}
  if restored is not None:
    state, wall_before, meta = restored[0]["state"], restored[1]["wall_time_s"], restored[1]
    logging.info("resumed from %s at step %d", ckpt.directory / str(restored[1]["step"]),
                 restored[1]["step"])
  start_step = int(jax.device_get(state.step))
  meta_test = make_meta_test(config, model, partitioner)
  # Before the Selector, which may clear best/ when the metric changed (as in the trainer).
  select.check_reported(config, meta_test.reported(state.params, test_tasks)
                        if config.select.metric else None)
  early, final = trainer.stopped_at(meta, config)  # select.patience's stop, as in the trainer
  if early is not None:  # stored as results.json's "eval" ({"meta_test": ...}), as sweeps store it
    final = final.get("meta_test", final)
  selector = select.Selector(workdir, config, start_step, stopped=early is not None)

  meta_batch = config.meta.meta_batch
  update_fn = make_meta_update(maml.make_meta_grad(config, model), tx)
  update = partitioner.compile_update(update_fn)
  rng = jax.random.PRNGKey(config.seed + 1)
  task_shape = jax.tree.map(lambda v: jax.ShapeDtypeStruct((meta_batch,) + v.shape[1:], v.dtype),
                            episodes.batch(train_tasks, config.seed, 0, [0]))
  metrics_shape = jax.eval_shape(update_fn, state, task_shape, rng)[1]
  accumulate = jax.jit(steps.accumulate, out_shardings=partitioner.replicated, donate_argnums=0)
  new_totals = jax.jit(lambda: steps.empty_totals(metrics_shape),
                       out_shardings=partitioner.replicated)
  totals = new_totals()
  preemption = trainer.Preemption()

  def save(step, **extra):
    ckpt.save(step, {"state": state}, {"step": step, "meta_batch": meta_batch,
                                       "wall_time_s": wall_before + time.time() - start_time,
                                       **extra})

  def check_finite(step):
    bad = int(jax.device_get(totals["first_bad_step"]))
    if bad >= 0:
      last = ckpt.latest_step()
      raise trainer.NonFiniteLossError(
          f"non-finite meta-loss at step {bad} (detected at step {step}); stopped without saving. "
          f"Last good checkpoint: {ckpt.directory / str(last) if last is not None else 'none'}. "
          "Lower optim.lr or meta.inner_lr, or add optim.grad_clip_norm.")

  def test_scalars(step):
    result = meta_test(state.params, test_tasks)
    out.scalars(step, {f"meta_test/{k}": v for k, v in result.items()})
    selector.update(step, {"meta_test": result}, lambda: {"state": state})
    return result

  values = {}
  window = steps.DispatchWindow()

  def log_train(step):
    nonlocal totals, values
    check_finite(step)
    values = trainer.train_values(totals)
    out.scalars(step, values)
    totals = new_totals()

  out = writers.Writers(workdir, config.train.steps, start_step, config.train.log_every)
  # (made right before the try whose finally closes it)
  try:
    for step in range(start_step + 1, config.train.steps + 1 if early is None else 0):
      # Tasks of step s are drawn from (seed, s - 1), the step counter before the update.
      local = _local_tasks(train_tasks, config.seed, step - 1, 0, meta_batch)
      state, metrics = update(state, partitioner.global_batch(local), rng)
      totals = accumulate(totals, metrics, step)
      window.push(metrics)
      out.step(step)
      last = step == config.train.steps
      if step % config.train.log_every == 0 or last:
        log_train(step)
      if config.eval_every and step % config.eval_every == 0 and not last:
        result = test_scalars(step)
        if selector.exhausted():
          early, final = selector.stop_entry(), result
      # A SIGTERM that lands on a checkpoint step saves that step once, not twice.
      stop = preemption.agreed(step, config.train.log_every) and not last
      if early is not None:
        trainer.save_stop(step, config, early, {"meta_test": final}, log_train, save)
        break
      if step % config.checkpoint.every == 0 or last or stop:
        check_finite(step)
        save(step)
      if stop:
        logging.warning("preempted: saved step %d to %s; run the same command to resume",
                        step, ckpt.directory)
        return {"preempted": True, "step": step}
    if early is None:
      final = test_scalars(config.train.steps)
  finally:
    preemption.restore()
    out.close()
    ckpt.close()

  results = trainer.write_results(config, workdir, {"meta_test": final}, values,
                                  wall_before + time.time() - start_time,
                                  **trainer.selected_entry(selector),
                                  **trainer.early_entry(early))
  logging.info("meta-test: %s", final)
  return results
