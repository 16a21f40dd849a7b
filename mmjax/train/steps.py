"""The pure train and eval steps, compiled for a device mesh (jit) or per device (pmap).

Both modes compute the same thing: the loss is a mean over the global batch; in pmap mode each device
holds an equal share, so the mean of the per-device means (lax.pmean) is that same global mean.
"""
import collections

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P


@flax.struct.dataclass
class TrainState:
  """`model_state`: the model's variables that are not trained by the optimizer, by collection
  (batch norm's running averages: {"batch_stats": ...}); {} for models without any."""
  step: jax.Array
  params: dict
  opt_state: optax.OptState
  model_state: dict = flax.struct.field(default_factory=dict)


def split_variables(variables) -> tuple:
  """model.init's variables -> (params, model_state): every collection but "params" is state."""
  variables = dict(variables)
  params = variables.pop("params")
  return params, variables


class StatefulModel:
  """A model whose `apply` fills in the non-param collections of `model_state`.

  The methods' losses and evals call `model.apply({"params": params}, x, train=...)`; given this
  wrapper instead of the flax module, a model with batch norm gets its running averages, and with
  train=True they are updated (mutable) and kept in `new_state` for the train step to return.
  train=True belongs inside the traced step only (`new_state` is a value of that trace); eval-mode
  use anywhere (mmjax.analysis.runs.load_run) just reads the averages.
  """

  def __init__(self, model, model_state: dict):
    self.model, self.model_state, self.new_state = model, model_state, None

  def apply(self, variables, *args, train: bool = False, **kwargs):
    variables = {**variables, **self.model_state}
    if train:
      out, new_state = self.model.apply(variables, *args, train=True,
                                        mutable=list(self.model_state), **kwargs)
      self.new_state = dict(new_state)
      return out
    return self.model.apply(variables, *args, train=False, **kwargs)

  def __getattr__(self, name):
    return getattr(self.model, name)


def with_state(model, model_state):
  """The model itself when it has no state (the common case), else a StatefulModel."""
  return StatefulModel(model, model_state) if model_state else model


def new_state(params, tx, model_state=None) -> TrainState:
  """Step 0 of training: `params`, `tx`'s fresh optimizer state and the model's state (batch norm
  averages; none by default). Traceable: jit it with out_shardings to place it."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    model_state={} if model_state is None else model_state)


def init_state(model, example, tx_fn, partitioner, seed: int, load=None):
  """(TrainState, tx): params (and the model's state, e.g. batch norm averages) made by model.init
  from PRNGKey(seed) directly with the replicated sharding (`load(host params) -> params` replaces
  the params, e.g. with pretrained weights), and `tx = tx_fn(params)`'s state."""
  params, model_state = jax.jit(
      lambda rng: split_variables(model.init(rng, example, train=False)),
      out_shardings=partitioner.replicated)(jax.random.PRNGKey(seed))
  if load is not None:
    params = jax.jit(lambda p: p, out_shardings=partitioner.replicated)(
        load(jax.device_get(params)))
  tx = tx_fn(params)
  state = jax.jit(lambda p, s: new_state(p, tx, s),
                  out_shardings=partitioner.replicated)(params, model_state)
  return state, tx


def make_update(loss_fn, model, tx, total_steps: int, axis_name=None):
  """update(state, batch, rng) -> (state, metrics), with the rng folded with the step number."""

  def update(state, batch, rng):
    rng = jax.random.fold_in(rng, state.step)
    progress = state.step.astype(jnp.float32) / total_steps

    def loss(params):
      stateful = with_state(model, state.model_state)
      value, metrics = loss_fn(stateful, params, batch, rng, progress)
      new_state = getattr(stateful, "new_state", None)
      return value, (metrics, state.model_state if new_state is None else new_state)

    grads, (metrics, model_state) = jax.grad(loss, has_aux=True)(state.params)
    if axis_name is not None:
      # Each device's batch norm saw its own share of the batch: average their running stats.
      grads, metrics, model_state = jax.lax.pmean((grads, metrics, model_state), axis_name)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                      model_state=model_state), metrics

  return update


def make_meta_update(meta_grad, tx):
  """update(state, tasks, rng) -> (state, metrics): one outer step on the meta-gradient."""

  def update(state, tasks, rng):
    del rng  # the tasks are already random; no stochastic layers in the meta models
    grads, metrics = meta_grad(state.params, tasks)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                      model_state=state.model_state), metrics

  return update


def accumulate(totals, metrics, step):
  """Sums metrics on device between log steps and remembers the first step with a non-finite loss."""
  bad = ~jnp.isfinite(metrics["loss"]) & (totals["first_bad_step"] < 0)
  return {
      "sums": jax.tree.map(jnp.add, totals["sums"], metrics),
      "count": totals["count"] + 1,
      "first_bad_step": jnp.where(bad, step, totals["first_bad_step"]),
  }


def empty_totals(metrics_shape):
  return {"sums": jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metrics_shape),
          "count": jnp.zeros((), jnp.int32), "first_bad_step": -jnp.ones((), jnp.int32)}


class DispatchWindow:
  """Bounds how many steps are queued ahead of the devices.

  With hundreds of multi-device steps queued, XLA:CPU's in-process collectives deadlock (seen with
  jax 0.10.2 and 2 or 4 host devices on 2 cores: "Termination timeout for all reduce"). Waiting for
  the step `size` places back keeps that from happening and still overlaps host and device work.
  """

  def __init__(self, size: int = 4):
    self.size = size
    self._queue = collections.deque()

  def push(self, value) -> None:
    self._queue.append(value)
    if len(self._queue) > self.size:
      jax.block_until_ready(self._queue.popleft())


class Partitioner:
  """Where arrays live: a 1-D mesh over all devices of all processes, batch on its leading axis."""

  def __init__(self, mode: str):
    if mode not in ("jit", "pmap"):
      raise ValueError(f"unknown config.parallel {mode!r}; use jit or pmap")
    self.mode = mode
    self.mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    self.replicated = NamedSharding(self.mesh, P())
    self.batch_sharding = NamedSharding(self.mesh, P("data"))

  def check_batch(self, global_batch: int, what: str) -> None:
    if global_batch % jax.device_count():
      raise ValueError(f"{what}={global_batch} must be divisible by the number of devices "
                       f"({jax.device_count()})")

  def global_batch(self, local):
    """This process's rows of the global batch (a tree of arrays) -> global arrays on the mesh.

    One process: one device_put of the whole tree (0.19 ms for a DANN batch's 4 arrays, against
    0.37 ms leaf by leaf). Several: each process's rows placed with
    make_array_from_process_local_data (a device_put onto a multi-process sharding broke orbax's
    save with jax 0.10.2)."""
    if jax.process_count() == 1:
      return jax.device_put(local, self.batch_sharding)
    return jax.tree.map(lambda v: jax.make_array_from_process_local_data(self.batch_sharding, v),
                        local)

  # pmap mode: state copied on each local device, batch split [devices, per-device rows, ...].
  def to_pmap_state(self, tree):
    n = jax.local_device_count()
    local = NamedSharding(jax.sharding.Mesh(np.array(jax.local_devices()), ("local",)), P("local"))
    return jax.tree.map(lambda x: jax.device_put(np.broadcast_to(x, (n,) + np.shape(x)), local),
                        jax.device_get(tree))

  def from_pmap_state(self, tree):
    first = jax.tree.map(lambda x: x[0], jax.device_get(tree))
    return jax.jit(lambda t: t, out_shardings=self.replicated)(first)

  def pmap_batch(self, local):
    n = jax.local_device_count()
    return jax.tree.map(lambda v: v.reshape((n, v.shape[0] // n) + v.shape[1:]), local)

  def compile_update(self, update_fn):
    if self.mode == "pmap":
      return jax.pmap(update_fn, axis_name="batch", in_axes=(0, 0, None), donate_argnums=0)
    return jax.jit(update_fn, in_shardings=(self.replicated, self.batch_sharding, self.replicated),
                   out_shardings=(self.replicated, self.replicated), donate_argnums=0)
