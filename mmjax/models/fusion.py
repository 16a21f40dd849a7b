"""A multimodal Transformer classifier whose fusion strategy is one config key (`fusion`).

Each modality m (a batch key) is tokenized by `ModalityTokenizer` into the sequence
[CLS_m, t_1, ..., t_N] (position 0 is m's class token; the order of t_n per tokenizer is in
`mmjax/models/tokenizers.py`). The strategies, and where their attention weights
[B, heads, q_len, k_len] are sown ("intermediates" collection, "attention_weights"):
- `concat`: one encoder per modality (`<m>_encoder/layer_<i>/self_attention`, keys and queries are m's
  sequence); the CLS outputs are concatenated and mapped by an MLP to the features.
- `weighted_sum`: the same encoders; features = sum_m softmax(w)_m CLS_m with learned w.
- `late`: the same encoders; one linear head per modality on its CLS, logits averaged; features =
  mean of the CLS outputs.
- `early`: one encoder over the concatenation of all modalities' sequences, in `modalities` order
  (`fusion_encoder/layer_<i>/self_attention`; modality k's CLS is at the summed length of the
  sequences before it); features = mean of the modalities' CLS outputs.
- `cross_attention` (MulT, Tsai et al. 2019): for every ordered pair (q, k) of modalities a cross-modal
  Transformer in which q's sequence (queries) attends to k's sequence (keys) at every layer
  (`<q>_to_<k>/layer_<i>/cross_attention`); the pairs' CLS outputs are concatenated and mapped by an MLP.
- `bottleneck` (MBT, Nagrani et al. 2021, eq. 8-9): layers 0 .. fusion_layer-1 are per-modality
  (`<m>_encoder/layer_<i>/self_attention`); from layer fusion_layer on, modality m's block attends over
  [m's sequence, B bottleneck tokens] (`bottleneck/layer_<i>/<m>/self_attention`, the bottleneck tokens
  are the last B key positions), and the next bottleneck is the mean over modalities of their updated
  bottleneck tokens, so modalities exchange information only through them. Features = mean of the
  modalities' CLS outputs (MBT averages the CLS tokens' logits under one linear classifier, which
  equals classifying the mean CLS).
With `condition_on` = a modality c, before any fusion every token of each other modality gets a learned
projection of c's pooled tokens added (c's tokenizer tokens averaged over valid positions, class token
excluded; projection `condition_<m>`): each image token then carries the question, as the Relation
Network feeds the question to every object pair (Santoro et al. 2017, eq. 2), so a token's own MLP can
select by the question before attention pools the tokens.
The model returns {"logits": [B, num_classes], "features": [B, width]}.
"""
import itertools
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from mmjax.models.attention import padding_mask
from mmjax.models.tokenizers import ModalityTokenizer
from mmjax.models.transformer import CrossEncoder, Encoder, EncoderBlock

FUSIONS = ("concat", "weighted_sum", "late", "early", "cross_attention", "bottleneck")


def check_modalities(inputs, modalities, tokenizers):
  """Raises a clear error when the config's modalities and the model's inputs do not fit."""
  if len(modalities) != len(tokenizers):
    raise ValueError(f"config.model.modalities={tuple(modalities)} and config.model.tokenizers="
                     f"{tuple(tokenizers)} must name one tokenizer per modality")
  if not isinstance(inputs, dict):
    raise ValueError(f"a multimodal model takes a dict of inputs {tuple(modalities)}; set "
                     f"config.data.input_key={','.join(modalities)!r}")
  missing = [m for m in modalities if m not in inputs]
  if missing:
    raise ValueError(f"the model's inputs have no {missing} (config.model.modalities); they have "
                     f"{sorted(inputs)}")


class BottleneckLayer(nn.Module):
  """One MBT fusion layer: each modality's block attends over [its tokens, shared bottleneck]."""
  modalities: Sequence[str]
  num_heads: int
  mlp_dim: int
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens, valid, bottleneck, train: bool = False):
    updated, bottlenecks = {}, []
    for m in self.modalities:
      n = tokens[m].shape[1]
      x = jnp.concatenate([tokens[m], bottleneck.astype(tokens[m].dtype)], axis=1)
      keys_valid = jnp.concatenate([valid[m], jnp.ones(bottleneck.shape[:2], bool)], axis=1)
      x = EncoderBlock(self.num_heads, self.mlp_dim, self.dropout, self.dtype, name=m)(
          x, padding_mask(keys_valid, keys_valid), train)
      updated[m] = x[:, :n]
      bottlenecks.append(x[:, n:])
    return updated, jnp.mean(jnp.stack(bottlenecks), axis=0)


class BottleneckFusion(nn.Module):
  """MBT's fusion layers first_layer .. depth-1 with `num_tokens` learned bottleneck tokens."""
  modalities: Sequence[str]
  first_layer: int
  depth: int
  num_tokens: int
  num_heads: int
  mlp_dim: int
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens, valid, train: bool = False):
    width = tokens[self.modalities[0]].shape[-1]
    batch = tokens[self.modalities[0]].shape[0]
    bottleneck = self.param("tokens", nn.initializers.normal(0.02), (1, self.num_tokens, width))
    bottleneck = jnp.broadcast_to(bottleneck, (batch, self.num_tokens, width))
    for i in range(self.first_layer, self.depth):
      tokens, bottleneck = BottleneckLayer(self.modalities, self.num_heads, self.mlp_dim,
                                           self.dropout, self.dtype, name=f"layer_{i}")(
                                               tokens, valid, bottleneck, train)
    return tokens


class FusionTransformer(nn.Module):
  """Transformer classifier over several modalities, fused as `fusion` says (module docstring)."""
  modalities: Sequence[str] = ("image", "question")
  tokenizers: Sequence[str] = ("patch", "vector")
  fusion: str = "concat"
  num_classes: int = 10
  width: int = 128
  depth: int = 4
  num_heads: int = 4
  mlp_dim: int = 256
  dropout: float = 0.0
  patch_size: int = 8
  bottleneck_tokens: int = 4
  fusion_layer: int = 2
  vocab_size: int = 0
  cnn_norm: str = "none"  # normalisation inside `cnn`/`cnn16` tokenizers (tokenizers.CNN_NORMS)
  condition_on: str = ""  # a modality whose pooled tokens are added to the others' (docstring)
  dtype: jnp.dtype = jnp.float32

  def _encoder_kwargs(self):
    return dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, dropout=self.dropout,
                dtype=self.dtype)

  def _fusion_mlp(self, x, train):
    x = nn.gelu(nn.Dense(self.mlp_dim, dtype=self.dtype, name="fusion_fc1")(x))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.width, dtype=self.dtype, name="fusion_fc2")(x)

  def _unimodal_cls(self, tokens, valid, train):
    """Each modality's own encoder; returns {m: CLS output [B, width]}."""
    return {m: Encoder(self.depth, **self._encoder_kwargs(), name=f"{m}_encoder")(
        tokens[m], padding_mask(valid[m], valid[m]), train)[:, 0] for m in self.modalities}

  def _early(self, tokens, valid, train):
    x = jnp.concatenate([tokens[m] for m in self.modalities], axis=1)
    mask = jnp.concatenate([valid[m] for m in self.modalities], axis=1)
    x = Encoder(self.depth, **self._encoder_kwargs(), name="fusion_encoder")(
        x, padding_mask(mask, mask), train)
    starts = itertools.accumulate([0] + [tokens[m].shape[1] for m in self.modalities[:-1]])
    return jnp.mean(jnp.stack([x[:, s] for s in starts]), axis=0)

  def _cross_attention(self, tokens, valid, train):
    if len(self.modalities) < 2:
      raise ValueError("fusion='cross_attention' needs at least two modalities")
    pooled = []
    for q, k in itertools.permutations(self.modalities, 2):
      x = CrossEncoder(self.depth, **self._encoder_kwargs(), name=f"{q}_to_{k}")(
          tokens[q], tokens[k], padding_mask(valid[q], valid[k]), train)
      pooled.append(x[:, 0])
    return self._fusion_mlp(jnp.concatenate(pooled, axis=-1), train)

  def _bottleneck(self, tokens, valid, train):
    if not 0 <= self.fusion_layer <= self.depth:
      raise ValueError(f"fusion_layer={self.fusion_layer} must lie in [0, depth={self.depth}]")
    tokens = {m: Encoder(self.fusion_layer, **self._encoder_kwargs(), final_norm=False,
                         name=f"{m}_encoder")(tokens[m], padding_mask(valid[m], valid[m]), train)
              for m in self.modalities}
    tokens = BottleneckFusion(self.modalities, self.fusion_layer, self.depth, self.bottleneck_tokens,
                              **self._encoder_kwargs(), name="bottleneck")(tokens, valid, train)
    cls = [nn.LayerNorm(dtype=self.dtype, name=f"{m}_encoder_norm")(tokens[m][:, 0])
           for m in self.modalities]
    return jnp.mean(jnp.stack(cls), axis=0)

  def _condition(self, tokens, valid):
    c = self.condition_on
    if c not in self.modalities or len(self.modalities) < 2:
      raise ValueError(f"condition_on={c!r} must name one of the modalities {list(self.modalities)}, "
                       "and there must be another modality to condition")
    weights = valid[c][:, 1:, None].astype(tokens[c].dtype)
    pooled = jnp.sum(tokens[c][:, 1:] * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1.0)
    return {m: x if m == c else
            x + nn.Dense(self.width, dtype=self.dtype, name=f"condition_{m}")(pooled)[:, None]
            for m, x in tokens.items()}

  @nn.compact
  def __call__(self, inputs, train: bool = False):
    if len(self.modalities) == 1 and not isinstance(inputs, dict):  # one modality: its array
      inputs = {self.modalities[0]: inputs}
    check_modalities(inputs, self.modalities, self.tokenizers)
    if self.fusion not in FUSIONS:
      raise ValueError(f"unknown fusion {self.fusion!r}; use one of {', '.join(FUSIONS)}")
    tokens, valid = {}, {}
    for m, kind in zip(self.modalities, self.tokenizers):
      tokenizer = ModalityTokenizer(kind, self.width, self.patch_size, self.vocab_size, self.dtype,
                                    self.cnn_norm, name=f"{m}_tokenizer")
      tokens[m], valid[m] = tokenizer(inputs[m])
    if self.condition_on:
      tokens = self._condition(tokens, valid)
    if self.fusion in ("concat", "weighted_sum", "late"):
      pooled = self._unimodal_cls(tokens, valid, train)
      stacked = jnp.stack([pooled[m] for m in self.modalities])
      if self.fusion == "concat":
        features = self._fusion_mlp(jnp.concatenate(list(pooled.values()), axis=-1), train)
      elif self.fusion == "weighted_sum":
        weights = nn.softmax(self.param("modality_weights", nn.initializers.zeros,
                                        (len(self.modalities),)))
        features = jnp.einsum("m,mbd->bd", weights.astype(stacked.dtype), stacked)
      else:
        logits = jnp.mean(jnp.stack([
            nn.Dense(self.num_classes, dtype=self.dtype, name=f"{m}_head")(pooled[m])
            for m in self.modalities]), axis=0)
        return {"logits": logits.astype(jnp.float32), "features": jnp.mean(stacked, axis=0)}
    else:
      features = {"early": self._early, "cross_attention": self._cross_attention,
                  "bottleneck": self._bottleneck}[self.fusion](tokens, valid, train)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(features)
    return {"logits": logits.astype(jnp.float32), "features": features}
