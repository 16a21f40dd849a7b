"""Pre-LayerNorm Transformer blocks (Xiong et al. 2020; ViT, Dosovitskiy et al. 2021, eq. 2-3).

A block computes x + Attn(LN(x)) then x + MLP(LN(x)); an encoder is `depth` such blocks named
`layer_0 .. layer_{depth-1}` followed by a final LayerNorm `encoder_norm`, so a block's attention
weights are sown under `<encoder>/layer_<i>/self_attention` (or `cross_attention`).
"""
import flax.linen as nn
import jax.numpy as jnp

from mmjax.models.attention import MultiHeadAttention, dense, dense_2d


class MlpBlock(nn.Module):
  """The Transformer's position-wise feed-forward network: Dense, GELU, Dense, with dropout."""
  mlp_dim: int
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    width = x.shape[-1]
    y = nn.gelu(dense_2d(dense(self.mlp_dim, self.dtype, "fc1"), x))
    y = nn.Dropout(self.dropout, deterministic=not train)(y)
    y = dense_2d(dense(width, self.dtype, "fc2"), y)
    return nn.Dropout(self.dropout, deterministic=not train)(y)


class EncoderBlock(nn.Module):
  """One pre-LN self-attention block; `mask` [B, 1, L, L] is True where a token may attend."""
  num_heads: int
  mlp_dim: int
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None, train: bool = False):
    y = nn.LayerNorm(dtype=self.dtype, name="attention_norm")(x)
    y = MultiHeadAttention(self.num_heads, self.dropout, self.dtype, name="self_attention")(
        y, y, mask, train)
    x = x + nn.Dropout(self.dropout, deterministic=not train)(y)
    y = nn.LayerNorm(dtype=self.dtype, name="mlp_norm")(x)
    return x + MlpBlock(self.mlp_dim, self.dropout, self.dtype, name="mlp")(y, train)


class CrossAttentionBlock(nn.Module):
  """One pre-LN cross-modal block (MulT, Tsai et al. 2019, eq. 4): x's tokens attend to `context`'s.

  x + CrossAttn(LN(x), LN(context)), then x + MLP(LN(x)); `mask` [B, 1, len(x), len(context)].
  """
  num_heads: int
  mlp_dim: int
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, context, mask=None, train: bool = False):
    queries = nn.LayerNorm(dtype=self.dtype, name="query_norm")(x)
    keys = nn.LayerNorm(dtype=self.dtype, name="context_norm")(context)
    y = MultiHeadAttention(self.num_heads, self.dropout, self.dtype, name="cross_attention")(
        queries, keys, mask, train)
    x = x + nn.Dropout(self.dropout, deterministic=not train)(y)
    y = nn.LayerNorm(dtype=self.dtype, name="mlp_norm")(x)
    return x + MlpBlock(self.mlp_dim, self.dropout, self.dtype, name="mlp")(y, train)


class Encoder(nn.Module):
  """`depth` pre-LN self-attention blocks and, if final_norm, a final LayerNorm."""
  depth: int
  num_heads: int
  mlp_dim: int
  dropout: float = 0.0
  final_norm: bool = True
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None, train: bool = False):
    for i in range(self.depth):
      x = EncoderBlock(self.num_heads, self.mlp_dim, self.dropout, self.dtype, name=f"layer_{i}")(
          x, mask, train)
    return nn.LayerNorm(dtype=self.dtype, name="encoder_norm")(x) if self.final_norm else x


class CrossEncoder(nn.Module):
  """`depth` cross-attention blocks of x over a fixed context, and a final LayerNorm (MulT's
  cross-modal Transformer: the context is the source modality's tokens at every layer)."""
  depth: int
  num_heads: int
  mlp_dim: int
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, context, mask=None, train: bool = False):
    for i in range(self.depth):
      x = CrossAttentionBlock(self.num_heads, self.mlp_dim, self.dropout, self.dtype,
                              name=f"layer_{i}")(x, context, mask, train)
    return nn.LayerNorm(dtype=self.dtype, name="encoder_norm")(x)
