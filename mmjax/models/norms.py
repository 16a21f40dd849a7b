"""The batch norms of mmjax's models, in one place.

- `batch_norm`: flax's BatchNorm with PyTorch's defaults (momentum 0.1 there, i.e. running averages
  0.9 old + 0.1 batch; epsilon 1e-5). Running averages live in the "batch_stats" collection, which
  the engine keeps in TrainState.model_state; eval (train=False) normalises with them.
- `BatchStatsNorm`: normalises with the current batch's statistics in training and eval alike and
  keeps no averages (MAML's conv4, the Relation Network's CNN). In float32 and float64 its
  gradient is one `jax.custom_vjp` (`batch_stats_norm`), with an optional ReLU fused in.
"""
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp


def batch_norm(train: bool, *, dtype=jnp.float32, name: str | None = None) -> nn.BatchNorm:
  """nn.BatchNorm over the last axis with PyTorch's defaults; batch statistics when `train`."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                      name=name)


def _norm_forward(x, scale, bias, epsilon, relu, fast_variance):
  """(output, batch mean, batch variance) over all axes but the last.

  `fast_variance`: var = mean(x^2) - mean(x)^2 (clamped at 0), as flax's nn.BatchNorm computes it
  by default (use_fast_variance): two reductions that each read x, where mean((x - mean)^2) first
  writes x - mean out in full (XLA:CPU fuses no broadcast into its reductions). It loses digits
  when a channel's mean is large against its spread (relative error about 2^-24 mean^2 / var).
  """
  axes = tuple(range(x.ndim - 1))
  mean = x.mean(axes)
  if fast_variance:
    var = jnp.maximum(jnp.mean(jnp.square(x), axes) - jnp.square(mean), 0.0)
  else:
    var = jnp.mean(jnp.square(x - mean), axes)
  y = (x - mean) * (scale / jnp.sqrt(var + epsilon)) + bias
  return (jax.nn.relu(y) if relu else y), mean, var


def _plain_norm(x, scale, bias, epsilon, relu, fast_variance):
  return _norm_forward(x, scale, bias, epsilon, relu, fast_variance)[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _fused_norm(x, scale, bias, epsilon, relu, fast_variance):
  return _plain_norm(x, scale, bias, epsilon, relu, fast_variance)


def _fused_norm_fwd(x, scale, bias, epsilon, relu, fast_variance):
  y, mean, var = _norm_forward(x, scale, bias, epsilon, relu, fast_variance)
  return y, (x, mean, var, scale, y)


def _fused_norm_bwd(epsilon, relu, fast_variance, residuals, g):
  # Ioffe & Szegedy 2015, section 3, with m values per channel and x_hat = (x - mean) / sigma:
  # d bias = sum g, d scale = sum g x_hat, dx = scale / (m sigma) (m g - d bias - x_hat d scale).
  # Written out, it is two reductions and one elementwise pass; autodiff of the forward made
  # four reductions and three passes over x's size (conv4 in MAML: about 115 of 480 ms a step).
  # It is plain jnp, so grad of grad (second-order MAML) differentiates through it.
  x, mean, var, scale, y = residuals
  axes = tuple(range(x.ndim - 1))
  m = math.prod(x.shape[:-1])
  if relu:
    g = jnp.where(y > 0, g, jnp.zeros_like(g))  # jax.nn.relu's derivative: 0 at 0
  inv = 1.0 / jnp.sqrt(var + epsilon)
  x_hat = (x - mean) * inv
  d_bias = g.sum(axes)
  if fast_variance:  # sum g x_hat = (sum g x - mean sum g) / sigma: x_hat is not written out
    d_scale = ((g * x).sum(axes) - mean * d_bias) * inv
  else:
    d_scale = (g * x_hat).sum(axes)
  dx = (scale * inv / m) * (m * g - d_bias - x_hat * d_scale)
  return dx, d_scale, d_bias


_fused_norm.defvjp(_fused_norm_fwd, _fused_norm_bwd)


def batch_stats_norm(x, scale, bias, epsilon: float, relu: bool = False, fused: bool = True,
                     fast_variance: bool = True):
  """(x - mean) * scale / sqrt(var + epsilon) + bias over all axes but the last, with the batch's
  mean and (biased) variance, then a ReLU if `relu`. With `fused` (float32 or float64) the
  gradient is one custom VJP, written out, instead of autodiff's: the same math, fewer passes.
  `fast_variance` computes the variance as mean(x^2) - mean(x)^2, as flax's BatchNorm does by
  default (fewer passes over x; see `_norm_forward`); False: mean((x - mean)^2).
  Reverse mode of any order; forward mode (jax.jvp) needs `fused=False`."""
  if fused and x.dtype == scale.dtype == bias.dtype and x.dtype in (jnp.float32, jnp.float64):
    return _fused_norm(x, scale, bias, float(epsilon), bool(relu), bool(fast_variance))
  return _plain_norm(x, scale, bias, epsilon, relu, fast_variance)


# Set to False before tracing to differentiate BatchStatsNorm by autodiff (e.g. for jax.jvp).
USE_FUSED_GRAD = True


class BatchStatsNorm(nn.Module):
  """Batch norm that always normalises with the current batch's statistics (Ioffe & Szegedy 2015,
  Alg. 1) over all axes but the channels, and keeps no running averages; params "scale", "bias".
  `relu` applies a ReLU after it, inside the same custom gradient (`batch_stats_norm`).
  `use_fast_variance` as flax's nn.BatchNorm: mean(x^2) - mean(x)^2, fewer passes over x."""
  epsilon: float = 1e-5
  dtype: jnp.dtype = jnp.float32
  relu: bool = False
  use_fast_variance: bool = True

  @nn.compact
  def __call__(self, x):
    features = x.shape[-1]
    x32 = x.astype(jnp.float32)
    scale = self.param("scale", nn.initializers.ones, (features,))
    bias = self.param("bias", nn.initializers.zeros, (features,))
    y = batch_stats_norm(x32, scale, bias, self.epsilon, self.relu, fused=USE_FUSED_GRAD,
                         fast_variance=self.use_fast_variance)
    return y.astype(self.dtype)
