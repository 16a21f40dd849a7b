"""MAML and its relatives as the "maml" method of the "meta" trainer (`config.meta.algorithm`).

- maml: Finn et al. 2017, Alg. 2: theta <- theta - beta grad_theta sum_i L_query_i(theta'_i), with
  theta'_i = inner_adapt(theta, support_i) (eq. 1), differentiated through the inner steps.
- fomaml: the same with the inner gradients held constant (Finn et al. 2017, §5.2 "first-order
  approximation"): the meta-gradient is grad L_query at theta'_i.
- anil: only the params under `config.meta.head` are adapted (Raghu et al. 2020, §4).
- metasgd: per-parameter inner learning rates alpha, meta-learned with theta (Li et al. 2017, eq. 3).
- reptile: no differentiation; the outer "gradient" is theta - mean_i theta'_i (Nichol et al.
  2018, Alg. 2), which with SGD of rate epsilon is Reptile's batched update.
Tasks are {"support": batch, "query": batch} with a leading task axis (mmjax.data.episodes).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmjax import models
from mmjax.methods.inputs import model_inputs

ALGORITHMS = ("maml", "fomaml", "anil", "metasgd", "reptile")


def streams(config) -> dict:
  """The split the training tasks are drawn from: name -> (dataset, split)."""
  return {"tasks": (config.meta.dataset, config.meta.train_split)}


def build_model(config):
  return models.build_model(config.model, config.dtype)


def make_loss(config):
  """The standard trainer's entry point; MAML's meta-gradient needs the meta trainer instead."""
  raise ValueError(f'method "maml" runs under config.trainer = "meta", not {config.trainer!r}')


def check_config(config, params) -> None:
  """Raises on meta settings that cannot work with these params."""
  meta = config.meta
  if meta.algorithm not in ALGORITHMS:
    raise ValueError(f"unknown config.meta.algorithm {meta.algorithm!r}; "
                     f"use {', '.join(ALGORITHMS)}")
  if meta.loss not in ("cross_entropy", "mse"):
    raise ValueError(f"unknown config.meta.loss {meta.loss!r}; use cross_entropy or mse")
  if meta.task_map not in ("vmap", "map", "unroll"):
    raise ValueError(f"unknown config.meta.task_map {meta.task_map!r}; use vmap, map or unroll")
  if meta.algorithm == "anil" and meta.head not in params:
    raise ValueError(f"config.meta.head={meta.head!r} is not a top-level param name; the model "
                     f"has {sorted(params)}")


def init_meta_params(config, params) -> dict:
  """What the outer loop learns: {"model": params}, plus Meta-SGD's per-parameter inner rates."""
  meta_params = {"model": params}
  if config.meta.algorithm == "metasgd":
    meta_params["inner_lr"] = jax.tree.map(lambda p: jnp.full_like(p, config.meta.inner_lr), params)
  return meta_params


def batch_loss(model, params, batch, loss: str = "cross_entropy", input_key: str = "image"):
  """(mean loss, metrics) of `params` on one task's support or query batch."""
  out = model.apply({"params": params}, model_inputs(batch, input_key), train=True)["logits"]
  if loss == "mse":
    value = jnp.mean(jnp.square(out - batch["label"]))
    return value, {"loss": value}
  value = optax.softmax_cross_entropy_with_integer_labels(out, batch["label"]).mean()
  return value, {"loss": value, "accuracy": jnp.mean(jnp.argmax(out, -1) == batch["label"])}


def inner_adapt(loss_fn, params, support, steps: int, lr, first_order: bool = False):
  """`steps` gradient steps theta <- theta - lr * grad loss_fn(theta, support) (Finn et al., eq. 1).

  A pure function of params, so jax.grad differentiates through it (second-order MAML); with
  `first_order` the inner gradients are constants (FOMAML). `lr` is a number or a tree like params
  (Meta-SGD's per-parameter rates; their product with the gradient is elementwise).
  """
  if jax.tree.structure(lr) != jax.tree.structure(params):
    lr = jax.tree.map(lambda _: lr, params)
  for _ in range(steps):
    grads = jax.grad(lambda p: loss_fn(p, support)[0])(params)
    if first_order:
      grads = jax.lax.stop_gradient(grads)
    params = jax.tree.map(lambda p, g, a: p - a * g, params, grads, lr)
  return params


def make_adapt(config, model):
  """adapt(meta_params, params, support, steps) -> params after `steps` steps of the algorithm."""
  meta = config.meta
  loss_fn = functools.partial(batch_loss, model, loss=meta.loss, input_key=config.data.input_key)
  first_order = meta.algorithm in ("fomaml", "reptile")

  def adapt(meta_params, params, support, steps):
    lr = meta_params.get("inner_lr", meta.inner_lr)
    if meta.algorithm != "anil":
      return inner_adapt(loss_fn, params, support, steps, lr, first_order)

    def head_loss(head, batch):
      return loss_fn({**params, meta.head: head}, batch)

    head = inner_adapt(head_loss, params[meta.head], support, steps, lr, first_order)
    return {**params, meta.head: head}

  return adapt, loss_fn


def over_tasks(fn, tasks, how: str):
  """fn applied to each task of a meta-batch: jax.vmap; lax.map (one task at a time, in a loop);
  or unroll (one copy of fn per task in the program). On one CPU device, mmjax's oneDNN convs run
  vmapped tasks one per core, the fastest for conv4; XLA's convs (several devices, or
  MMJAX_ONEDNN=0) become grouped convs under vmap and lose their fast path inside loops, where
  unrolled tasks keep it."""
  if how == "vmap":
    return jax.vmap(fn)(tasks)
  if how == "map":
    return jax.lax.map(fn, tasks)
  outs = [fn(jax.tree.map(lambda v, i=i: v[i], tasks)) for i in range(len(jax.tree.leaves(tasks)[0]))]
  return jax.tree.map(lambda *v: jnp.stack(v), *outs)


def task_mean(values):
  """The mean over the leading (task) axis, as a dot with 1/T weights."""
  weights = jnp.full((values.shape[0],), 1.0 / values.shape[0], values.dtype)
  return jnp.tensordot(weights, values, axes=1, precision=jax.lax.Precision.HIGHEST)


def make_meta_grad(config, model):
  """meta_grad(meta_params, tasks) -> (outer gradient, query-set metrics after adaptation)."""
  meta = config.meta
  adapt, loss_fn = make_adapt(config, model)

  def task_objective(meta_params, task):
    adapted = adapt(meta_params, meta_params["model"], task["support"], meta.inner_steps)
    return loss_fn(adapted, task["query"])

  def per_task_then_mean(meta_params, tasks):
    # The gradient of the mean task loss as the mean of per-task gradients. Differentiating the
    # mean of vmapped losses sums each gradient over the task axis with XLA's reduce, which ran
    # conv4's [32, 3, 3, 64, 64] weight gradients at about 6 ms each on XLA:CPU; a dot with the
    # 1/T weights does the same sum in under 1 ms.
    def one(task):
      grads, metrics = jax.grad(task_objective, has_aux=True)(meta_params, task)
      return grads, metrics

    grads, metrics = jax.vmap(one)(tasks)
    return jax.tree.map(task_mean, grads), jax.tree.map(jnp.mean, metrics)

  def reptile(meta_params, tasks):
    def one(task):
      adapted = adapt(meta_params, meta_params["model"], task["support"], meta.inner_steps)
      return adapted, loss_fn(adapted, task["query"])[1]
    adapted, metrics = over_tasks(one, tasks, meta.task_map)
    grads = jax.tree.map(lambda p, a: p - a.mean(0), meta_params["model"], adapted)
    return {"model": grads}, jax.tree.map(jnp.mean, metrics)

  def meta_grad(meta_params, tasks):
    if meta.algorithm == "reptile":
      return reptile(meta_params, tasks)
    if meta.task_map == "vmap":
      return per_task_then_mean(meta_params, tasks)

    def objective(mp):
      losses, metrics = over_tasks(functools.partial(task_objective, mp), tasks, meta.task_map)
      return losses.mean(), jax.tree.map(jnp.mean, metrics)

    return jax.grad(objective, has_aux=True)(meta_params)

  return meta_grad


def make_meta_eval(config, model, steps: int):
  """eval(meta_params, tasks) -> per-task query metrics after 0..steps steps, [T, steps + 1]."""
  adapt, loss_fn = make_adapt(config, model)

  def one(meta_params, task):
    params, history = meta_params["model"], []
    for step in range(steps + 1):
      if step:
        params = adapt(meta_params, params, task["support"], 1)
      history.append(loss_fn(params, task["query"])[1])
    return jax.tree.map(lambda *v: jnp.stack(v), *history)

  return lambda meta_params, tasks: over_tasks(functools.partial(one, meta_params), tasks,
                                               config.meta.task_map)


def summarize_eval(per_task: dict) -> dict:
  """Mean and 95% confidence interval (1.96 standard errors) over tasks of each metric, after the
  final step and after each step count k (`<metric>_step<k>`)."""
  out = {}
  for name, values in per_task.items():
    values = np.asarray(values, np.float64)
    n = len(values)
    for k in range(values.shape[1]):
      out[f"{name}_step{k}"] = float(values[:, k].mean())
    final = values[:, -1]
    out[name] = float(final.mean())
    out[f"{name}_ci95"] = float(1.96 * final.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
    out["n"] = n
  return out
