"""Faster XLA:CPU lowerings for small CNNs' pooling (and optionally first conv) layers and for
patch embeddings.

Measured on a 2-core AVX-512 CPU (benchmarks/README.md): the gradient of `nn.max_pool` lowers to
select_and_scatter, which XLA:CPU runs slowly, and the weight gradient of a conv whose input has one
channel (a grayscale image) lowers to an Eigen convolution with batch 1 and a window as large as the
image, ~7x slower than the same sums as one matmul. Here non-overlapping pooling is a reshape and a
max, and such a conv keeps XLA's forward and input gradient but takes its weight gradient as
im2col patches times the output gradient. A conv whose stride equals its kernel size (ViT's patch
embedding) is a reshape and one matmul (`patch_conv`).

Use `conv_general_dilated` as `nn.Conv(..., conv_general_dilated=conv_general_dilated)`: params,
their names and initialisation stay nn.Conv's, so checkpoints and configs are unaffected.
"""
import contextlib
import functools

import jax
import jax.numpy as jnp
from jax import lax

from mmjax.models import onednn

# Input channels up to which the matmul weight gradient is used; 0 turns it off. First measured
# (2026-11-26, one core, 256 images, 5x5 kernels, XLA's convs in YNNPACK): 1 channel 7x faster than
# XLA's, 3 channels no faster, 32 channels 1.6x slower. Since mmjax.runtime keeps convolutions in
# Eigen (2026-11-27, 2 threads): XLA's own conv1 weight gradient took 2.1-2.8 ms against 4.8-10.5 ms
# for the matmul one, and the whole DANN step 60.7 against 64.0 ms (medians of 9, alternating), so
# it is off by default.
MATMUL_GRAD_MAX_CHANNELS = 0
_NHWC = ("NHWC", "HWIO", "NHWC")
# Whether float32 NHWC convs go to oneDNN's custom calls on CPU (mmjax.models.onednn; XLA's conv on
# GPU and TPU). DANN digits step, 2-core AVX-512 VM, 2026-11-28: see benchmarks/README.md.
USE_ONEDNN = True
# Whether `dot_general` (nn.Dense's hook, used by the Transformer blocks) takes float32 2-D dense
# layers' weight gradients on oneDNN's sgemm on CPU (mmjax.models.onednn.matmul_tn). Fusion
# Transformer step, 2-core AVX-512 VM, 2026-11-28: see benchmarks/README.md. LeNet and the domain
# classifiers keep XLA's dots: in the DANN step the custom calls made it 2-5% slower.
USE_ONEDNN_DENSE_GRAD = True


@contextlib.contextmanager
def onednn_calls(enabled: bool, clear_caches: bool = True):
  """Sets USE_ONEDNN and USE_ONEDNN_DENSE_GRAD inside the block, e.g. `with onednn_calls(False):`
  for XLA's convolutions and dots: the same math with no custom call.

  Both are read when a function is traced, and JAX's trace caches do not key on them: a function
  traced before the block would keep its old ops inside it, and one traced inside would keep the
  block's after it. So by default JAX's caches are cleared when the block changes a setting, on
  entering and on leaving: everything jitted is traced and compiled again at its next call (XLA's
  persistent compilation cache, where enabled, still serves the compiles). `clear_caches=False`
  is for a caller whose functions are traced only inside such blocks (a benchmark's own step
  functions), so that its compiled steps survive from one block to the next."""
  global USE_ONEDNN, USE_ONEDNN_DENSE_GRAD
  previous = (USE_ONEDNN, USE_ONEDNN_DENSE_GRAD)
  changed = clear_caches and any(bool(p) != bool(enabled) for p in previous)
  if changed:
    jax.clear_caches()
  USE_ONEDNN = USE_ONEDNN_DENSE_GRAD = bool(enabled)
  try:
    yield
  finally:
    USE_ONEDNN, USE_ONEDNN_DENSE_GRAD = previous
    if changed:
      jax.clear_caches()


def _dense_dot(x, kernel, precision):
  return lax.dot_general(x, kernel, (((1,), (0,)), ((), ())), precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def dense_dot(x, kernel, precision=None):
  """x [M, K] @ kernel [K, N] whose kernel gradient x^T dy is `onednn.matmul_tn` (oneDNN's sgemm
  on CPU when usable; XLA's dot otherwise). The forward and the input gradient dy kernel^T are
  XLA's dots, as autodiff would make them. Reverse mode to any order; no forward mode (jvp)."""
  return _dense_dot(x, kernel, precision)


def _dense_dot_fwd(x, kernel, precision):
  return _dense_dot(x, kernel, precision), (x, kernel)


def _dense_dot_bwd(precision, residuals, g):
  x, kernel = residuals
  dx = lax.dot_general(g, kernel, (((1,), (1,)), ((), ())), precision=precision)
  return dx, onednn.matmul_tn(x, g)


dense_dot.defvjp(_dense_dot_fwd, _dense_dot_bwd)


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
  """`lax.dot_general` with nn.Dense's hook signature (`nn.Dense(..., dot_general=dot_general)`):
  a float32 2-D [M, K] x [K, N] product runs as `dense_dot` when USE_ONEDNN_DENSE_GRAD and oneDNN
  is usable, every other product as lax's. Params, their names and values are nn.Dense's."""
  (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
  if (USE_ONEDNN_DENSE_GRAD and lhs.ndim == 2 and rhs.ndim == 2
      and tuple(lhs_contract) == (1,) and tuple(rhs_contract) == (0,)
      and not tuple(lhs_batch) and not tuple(rhs_batch) and preferred_element_type is None
      and lhs.dtype == rhs.dtype == jnp.float32 and onednn.usable()):
    return dense_dot(lhs, rhs, precision)
  return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                         preferred_element_type=preferred_element_type)


def max_pool(x, window: tuple[int, int]):
  """`nn.max_pool(x, window, strides=window)` (VALID) on NHWC input, as a reshape and a max.

  Values and derivatives are `nn.max_pool`'s, bit for bit, to every order and in forward mode, for
  finite inputs: where inputs of a window tie for the maximum, the derivative goes to the first of
  them in row-major window order, as XLA's select_and_scatter and PyTorch's max_pool2d send it. A
  NaN in a window gives NaN as the max does, and takes the derivative (nn.max_pool's goes to the
  largest number); under differentiation a window of signed zeros may give -0.0 for 0.0. The
  derivative rule (`_window_max`) finds each window's maximum and the position of its first
  maximum in one elementwise pass over the window's strided slices, then routes the tangent with a
  one-hot select; it never tests inputs for equality with a maximum computed elsewhere (see there).
  """
  n, h, w, c = x.shape
  ph, pw = window
  oh, ow = h // ph, w // pw
  if not (oh and ow):
    raise ValueError(f"max_pool window {window} is larger than the input's {h}x{w} pixels")
  x = x[:, :oh * ph, :ow * pw]  # VALID pooling drops the incomplete last row/column
  return _window_max(x, ph, pw)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _window_max(x, ph, pw):
  n, h, w, c = x.shape
  return x.reshape(n, h // ph, ph, w // pw, pw, c).max(axis=(2, 4))


def _max_and_first_position(x, ph, pw):
  """Each window's maximum and the position a * pw + b of its first maximum (int8, or int32 past
  127 positions), from one chain of selects over the window's strided slices."""
  dtype = _position_dtype(ph, pw)
  m = x[:, 0::ph, 0::pw]
  position = jnp.zeros(m.shape, dtype)
  for k in range(1, ph * pw):
    a, b = divmod(k, pw)
    candidate = x[:, a::ph, b::pw]
    # Strictly larger: a tie keeps the earlier position. A NaN is taken, so it propagates as
    # in the max itself.
    later_and_larger = (candidate > m) | jnp.isnan(candidate)
    m = jnp.where(later_and_larger, candidate, m)
    position = jnp.where(later_and_larger, dtype(k), position)
  return m, position


def _position_dtype(ph, pw):
  return jnp.int8 if ph * pw <= 127 else jnp.int32


@_window_max.defjvp
def _window_max_jvp(ph, pw, primals, tangents):
  # The tangent of each window's first maximum. Until 2026-11-28 this was JAX's reduce-max rule
  # (the tangent averaged over all tied maxima, found as x == max(x)); under jit XLA:CPU may
  # recompute a fused producer of x (a batch norm, say) separately for the max and for each
  # comparison, with rounding that differs by an ulp, so x == max(x) could miss a window's maximum
  # and its gradient was lost (jit against eager differed by ~1 in float64 for a batch norm before
  # the pool). Here the maximum and its position come from the same chain of selects; if XLA
  # recomputes that chain, the position can only move to an input within an ulp of the maximum.
  (x,), (t,) = primals, tangents
  n, h, w, c = x.shape
  ph_pw = (1, 1, ph, 1, pw, 1)
  m, position = _max_and_first_position(x, ph, pw)
  window_position = (lax.broadcasted_iota(position.dtype, ph_pw, 2) * pw
                     + lax.broadcasted_iota(position.dtype, ph_pw, 4))
  first = position[:, :, None, :, None, :] == window_position
  t = t.reshape(n, h // ph, ph, w // pw, pw, c)
  return m, jnp.where(first, t, jnp.zeros((), t.dtype)).sum(axis=(2, 4))


def channel_major_patches(x, kernel_hw: tuple[int, int]):
  """im2col, transposed: [n, h, w, c] -> [kh * kw * c, n * oh * ow], rows ordered (kh, kw, c).

  Built channel-major so that every copied run is a row of the image, not one pixel's channels.
  """
  kh, kw = kernel_hw
  oh, ow = x.shape[1] - kh + 1, x.shape[2] - kw + 1
  planes = x.transpose(3, 0, 1, 2)
  rows = [planes[:, :, i:i + oh, j:j + ow] for i in range(kh) for j in range(kw)]
  return jnp.stack(rows).reshape(kh * kw * x.shape[3], -1)


def _xla_conv(x, kernel, precision):
  return lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=_NHWC,
                                  precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_valid(x, kernel, precision=None):
  """Stride-1 VALID convolution, NHWC input and HWIO kernel, with a matmul weight gradient."""
  return _xla_conv(x, kernel, precision)


def _conv_valid_fwd(x, kernel, precision):
  return _xla_conv(x, kernel, precision), (x, kernel)


def _conv_valid_bwd(precision, residuals, g):
  """dW = patches g; dx is XLA's (dropped entirely when x needs no gradient, like input images)."""
  x, kernel = residuals
  kh, kw, _, features = kernel.shape
  d_kernel = jnp.dot(channel_major_patches(x, (kh, kw)), g.reshape(-1, features),
                     precision=precision, preferred_element_type=jnp.float32)
  _, conv_vjp = jax.vjp(lambda v: _xla_conv(v, kernel, precision), x)
  return conv_vjp(g)[0], d_kernel.reshape(kernel.shape).astype(kernel.dtype)


conv_valid.defvjp(_conv_valid_fwd, _conv_valid_bwd)


def _is_nhwc_undilated(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers,
                       feature_group_count, batch_group_count) -> bool:
  """Whether a conv is an undilated, ungrouped 2-D NHWC x HWIO one (any stride and padding)."""
  if lhs.ndim != 4 or feature_group_count != 1 or batch_group_count != 1:
    return False
  ones = (None, (1, 1), [1, 1])
  if lhs_dilation not in ones or rhs_dilation not in ones:
    return False
  nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
  return lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == nhwc


def patch_conv(x, kernel, precision=None):
  """A VALID conv whose stride equals its kernel size (ViT's patch embedding), NHWC x HWIO, as
  patches times the kernel: one [patches, p * q * c] x [p * q * c, features] matmul. XLA:CPU ran
  the strided conv and its gradient ~10x slower than this matmul (benchmarks/README.md)."""
  n, h, w, c = x.shape
  p, q, _, features = kernel.shape
  oh, ow = h // p, w // q
  if not (oh and ow):
    raise ValueError(f"patch conv: kernel {p}x{q} is larger than the input's {h}x{w} pixels")
  patches = x[:, :oh * p, :ow * q].reshape(n, oh, p, ow, q, c).transpose(0, 1, 3, 2, 4, 5)
  y = jnp.dot(patches.reshape(n * oh * ow, p * q * c), kernel.reshape(p * q * c, features),
              precision=precision)
  return y.reshape(n, oh, ow, features)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated` (the signature nn.Conv's `conv_general_dilated` hook calls) that
  runs float32 2-D NHWC convs on oneDNN when lowered for CPU (`mmjax.models.onednn`, if
  USE_ONEDNN and it is usable), otherwise stride-1 2-D NHWC convs of at most
  MATMUL_GRAD_MAX_CHANNELS input channels as
  `conv_valid` after explicit padding, and unpadded convs with stride equal to their kernel size
  (patch embeddings) as `patch_conv`; every other conv is lax's."""
  plain = preferred_element_type is None and _is_nhwc_undilated(
      lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
      batch_group_count)
  unpadded = padding == "VALID" if isinstance(padding, str) else not any(
      lo or hi for lo, hi in padding)
  if plain and unpadded and tuple(window_strides) == tuple(rhs.shape[:2]):
    return patch_conv(lhs, rhs, precision)
  if plain and USE_ONEDNN and onednn.supports(lhs, rhs, preferred_element_type):
    return onednn.conv(lhs, rhs, window_strides, padding, precision=precision)
  if (not plain or lhs.shape[3] > MATMUL_GRAD_MAX_CHANNELS
      or tuple(window_strides) != (1, 1)):
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
        batch_group_count=batch_group_count, precision=precision,
        preferred_element_type=preferred_element_type)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
  (top, bottom), (left, right) = padding
  if min(top, bottom, left, right) < 0:
    raise ValueError(f"negative conv padding {padding} is not supported")
  if top or bottom or left or right:
    lhs = jnp.pad(lhs, ((0, 0), (top, bottom), (left, right), (0, 0)))
  return conv_valid(lhs, rhs, precision)
