"""Sinusoid regression tasks (Finn et al. 2017, §5.1): y = A sin(x - phase), K points per task.

Amplitude A ~ U[0.1, 5.0], phase ~ U[0, pi], inputs x ~ U[-5, 5], as in the paper.
"""
import numpy as np

AMPLITUDE = (0.1, 5.0)
PHASE = (0.0, np.pi)
X_RANGE = (-5.0, 5.0)


def curve(x, amplitude, phase):
  return amplitude * np.sin(x - phase)


class SinusoidTasks:
  """Tasks {"support": {"x", "label"}, "query": {"x", "label"}}, x and label float32 [K, 1]."""

  def __init__(self, *, shots: int, queries: int):
    self.shots, self.queries = shots, queries

  def parameters(self, seed: int, step: int, index: int):
    """(amplitude, phase, x [shots + queries]) of task `index` of `step`."""
    rng = np.random.default_rng([seed, step, index])
    amplitude = rng.uniform(*AMPLITUDE)
    phase = rng.uniform(*PHASE)
    x = rng.uniform(*X_RANGE, size=self.shots + self.queries)
    return amplitude, phase, x

  def task(self, seed: int, step: int, index: int) -> dict:
    amplitude, phase, x = self.parameters(seed, step, index)
    x = x.astype(np.float32)[:, None]
    y = curve(x, amplitude, phase).astype(np.float32)
    return {"support": {"x": x[:self.shots], "label": y[:self.shots]},
            "query": {"x": x[self.shots:], "label": y[self.shots:]}}

