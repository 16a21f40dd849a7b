"""Attention against plain numpy loops over the formula (masks and dropout included), multi-head
attention against h separately computed heads, the Transformer blocks' masking, the patch tokens'
order and the JAX log-mel spectrogram against tf.signal on a real FSDD recording."""
import io
import os
import pathlib
import tarfile
import wave

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.models.attention import (MultiHeadAttention, causal_mask, combine_masks,
                                    dot_product_attention, padding_mask)
from mmjax.models.tokenizers import PatchTokenizer, log_mel_spectrogram, mel_filterbank
from mmjax.models.transformer import Encoder


def _np_attention(q, k, v, allowed):
  """softmax(q k^T / sqrt(d)) v one (batch, head, query) at a time, over the allowed keys only.

  q [B, Lq, H, D], k and v [B, Lk, H, D], allowed [B, H, Lq, Lk] bool. A query with no allowed key
  gets zero weights and output. Float64.
  """
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  b_size, lq, heads, _ = q.shape
  lk = k.shape[1]
  out = np.zeros(q.shape[:3] + (v.shape[-1],))
  weights = np.zeros((b_size, heads, lq, lk))
  for b in range(b_size):
    for h in range(heads):
      for i in range(lq):
        keys = [j for j in range(lk) if allowed[b, h, i, j]]
        if not keys:
          continue
        scores = np.array([q[b, i, h] @ k[b, j, h] for j in keys]) / np.sqrt(q.shape[-1])
        e = np.exp(scores - scores.max())
        for j, w in zip(keys, e / e.sum()):
          weights[b, h, i, j] = w
          out[b, i, h] += w * v[b, j, h]
  return out, weights


def _random_qkv(rng, lq=5, lk=6, heads=3, depth=4, batch=2):
  q = rng.normal(size=(batch, lq, heads, depth)).astype(np.float32)
  k = rng.normal(size=(batch, lk, heads, depth)).astype(np.float32)
  v = rng.normal(size=(batch, lk, heads, depth)).astype(np.float32)
  return q, k, v


def test_attention_without_mask_matches_numpy():
  q, k, v = _random_qkv(np.random.default_rng(0))
  out, weights = dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v))
  ref_out, ref_weights = _np_attention(q, k, v, np.ones((2, 3, 5, 6), bool))
  np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(weights, ref_weights, rtol=1e-5, atol=1e-6)


def test_attention_with_padding_mask_matches_numpy_and_ignores_padded_keys():
  rng = np.random.default_rng(1)
  q, k, v = _random_qkv(rng)
  query_valid = np.array([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], bool)
  key_valid = np.array([[1, 1, 0, 1, 0, 0], [1, 1, 1, 1, 1, 0]], bool)
  mask = padding_mask(jnp.asarray(query_valid), jnp.asarray(key_valid))
  allowed = np.broadcast_to(query_valid[:, None, :, None] & key_valid[:, None, None, :],
                            (2, 3, 5, 6))
  out, weights = dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask)
  ref_out, ref_weights = _np_attention(q, k, v, allowed)
  np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(weights, ref_weights, rtol=1e-5, atol=1e-6)
  assert np.all(np.asarray(out)[0, 4] == 0)  # a padded query attends to nothing
  # Changing padded keys and values changes nothing.
  k2, v2 = k.copy(), v.copy()
  k2[~key_valid] += 5.0
  v2[~key_valid] -= 3.0
  out2, _ = dot_product_attention(jnp.asarray(q), jnp.asarray(k2), jnp.asarray(v2), mask)
  np.testing.assert_array_equal(out2, out)


def test_attention_with_causal_and_padding_masks_matches_numpy():
  q, k, v = _random_qkv(np.random.default_rng(2), lq=6, lk=6)
  key_valid = np.array([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]], bool)
  mask = combine_masks(padding_mask(jnp.ones((2, 6), bool), jnp.asarray(key_valid)),
                       causal_mask(6))
  allowed = np.zeros((2, 3, 6, 6), bool)
  for i in range(6):
    for j in range(i + 1):
      allowed[:, :, i, j] = key_valid[:, None, j]
  out, weights = dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask)
  ref_out, ref_weights = _np_attention(q, k, v, allowed)
  np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(weights, ref_weights, rtol=1e-5, atol=1e-6)


def test_attention_dropout_drops_weights_and_rescales_the_kept_ones():
  q, k, v = _random_qkv(np.random.default_rng(3))
  rate, rng = 0.5, jax.random.key(7)
  out, weights = dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v),
                                       dropout_rate=rate, dropout_rng=rng)
  _, ref_weights = _np_attention(q, k, v, np.ones((2, 3, 5, 6), bool))
  np.testing.assert_allclose(weights, ref_weights, rtol=1e-5, atol=1e-6)  # returned before dropout
  keep = np.asarray(jax.random.bernoulli(rng, 1 - rate, (2, 3, 5, 6)))
  assert 0 < keep.mean() < 1
  dropped = np.where(keep, ref_weights / (1 - rate), 0.0)
  np.testing.assert_allclose(out, np.einsum("bhqk,bkhd->bqhd", dropped, v), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("self_attention", [False, True])
def test_multi_head_attention_is_separate_heads_concatenated_and_projected(self_attention):
  """Cross- and self-attention (keys is queries) both equal the per-head formula."""
  heads, width = 4, 16
  d = width // heads
  rng = np.random.default_rng(4)
  xq = rng.normal(size=(2, 5, width)).astype(np.float32)
  xk = xq if self_attention else rng.normal(size=(2, 7, width)).astype(np.float32)
  key_valid = np.array([[1] * 7, [1, 1, 1, 0, 0, 0, 0]], bool)[:, :xk.shape[1]]
  mask = padding_mask(jnp.ones((2, 5), bool), jnp.asarray(key_valid))
  module = MultiHeadAttention(num_heads=heads)
  queries = jnp.asarray(xq)
  keys = queries if self_attention else jnp.asarray(xk)
  variables = module.init(jax.random.key(0), queries, keys, mask)
  got, state = module.apply(variables, queries, keys, mask, mutable=["intermediates"])
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])

  heads_out, heads_weights = [], []
  for i in range(heads):
    cols = slice(i * d, (i + 1) * d)
    q = xq @ p["query"]["kernel"][:, cols] + p["query"]["bias"][cols]
    k = xk @ p["key"]["kernel"][:, cols] + p["key"]["bias"][cols]
    v = xk @ p["value"]["kernel"][:, cols] + p["value"]["bias"][cols]
    scores = np.einsum("bqd,bkd->bqk", q, k) / np.sqrt(d)
    scores = np.where(key_valid[:, None, :], scores, -np.inf)
    w = np.exp(scores - scores.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    heads_out.append(np.einsum("bqk,bkd->bqd", w, v))
    heads_weights.append(w)
  expected = np.concatenate(heads_out, -1) @ p["out"]["kernel"] + p["out"]["bias"]
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
  sown = state["intermediates"]["attention_weights"][0]
  np.testing.assert_allclose(sown, np.stack(heads_weights, 1), rtol=1e-5, atol=1e-6)


def test_encoder_respects_padding_and_causal_masks():
  rng = np.random.default_rng(5)
  x = rng.normal(size=(2, 6, 8)).astype(np.float32)
  valid = np.array([[1, 1, 1, 1, 0, 0], [1] * 6], bool)
  encoder = Encoder(depth=2, num_heads=2, mlp_dim=16)
  pad = padding_mask(jnp.asarray(valid), jnp.asarray(valid))
  variables = encoder.init(jax.random.key(0), jnp.asarray(x), pad)
  out = encoder.apply(variables, jnp.asarray(x), pad)
  changed = x.copy()
  changed[0, 4:] = rng.normal(size=(2, 8))  # padded tokens of example 0
  out2 = encoder.apply(variables, jnp.asarray(changed), pad)
  np.testing.assert_allclose(out2[0, :4], out[0, :4], atol=1e-6)
  assert np.abs(np.asarray(out2[0, 4:]) - np.asarray(out[0, 4:])).max() > 1e-3

  causal = causal_mask(6)
  out = encoder.apply(variables, jnp.asarray(x), causal)
  changed = x.copy()
  changed[:, 3] += rng.normal(size=(2, 8))  # not a constant shift, which LayerNorm would undo
  out2 = encoder.apply(variables, jnp.asarray(changed), causal)
  np.testing.assert_allclose(out2[:, :3], out[:, :3], atol=1e-6)  # the past does not see the future
  assert np.abs(np.asarray(out2[:, 3:]) - np.asarray(out[:, 3:])).max() > 1e-3


def test_patch_tokens_are_row_major_linear_embeddings_of_zero_padded_patches():
  p, width = 4, 5
  image = np.random.default_rng(6).uniform(size=(2, 10, 7, 3)).astype(np.float32)
  module = PatchTokenizer(width, p)
  variables = module.init(jax.random.key(0), jnp.asarray(image))
  tokens, valid = module.apply(variables, jnp.asarray(image))
  kernel = np.asarray(variables["params"]["embedding"]["kernel"])  # [p, p, 3, width]
  bias = np.asarray(variables["params"]["embedding"]["bias"])
  padded = np.zeros((2, 12, 8, 3), np.float32)
  padded[:, :10, :7] = image
  expected = [np.einsum("bijc,ijcw->bw", padded[:, r * p:(r + 1) * p, c * p:(c + 1) * p], kernel)
              + bias for r in range(3) for c in range(2)]
  np.testing.assert_allclose(tokens, np.stack(expected, 1), rtol=1e-5, atol=1e-5)
  assert valid.shape == (2, 6) and bool(valid.all())


def _fsdd_waveform(name="7_jackson_0.wav", length=8000):
  """One FSDD recording, scaled to [-1, 1] and zero padded (or cut) to `length` samples."""
  archive = pathlib.Path(os.environ["MMJAX_DATA_DIR"]) / "fsdd" / "recordings.tar.gz"
  with tarfile.open(archive) as tar:
    data = tar.extractfile(f"recordings/{name}").read()
  with wave.open(io.BytesIO(data)) as w:
    assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (8000, 1, 2)
    samples = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768.0
  out = np.zeros(length, np.float32)
  out[:min(length, len(samples))] = samples[:length]
  return out


@pytest.fixture(scope="module")
def tf():
  from mmjax.data import tf_runtime
  tf_runtime.keep_tf_on_cpu()
  return tf_runtime.tf


def test_mel_filterbank_matches_tf_signal(tf):
  got = mel_filterbank(32, 256, 8000.0, 20.0, 4000.0)
  expected = tf.signal.linear_to_mel_weight_matrix(32, 129, 8000, 20.0, 4000.0).numpy()
  np.testing.assert_allclose(got, expected, atol=1e-5)


def test_log_mel_spectrogram_matches_tf_signal_on_a_real_recording(tf):
  waveform = _fsdd_waveform()
  assert np.abs(waveform).max() > 0.05  # a real, audible recording
  got = np.asarray(log_mel_spectrogram(jnp.asarray(waveform[None])))[0]
  stft = tf.signal.stft(waveform, frame_length=256, frame_step=128, fft_length=256,
                        window_fn=tf.signal.hann_window)
  power = tf.abs(stft) ** 2
  mel = tf.matmul(power, tf.signal.linear_to_mel_weight_matrix(32, 129, 8000, 20.0, 4000.0))
  expected = tf.math.log(mel + 1e-6).numpy()
  assert got.shape == expected.shape == (61, 32)
  np.testing.assert_allclose(got, expected, rtol=1e-3, atol=2e-3)
  assert expected.max() - expected.min() > 5  # the comparison spans loud and quiet bins

