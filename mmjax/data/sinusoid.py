"""Sinusoid regression tasks (Finn et al. 2017, §5.1): y = A sin(x - phase), K points per task.

Amplitude A ~ U[0.1, 5.0], phase ~ U[0, pi], inputs x ~ U[-5, 5], as in the paper.

Task `index` of step `step` is drawn from a counter-based JAX key fold_in(fold_in(key(seed), step),
index), so any set of tasks (one, a meta-batch, every step of a chunk of a vmapped sweep) is one
jitted call on the device and the same numbers whichever way it is asked for.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

AMPLITUDE = (0.1, 5.0)
PHASE = (0.0, np.pi)
X_RANGE = (-5.0, 5.0)


def curve(x, amplitude, phase):
  return amplitude * np.sin(x - phase)


def _parameters(seed, step, index, points: int):
  """(amplitude, phase, x [points]) of one task, as traced JAX values."""
  key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), step), index)
  k_amplitude, k_phase, k_x = jax.random.split(key, 3)
  amplitude = jax.random.uniform(k_amplitude, (), minval=AMPLITUDE[0], maxval=AMPLITUDE[1])
  phase = jax.random.uniform(k_phase, (), minval=PHASE[0], maxval=PHASE[1])
  x = jax.random.uniform(k_x, (points,), minval=X_RANGE[0], maxval=X_RANGE[1])
  return amplitude, phase, x


def _task(seed, step, index, shots: int, queries: int):
  amplitude, phase, x = _parameters(seed, step, index, shots + queries)
  x = x[:, None]
  y = amplitude * jnp.sin(x - phase)
  return {"support": {"x": x[:shots], "label": y[:shots]},
          "query": {"x": x[shots:], "label": y[shots:]}}


_parameters_jit = jax.jit(_parameters, static_argnums=3)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _tasks(seeds, steps, indices, shots: int, queries: int):
  """Tasks for arrays of seeds, steps and indices of one shape S: leaves [*S, points, 1]."""
  flat = jax.vmap(lambda s, t, i: _task(s, t, i, shots, queries))(
      seeds.ravel(), steps.ravel(), indices.ravel())
  return jax.tree.map(lambda v: v.reshape(seeds.shape + v.shape[1:]), flat)


class SinusoidTasks:
  """Tasks {"support": {"x", "label"}, "query": {"x", "label"}}, x and label float32 [K, 1]."""

  def __init__(self, *, shots: int, queries: int):
    self.shots, self.queries = shots, queries

  def parameters(self, seed: int, step: int, index: int):
    """(amplitude, phase, x [shots + queries]) of task `index` of `step`, as numpy values."""
    out = _parameters_jit(seed, step, index, self.shots + self.queries)
    return tuple(np.asarray(v) for v in out)

  def task(self, seed: int, step: int, index: int) -> dict:
    return jax.tree.map(lambda v: v[0], self.batch(seed, step, [index]))

  def batch(self, seed: int, step: int, indices) -> dict:
    """Tasks `indices` of `step` stacked on a leading task axis (numpy)."""
    indices = np.asarray(list(indices), np.int32)
    shape = indices.shape
    return jax.device_get(self.grid(np.full(shape, seed, np.int32),
                                    np.full(shape, step, np.int32), indices))

  def grid(self, seeds, steps, indices) -> dict:
    """Tasks for arrays of seeds, steps and indices of one shape S (leaves [*S, K, 1]), on the
    device: a vmapped sweep draws all its runs' tasks for many steps in one call."""
    return _tasks(jnp.asarray(seeds, jnp.int32), jnp.asarray(steps, jnp.int32),
                  jnp.asarray(indices, jnp.int32), self.shots, self.queries)
