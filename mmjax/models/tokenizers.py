"""Modality tokenizers: each turns one batch entry [B, ...] into tokens [B, N, width] and a validity
mask [B, N] (False = padding), and `ModalityTokenizer` adds a class token and learned position and
modality-type embeddings.

Token order, which attention-map visualizers rely on (position 0 is always the class token, so the
tokenizer's token n is at position n + 1):
- `patch`: the image zero-padded at the bottom/right to a multiple of patch_size, tokens row-major over
  the ceil(H/p) x ceil(W/p) grid of p x p patches (ViT, Dosovitskiy et al. 2021).
- `cnn`: three 3x3 stride-2 convolutions; tokens row-major over the final feature map
  (ceil(H/8) x ceil(W/8)).
- `cnn16`: four 3x3 stride-2 convolutions, like the Relation Network's CNN (Santoro et al. 2017);
  tokens row-major over the ceil(H/16) x ceil(W/16) feature map (5 x 5 for Sort-of-CLEVR's 75 x 75).
- `tokens`: one token per id (0 = padding), in order.
- `bow`: one token, a projection of log(1 + counts) of a bag-of-words count vector.
- `vector`: one token, a projection of a feature vector (e.g. Sort-of-CLEVR's 11-bit question).
- `audio`: the log-mel spectrogram [T, mels] of the waveform (`log_mel_spectrogram`), zero-padded to a
  multiple of the patch size, tokens row-major over the (time patch, mel patch) grid (AST, Gong et
  al. 2021, without overlap).
- `strokes`: one token per pen point (dx, dy, pen state); all-zero rows are padding.
"""
import functools

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from mmjax.models import fast_ops
from mmjax.models.norms import BatchStatsNorm

TOKENIZERS = ("patch", "cnn", "cnn16", "tokens", "bow", "vector", "audio", "strokes")
CNN_LAYERS = {"cnn": 3, "cnn16": 4}  # stride-2 convs of each CNN tokenizer: 2**layers px a token


def _pad_to_multiple(x, sizes):
  """Zero-pads axes 1, 2, ... of x at their end to multiples of sizes."""
  pads = [(0, 0)] + [(0, -n % s) for n, s in zip(x.shape[1:], sizes)]
  pads += [(0, 0)] * (x.ndim - len(pads))
  return jnp.pad(x, pads)


def _as_image(x):
  return x[..., None] if x.ndim == 3 else x


def _grid_tokens(features):
  """[B, h, w, width] feature map -> [B, h * w, width] row-major tokens, all valid."""
  b, h, w, width = features.shape
  return features.reshape(b, h * w, width), jnp.ones((b, h * w), bool)


def hertz_to_mel(hertz):
  """The HTK mel scale, 1127 ln(1 + f / 700), as tf.signal uses."""
  return 1127.0 * np.log1p(np.asarray(hertz, np.float64) / 700.0)


def mel_filterbank(num_mel_bins: int, fft_length: int, sample_rate: float, lower_hertz: float,
                   upper_hertz: float):
  """[fft_length // 2 + 1, num_mel_bins] triangular filters, linear in mel, peak 1 (HTK style).

  Filter m rises from mel edge m to m + 1 and falls to m + 2, with num_mel_bins + 2 edges evenly
  spaced in mel between lower_hertz and upper_hertz; the DC bin gets no weight.
  """
  num_bins = fft_length // 2 + 1
  bin_mel = hertz_to_mel(np.linspace(0.0, sample_rate / 2, num_bins))[1:, None]
  edges = np.linspace(hertz_to_mel(lower_hertz), hertz_to_mel(upper_hertz), num_mel_bins + 2)
  lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
  rising = (bin_mel - lower) / (center - lower)
  falling = (upper - bin_mel) / (upper - center)
  weights = np.maximum(0.0, np.minimum(rising, falling))
  return np.concatenate([np.zeros((1, num_mel_bins)), weights]).astype(np.float32)


def log_mel_spectrogram(waveform, sample_rate: float = 8000.0, frame_length: int = 256,
                        frame_step: int = 128, num_mel_bins: int = 32, lower_hertz: float = 20.0,
                        upper_hertz: float = 4000.0, eps: float = 1e-6):
  """log(|rfft(hann * frame)|^2 @ mel_filterbank + eps) of waveforms [B, S] -> [B, frames, mels].

  Frames start every frame_step samples and are not padded at the end (frames = 1 + (S - L) // step);
  the Hann window is periodic and the FFT length is frame_length, as in tf.signal.stft's defaults.
  """
  num_frames = 1 + (waveform.shape[-1] - frame_length) // frame_step
  if num_frames < 1:
    raise ValueError(f"audio of {waveform.shape[-1]} samples is shorter than one frame "
                     f"({frame_length} samples)")
  starts = np.arange(num_frames)[:, None] * frame_step + np.arange(frame_length)[None]
  window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(frame_length) / frame_length)
  frames = waveform[..., starts] * window.astype(np.float32)
  power = jnp.abs(jnp.fft.rfft(frames, n=frame_length)) ** 2
  mel = power @ mel_filterbank(num_mel_bins, frame_length, sample_rate, lower_hertz, upper_hertz)
  return jnp.log(mel + eps)


class PatchTokenizer(nn.Module):
  """Non-overlapping p x p image patches, each linearly embedded (a strided convolution)."""
  width: int
  patch_size: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, image):
    p = self.patch_size
    image = _pad_to_multiple(_as_image(image).astype(self.dtype), (p, p))
    return _grid_tokens(nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID",
                                dtype=self.dtype, name="embedding",
                                conv_general_dilated=fast_ops.conv_general_dilated)(image))


CNN_NORMS = ("none", "batch", "layer")


def _cnn_norm(kind, dtype, name):
  """The normalisation after each hidden conv of a CNN tokenizer (CNN_NORMS): `batch` is batch norm
  with the statistics of the batch it sees (norms.BatchStatsNorm, as the Relation Network's
  CNN), `layer` a LayerNorm over each position's channels."""
  if kind == "none":
    return lambda x: x
  if kind == "batch":
    return BatchStatsNorm(dtype=dtype, name=name)
  if kind == "layer":
    return nn.LayerNorm(dtype=dtype, name=name)
  raise ValueError(f"unknown cnn_norm {kind!r}; use one of {', '.join(CNN_NORMS)}")


class CnnTokenizer(nn.Module):
  """A small CNN's feature map as tokens: `layers` 3x3 stride-2 convolutions (32, 64, 64, ...,
  width channels; `norm` (CNN_NORMS) and ReLU between them)."""
  width: int
  dtype: jnp.dtype = jnp.float32
  layers: int = 3
  norm: str = "none"

  @nn.compact
  def __call__(self, image):
    x = _as_image(image).astype(self.dtype)
    hidden = (32,) + (64,) * (self.layers - 2)
    for i, channels in enumerate(hidden):
      x = nn.Conv(channels, (3, 3), strides=(2, 2), dtype=self.dtype, name=f"conv{i}")(x)
      x = nn.relu(_cnn_norm(self.norm, self.dtype, f"norm{i}")(x))
    return _grid_tokens(nn.Conv(self.width, (3, 3), strides=(2, 2), dtype=self.dtype,
                                name=f"conv{len(hidden)}")(x))


class AudioTokenizer(nn.Module):
  """Waveform [B, S] -> log-mel spectrogram -> p x p (time x mel) patches, linearly embedded."""
  width: int
  patch_size: int = 8
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, waveform):
    spectrogram = log_mel_spectrogram(waveform.astype(jnp.float32))[..., None]
    return PatchTokenizer(self.width, self.patch_size, self.dtype, name="patches")(spectrogram)


class StrokeTokenizer(nn.Module):
  """One token per pen point from (dx, dy, pen state) and the pen position (running sum of dx, dy)."""
  width: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, strokes):
    if strokes.ndim != 3 or strokes.shape[-1] != 3:
      raise ValueError(f"strokes must be [B, T, 3] (dx, dy, pen state), got {strokes.shape}")
    valid = jnp.any(strokes != 0, axis=-1)
    position = jnp.cumsum(strokes[..., :2], axis=1)
    x = jnp.concatenate([strokes, position], axis=-1).astype(self.dtype)
    x = nn.gelu(nn.Dense(self.width, dtype=self.dtype, name="fc1")(x))
    return nn.Dense(self.width, dtype=self.dtype, name="fc2")(x), valid


class TokenIdTokenizer(nn.Module):
  """Learned embeddings of token ids [B, L]; id 0 is padding."""
  width: int
  vocab_size: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, ids):
    if self.vocab_size <= 0:
      raise ValueError("the `tokens` tokenizer needs config.model.vocab_size > 0")
    ids = ids.astype(jnp.int32)
    embedded = nn.Embed(self.vocab_size, self.width, dtype=self.dtype, name="embedding")(ids)
    return embedded, ids != 0


class VectorTokenizer(nn.Module):
  """A feature vector [B, D] as one token; `log_counts` first maps counts c to log(1 + c) (bow)."""
  width: int
  log_counts: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], -1).astype(jnp.float32)
    if self.log_counts:
      x = jnp.log1p(jnp.maximum(x, 0.0))
    token = nn.Dense(self.width, dtype=self.dtype, name="embedding")(x.astype(self.dtype))
    return token[:, None], jnp.ones((x.shape[0], 1), bool)


class ModalityTokenizer(nn.Module):
  """Tokens of one modality: [class token, tokenizer tokens] + position + modality-type embeddings.

  Returns tokens [B, 1 + N, width] and validity [B, 1 + N] (the class token is always valid).
  """
  kind: str
  width: int
  patch_size: int = 8
  vocab_size: int = 0
  dtype: jnp.dtype = jnp.float32
  cnn_norm: str = "none"

  def _tokenizer(self):
    kinds = {
        "patch": lambda: PatchTokenizer(self.width, self.patch_size, self.dtype, name="patch"),
        **{kind: functools.partial(CnnTokenizer, self.width, self.dtype, layers=layers,
                                 norm=self.cnn_norm, name=kind)
           for kind, layers in CNN_LAYERS.items()},
        "tokens": lambda: TokenIdTokenizer(self.width, self.vocab_size, self.dtype, name="tokens"),
        "bow": lambda: VectorTokenizer(self.width, True, self.dtype, name="bow"),
        "vector": lambda: VectorTokenizer(self.width, False, self.dtype, name="vector"),
        "audio": lambda: AudioTokenizer(self.width, dtype=self.dtype, name="audio"),
        "strokes": lambda: StrokeTokenizer(self.width, self.dtype, name="strokes"),
    }
    if self.kind not in kinds:
      raise ValueError(f"unknown tokenizer {self.kind!r}; use one of {', '.join(TOKENIZERS)}")
    return kinds[self.kind]()

  @nn.compact
  def __call__(self, x):
    tokens, valid = self._tokenizer()(x)
    b, n, _ = tokens.shape
    init = nn.initializers.normal(0.02)
    cls = self.param("cls", nn.initializers.zeros, (1, 1, self.width))
    tokens = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, self.width)).astype(tokens.dtype),
                              tokens], axis=1)
    tokens = tokens + self.param("position_embedding", init, (1, n + 1, self.width))
    tokens = tokens + self.param("type_embedding", init, (self.width,))
    valid = jnp.concatenate([jnp.ones((b, 1), bool), valid], axis=1)
    return tokens.astype(self.dtype), valid
