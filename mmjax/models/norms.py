"""The batch norms of mmjax's models, in one place.

- `batch_norm`: flax's BatchNorm with PyTorch's defaults (momentum 0.1 there, i.e. running averages
  0.9 old + 0.1 batch; epsilon 1e-5). Running averages live in the "batch_stats" collection, which
  the engine keeps in TrainState.model_state; eval (train=False) normalises with them.
- `BatchStatsNorm`: normalises with the current batch's statistics in training and eval alike and
  keeps no averages (MAML's conv4, the Relation Network's CNN).
"""
import flax.linen as nn
import jax.numpy as jnp


def batch_norm(train: bool, *, dtype=jnp.float32, name: str | None = None) -> nn.BatchNorm:
  """nn.BatchNorm over the last axis with PyTorch's defaults; batch statistics when `train`."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                      name=name)


class BatchStatsNorm(nn.Module):
  """Batch norm that always normalises with the current batch's statistics (Ioffe & Szegedy 2015,
  Alg. 1) over all axes but the channels, and keeps no running averages; params "scale", "bias"."""
  epsilon: float = 1e-5
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    features = x.shape[-1]
    axes = tuple(range(x.ndim - 1))
    x32 = x.astype(jnp.float32)
    mean = x32.mean(axes)
    var = jnp.mean(jnp.square(x32 - mean), axes)
    scale = self.param("scale", nn.initializers.ones, (features,))
    bias = self.param("bias", nn.initializers.zeros, (features,))
    y = (x32 - mean) * (scale / jnp.sqrt(var + self.epsilon)) + bias
    return y.astype(self.dtype)
