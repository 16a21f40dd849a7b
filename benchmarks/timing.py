"""Timing helpers shared by the CPU benchmarks (core_steps.py, maml_step.py): the matmul ceiling
and runners timed in alternating repeats.

A runner is a function run(n) that runs n steps (or calls) and returns once they are done.
"""
import time

import jax
import jax.numpy as jnp
import numpy as np

MATMUL_SIZE = 2048


def matmul_runner(size: int = MATMUL_SIZE):
  """A jitted size^2 float32 matmul, the practical FLOP/s ceiling of these cores: (runner, FLOPs
  per call)."""
  a, b = (jax.random.normal(jax.random.PRNGKey(i), (size, size)) for i in (0, 1))
  matmul = jax.jit(jnp.matmul)
  jax.block_until_ready(matmul(a, b))

  def run(n):
    for _ in range(n):
      out = matmul(a, b)
    jax.block_until_ready(out)
  return run, 2.0 * size ** 3


def interleaved(runners: dict, steps_per_repeat: int, repeats: int) -> dict:
  """Seconds per step of each runner in every repeat, the runners alternating within each repeat
  (in the given order, then reversed), so runners next to each other in `runners` run back to
  back and load from other jobs falls on all of them alike."""
  for run in runners.values():
    run(2)  # compile, warm caches
  times = {name: [] for name in runners}
  for r in range(repeats):
    order = list(runners) if r % 2 == 0 else list(reversed(runners))
    for name in order:
      start = time.perf_counter()
      runners[name](steps_per_repeat)
      times[name].append((time.perf_counter() - start) / steps_per_repeat)
  return times


def paired_ratio(numerator: list, denominator: list) -> tuple[float, float, float]:
  """Median and quartiles over repeats of numerator[r] / denominator[r]: the two runs of a repeat
  are seconds apart, so the VM's drift between repeats cancels."""
  ratios = np.asarray(numerator) / np.asarray(denominator)
  return tuple(float(np.percentile(ratios, q)) for q in (50, 25, 75))
