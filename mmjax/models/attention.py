"""Scaled dot-product and multi-head attention (Vaswani et al. 2017, §3.2), with masks and dropout.

Masks are boolean, True where a query may attend to a key, and broadcast to [B, heads, q_len, k_len].
Every `MultiHeadAttention` sows its attention weights [B, heads, q_len, k_len] into the
"intermediates" collection as "attention_weights", so a caller can read them with
`model.apply(..., mutable=["intermediates"])`.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models import fast_ops


def padding_mask(query_valid, key_valid):
  """[B, 1, q_len, k_len] mask from per-token validity [B, q_len] and [B, k_len] (False = padding)."""
  return jnp.logical_and(query_valid[:, None, :, None], key_valid[:, None, None, :])


def causal_mask(length: int):
  """[1, 1, L, L] mask letting position i attend to positions j <= i only."""
  return jnp.tril(jnp.ones((length, length), bool))[None, None]


def combine_masks(*masks):
  """Logical and of the masks that are not None (None if all are)."""
  masks = [m for m in masks if m is not None]
  if not masks:
    return None
  combined = masks[0]
  for m in masks[1:]:
    combined = jnp.logical_and(combined, m)
  return combined


def dot_product_attention(query, key, value, mask=None, dropout_rate: float = 0.0,
                          dropout_rng=None, dtype=jnp.float32):
  """softmax(Q K^T / sqrt(d_k) + mask) V (Vaswani et al. 2017, eq. 1), for every head.

  query [B, q_len, H, d_k], key [B, k_len, H, d_k], value [B, k_len, H, d_v]. Masked-out keys get
  weight exactly 0; a query whose keys are all masked gets all-zero weights (and output), not NaN.
  Dropout, when dropout_rng is given, drops attention weights as in the Transformer. Returns the
  output [B, q_len, H, d_v] and the weights [B, H, q_len, k_len] (before dropout).
  """
  depth = query.shape[-1]
  # Heads moved next to the batch first, so both products are batched matmuls over leading
  # dimensions: XLA:CPU ran the einsums on [B, len, H, d] 5x slower (benchmarks/README.md).
  query, key, value = (x.swapaxes(1, 2) for x in (query, key, value))  # [B, H, len, d]
  logits = jnp.matmul(query, key.swapaxes(-1, -2)).astype(jnp.float32) / jnp.sqrt(depth)
  if mask is not None:
    logits = jnp.where(mask, logits, -jnp.inf)
    any_valid = jnp.any(mask, axis=-1, keepdims=True)
    logits = jnp.where(any_valid, logits, 0.0)
  weights = jax.nn.softmax(logits, axis=-1)
  if mask is not None:
    weights = jnp.where(mask, weights, 0.0)
  attended = weights
  if dropout_rng is not None and dropout_rate > 0.0:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
    attended = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0)
  out = jnp.matmul(attended.astype(dtype), value.astype(dtype)).swapaxes(1, 2)
  return out, weights


def dense(features: int, dtype, name: str) -> nn.Dense:
  """nn.Dense (same params) whose 2-D float32 products take their kernel gradient from oneDNN on
  CPU (`fast_ops.dot_general`): XLA:CPU ran that x^T dy product at half its matmul speed."""
  return nn.Dense(features, dtype=dtype, dot_general=fast_ops.dot_general, name=name)


def dense_2d(dense: nn.Dense, x):
  """`dense(x)` computed on x flattened to [tokens, features] and reshaped back: the same params and
  values, but the weight gradient is then a plain 2-D matmul, where for [B, L, features] input it
  contracts two dimensions, which XLA:CPU ran 26% slower (benchmarks/README.md)."""
  y = dense(x.reshape(-1, x.shape[-1]))
  return y.reshape(x.shape[:-1] + y.shape[-1:])


class MultiHeadAttention(nn.Module):
  """Multi-head attention: h heads of width/h, concatenated and projected by W^O (Vaswani eq. 4-5).

  The query, key and value projections are one Dense each whose output columns are the heads side by
  side: columns [i * d, (i + 1) * d) of `query/kernel` are head i's W_i^Q.
  """
  num_heads: int
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, queries, keys, mask=None, train: bool = False):
    width = queries.shape[-1]
    if width % self.num_heads:
      raise ValueError(f"attention width {width} is not divisible by num_heads={self.num_heads}")
    head_dim = width // self.num_heads

    def project(x, name):
      y = dense_2d(dense(width, self.dtype, name), x)
      return y.reshape(y.shape[:-1] + (self.num_heads, head_dim))

    rng = self.make_rng("dropout") if train and self.dropout > 0.0 else None
    out, weights = dot_product_attention(
        project(queries, "query"), project(keys, "key"), project(keys, "value"), mask,
        self.dropout, rng, self.dtype)
    self.sow("intermediates", "attention_weights", weights)
    out = out.reshape(out.shape[:-2] + (width,))
    return dense_2d(dense(width, self.dtype, "out"), out)
