"""Faster XLA:CPU lowerings of the conv and pooling layers of small CNNs: same math, same params.

Measured on 2-core AVX-512 CPUs (benchmarks/README.md): the gradient of `nn.max_pool` lowers to
select_and_scatter, which XLA:CPU runs slowly, and Eigen's spatial convolution (which XLA:CPU
uses for a conv and for its weight gradient) reaches a fraction of the speed of a matmul with
the same FLOPs. Here non-overlapping pooling is a reshape and a max, and a stride-1 convolution is
im2col + one matmul whose weight gradient is one more matmul on the saved patches.

Use `conv_general_dilated` as `nn.Conv(..., conv_general_dilated=conv_general_dilated)`: params,
their names and initialisation stay nn.Conv's, so checkpoints and configs are unaffected.
"""
import functools

import jax
import jax.numpy as jnp
from jax import lax


def max_pool(x, window: tuple[int, int]):
  """`nn.max_pool(x, window, strides=window)` (VALID) on NHWC input, as a reshape and a max.

  The values are identical. Where several inputs of a window tie for the maximum, the gradient is
  split among them instead of going to the first one; after a ReLU such ties are zeros, whose
  gradient the ReLU zeroes anyway.
  """
  n, h, w, c = x.shape
  ph, pw = window
  oh, ow = h // ph, w // pw
  if not (oh and ow):
    raise ValueError(f"max_pool window {window} is larger than the input's {h}x{w} pixels")
  x = x[:, :oh * ph, :ow * pw]  # VALID pooling drops the incomplete last row/column
  return x.reshape(n, oh, ph, ow, pw, c).max(axis=(2, 4))


def patches(x, kernel_hw: tuple[int, int]):
  """im2col: [n, h, w, c] -> [n * oh * ow, kh * kw * c], columns ordered (kh, kw, c) like HWIO."""
  n, h, w, _ = x.shape
  kh, kw = kernel_hw
  oh, ow = h - kh + 1, w - kw + 1
  cols = [x[:, i:i + oh, j:j + ow, :] for i in range(kh) for j in range(kw)]
  return jnp.concatenate(cols, axis=-1).reshape(n * oh * ow, -1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_valid(x, kernel, precision=None):
  """Stride-1 VALID convolution, NHWC input and HWIO kernel, as im2col + matmul."""
  return _conv_valid_fwd(x, kernel, precision)[0]


def _conv_valid_fwd(x, kernel, precision):
  kh, kw, _, features = kernel.shape
  cols = patches(x, (kh, kw))
  y = jnp.dot(cols, kernel.reshape(-1, features), precision=precision,
              preferred_element_type=jnp.float32).astype(x.dtype)
  n, h, w, _ = x.shape
  return y.reshape(n, h - kh + 1, w - kw + 1, features), (cols, x, kernel)


def _conv_valid_bwd(precision, residuals, g):
  """dW = patches^T g (a matmul on the saved patches); dx is XLA's transposed convolution, which
  runs at matmul-like speed and is dropped entirely when x needs no gradient (the input images)."""
  cols, x, kernel = residuals
  d_kernel = jnp.dot(cols.T, g.reshape(cols.shape[0], -1), precision=precision,
                     preferred_element_type=jnp.float32)
  _, conv_vjp = jax.vjp(lambda v: lax.conv_general_dilated(
      v, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision=precision), x)
  return conv_vjp(g)[0], d_kernel.reshape(kernel.shape).astype(kernel.dtype)


conv_valid.defvjp(_conv_valid_fwd, _conv_valid_bwd)


def _is_plain_2d(lhs, rhs, window_strides, lhs_dilation, rhs_dilation, dimension_numbers,
                 feature_group_count) -> bool:
  """Whether a conv is the stride-1, undilated, ungrouped NHWC x HWIO kind `conv_valid` handles."""
  if lhs.ndim != 4 or feature_group_count != 1:
    return False
  ones = (None, (1, 1), [1, 1])
  if tuple(window_strides) != (1, 1) or lhs_dilation not in ones or rhs_dilation not in ones:
    return False
  nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
  return lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == nhwc


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated` (the signature nn.Conv's `conv_general_dilated` hook calls) that
  runs stride-1 2-D NHWC convolutions as `conv_valid` after explicit padding; others go to lax."""
  if batch_group_count != 1 or preferred_element_type is not None or not _is_plain_2d(
      lhs, rhs, window_strides, lhs_dilation, rhs_dilation, dimension_numbers,
      feature_group_count):
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
