"""A two-stream dual encoder for cross-modal retrieval (CLIP, Radford et al. 2021, §2.4 and Fig. 3).

Each of the two modalities has its own tokenizer and Transformer encoder (`<m>_encoder/layer_<i>/
self_attention`; the sequence is [CLS, tokens] as in `mmjax/models/tokenizers.py`); its CLS output is
projected linearly to the shared embed_dim space and L2-normalised, so dot products are cosine
similarities. The learned `logit_scale` = log(1 / temperature) starts at log(1 / 0.07) and is clipped
at log(100), as in CLIP; train it with `mmjax.losses.contrastive.symmetric_info_nce`.
"""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from mmjax.models.attention import padding_mask
from mmjax.models.fusion import check_modalities
from mmjax.models.tokenizers import ModalityTokenizer
from mmjax.models.transformer import Encoder

MAX_LOGIT_SCALE = float(np.log(100.0))


class DualEncoder(nn.Module):
  """One encoder per modality into a shared, L2-normalised embedding space."""
  modalities: Sequence[str] = ("image", "strokes")
  tokenizers: Sequence[str] = ("patch", "strokes")
  width: int = 128
  depth: int = 4
  num_heads: int = 4
  mlp_dim: int = 256
  embed_dim: int = 128
  patch_size: int = 8
  dropout: float = 0.0
  vocab_size: int = 0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs, train: bool = False):
    check_modalities(inputs, self.modalities, self.tokenizers)
    if len(self.modalities) != 2:
      raise ValueError(f"a dual encoder takes two modalities, got {tuple(self.modalities)}")
    embeddings = {}
    for m, kind in zip(self.modalities, self.tokenizers):
      tokens, valid = ModalityTokenizer(kind, self.width, self.patch_size, self.vocab_size,
                                        self.dtype, name=f"{m}_tokenizer")(inputs[m])
      x = Encoder(self.depth, self.num_heads, self.mlp_dim, self.dropout, dtype=self.dtype,
                  name=f"{m}_encoder")(tokens, padding_mask(valid, valid), train)
      z = nn.Dense(self.embed_dim, use_bias=False, dtype=self.dtype, name=f"{m}_projection")(
          x[:, 0]).astype(jnp.float32)
      embeddings[m] = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
    logit_scale = self.param("logit_scale", nn.initializers.constant(np.log(1 / 0.07)), ())
    return {"embeddings": embeddings, "logit_scale": jnp.minimum(logit_scale, MAX_LOGIT_SCALE)}
