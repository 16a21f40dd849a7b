"""The fast conv/pool lowerings against XLA's plain ops, and the bfloat16 compute path."""
import pathlib
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from mmjax import config as config_lib
from mmjax import methods
from mmjax.models import LeNet, fast_ops
from mmjax.train import optim, steps

REPO = pathlib.Path(__file__).resolve().parents[1]
NHWC = ("NHWC", "HWIO", "NHWC")


def _close_trees(a, b, rtol, atol):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32),
                               rtol=rtol, atol=atol)


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (2, 9, 7, 3)])
def test_max_pool_matches_reduce_window_values_and_gradients(shape):
  x = jax.random.normal(jax.random.PRNGKey(0), shape)  # continuous values: no ties
  plain = lambda v: nn.max_pool(v, (2, 2), strides=(2, 2))  # noqa: E731
  np.testing.assert_array_equal(fast_ops.max_pool(x, (2, 2)), plain(x))
  weights = jax.random.normal(jax.random.PRNGKey(1), plain(x).shape)
  grad = lambda pool: jax.grad(lambda v: jnp.sum(pool(v) * weights))(x)  # noqa: E731
  np.testing.assert_array_equal(grad(lambda v: fast_ops.max_pool(v, (2, 2))), grad(plain))


@pytest.mark.parametrize("window,shape", [((2, 2), (3, 8, 6, 4)), ((3, 2), (2, 10, 7, 3))])
def test_max_pool_derivatives_with_ties_are_nn_max_pools(window, shape):
  """Ties send the gradient to the window's first maximum (a numpy reference), and every
  derivative is nn.max_pool's (XLA's reduce_window and select_and_scatter) bit for bit: gradient,
  second order, forward mode."""
  rng = np.random.default_rng(0)
  x = np.round(rng.normal(size=shape) * 2) / 2  # many ties within windows
  x[0, :4] = 0.0  # a flat region (an image's background), 4- and 6-way ties
  x = jnp.asarray(x, jnp.float32)
  fast = lambda v: fast_ops.max_pool(v, window)  # noqa: E731
  plain = lambda v: nn.max_pool(v, window, strides=window)  # noqa: E731
  np.testing.assert_array_equal(fast(x), plain(x))
  weights = jnp.asarray(rng.normal(size=plain(x).shape), jnp.float32)
  grad = jax.jit(jax.grad(lambda v: jnp.sum(fast(v) * weights)))(x)
  # numpy: each window's weight goes to its first input (row-major) equal to its maximum.
  (ph, pw), xs = window, np.asarray(x)
  want = np.zeros_like(xs)
  for i in range(shape[1] // ph):
    for j in range(shape[2] // pw):
      patch = xs[:, i * ph:(i + 1) * ph, j * pw:(j + 1) * pw].reshape(shape[0], ph * pw, -1)
      first = patch.argmax(axis=1)  # numpy's argmax takes the first maximum
      for n in range(shape[0]):
        for c in range(shape[3]):
          a, b = divmod(first[n, c], pw)
          want[n, i * ph + a, j * pw + b, c] = weights[n, i, j, c]
  np.testing.assert_array_equal(grad, want)
  # In the flat region the first window's 4- or 6-way tie: all its weight on its top-left input.
  first_window = np.asarray(grad)[0, :ph, :pw, 0].ravel()
  assert first_window[0] == weights[0, 0, 0, 0] != 0 and not np.any(first_window[1:])
  np.testing.assert_array_equal(grad, jax.grad(lambda v: jnp.sum(plain(v) * weights))(x))
  meta = lambda pool: lambda v: jnp.sum(  # noqa: E731
      jax.grad(lambda u: jnp.sum(jnp.sin(pool(u)) * weights))(v) ** 2 * v)
  np.testing.assert_array_equal(jax.grad(meta(fast))(x), jax.grad(meta(plain))(x))
  tangent = jnp.asarray(rng.normal(size=shape), jnp.float32)
  np.testing.assert_array_equal(jax.jvp(fast, (x,), (tangent,))[1],
                                jax.jvp(plain, (x,), (tangent,))[1])


@pytest.mark.parametrize("relu", [False, True])
def test_max_pool_gradient_after_a_fused_batch_norm(relu):
  """A batch norm before the pool: XLA:CPU fuses the norm into the pool's derivative ops and may
  recompute it in each with rounding an ulp apart. The earlier rule found maxima as x == max(x),
  and there its jitted gradient was off by up to 3.4 (jit against eager, float64; 1428 of 4704
  windows lost theirs). Checked against nn.max_pool's gradient, jitted, and eager."""
  from mmjax.models import norms  # noqa: PLC0415
  rng = np.random.default_rng(0)
  with jax.enable_x64(True):
    x = jnp.asarray(rng.normal(size=(6, 28, 28, 4)))
    scale, bias = jnp.ones(4, jnp.float64), jnp.full(4, 0.1)
    weights = jnp.asarray(rng.normal(size=(6, 14, 14, 4)))
    loss = lambda pool: lambda v: jnp.sum(  # noqa: E731
        pool(norms.batch_stats_norm(v, scale, bias, 1e-3, relu)) * weights)
    fast = loss(lambda y: fast_ops.max_pool(y, (2, 2)))
    plain = loss(lambda y: nn.max_pool(y, (2, 2), strides=(2, 2)))
    want = jax.jit(jax.grad(plain))(x)
    np.testing.assert_allclose(jax.jit(jax.grad(fast))(x), want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(jax.grad(fast)(x), want, rtol=0, atol=1e-12)


def _numpy_conv(x, w):
  """Direct sum over the kernel window: the definition of a stride-1 VALID NHWC/HWIO conv."""
  kh, kw = w.shape[:2]
  oh, ow = x.shape[1] - kh + 1, x.shape[2] - kw + 1
  out = np.zeros((x.shape[0], oh, ow, w.shape[3]))
  for i in range(kh):
    for j in range(kw):
      out += np.einsum("nhwc,co->nhwo", x[:, i:i + oh, j:j + ow], w[i, j])
  return out


@pytest.mark.parametrize("padding,channels", [("VALID", 1), ("SAME", 1), (((1, 0), (2, 1)), 1),
                                              ("VALID", 3)])
def test_conv_matches_definition_and_xla_gradients(padding, channels, monkeypatch):
  # The matmul weight gradient is off by default (MATMUL_GRAD_MAX_CHANNELS = 0); turned on here for
  # 1-channel inputs so that its dispatch and padding are checked too.
  monkeypatch.setattr(fast_ops, "MATMUL_GRAD_MAX_CHANNELS", 1)
  kx, kw, kg = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(kx, (2, 9, 8, channels))
  w = jax.random.normal(kw, (3, 5, channels, 6))
  pads = lax.padtype_to_pads(x.shape[1:3], w.shape[:2], (1, 1), padding) if isinstance(
      padding, str) else padding
  plain = lambda x, w: lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=NHWC)  # noqa: E731
  if channels <= fast_ops.MATMUL_GRAD_MAX_CHANNELS:
    fast = lambda x, w: fast_ops.conv_general_dilated(x, w, (1, 1), padding,  # noqa: E731
                                                      dimension_numbers=NHWC)
  else:  # past the dispatch threshold conv_valid still computes the same conv
    fast = lambda x, w: fast_ops.conv_valid(jnp.pad(x, ((0, 0), *pads, (0, 0))), w)  # noqa: E731
  y = fast(x, w)
  padded = np.pad(np.asarray(x, np.float64), ((0, 0), *pads, (0, 0)))
  np.testing.assert_allclose(y, _numpy_conv(padded, np.asarray(w, np.float64)),
                             rtol=1e-5, atol=1e-5)
  g = jax.random.normal(kg, y.shape)
  grads = lambda f: jax.grad(lambda x, w: jnp.sum(f(x, w) * g), argnums=(0, 1))(x, w)  # noqa: E731
  _close_trees(grads(fast), grads(plain), rtol=1e-5, atol=1e-4)


def test_conv_hands_other_kinds_to_xla():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 9, 4))
  w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 2, 4))
  kwargs = dict(dimension_numbers=NHWC, feature_group_count=2)
  np.testing.assert_array_equal(
      fast_ops.conv_general_dilated(x, w, (2, 2), "SAME", **kwargs),
      lax.conv_general_dilated(x, w, (2, 2), "SAME", **kwargs))


@pytest.mark.parametrize("shape,kernel", [((2, 16, 16, 3), (4, 4)), ((2, 17, 14, 2), (5, 3))])
def test_patch_conv_matches_xla_strided_conv_values_and_gradients(shape, kernel):
  """A stride-equals-kernel VALID conv (patch embedding) runs as one matmul, with XLA's values and
  gradients; pixels past the last whole patch are dropped as VALID does (17 rows, 5-row patches)."""
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  w = jax.random.normal(jax.random.PRNGKey(1), kernel + (shape[3], 6))
  fast = lambda a, b: fast_ops.conv_general_dilated(a, b, kernel, "VALID", dimension_numbers=NHWC)
  plain = lambda a, b: lax.conv_general_dilated(a, b, kernel, "VALID", dimension_numbers=NHWC)
  assert "conv_general_dilated" not in str(jax.make_jaxpr(fast)(x, w))
  np.testing.assert_allclose(fast(x, w), plain(x, w), rtol=1e-5, atol=1e-5)
  loss = lambda f: jax.grad(lambda a, b: jnp.sum(jnp.sin(f(a, b))), argnums=(0, 1))(x, w)
  _close_trees(loss(fast), loss(plain), rtol=1e-4, atol=1e-4)  # sums of ~50 terms of size ~5
  # Padded or overlapping strided convs stay XLA's.
  for stride, padding in ((kernel, "SAME"), ((1, 1), "VALID"), ((2, 2), "VALID")):
    jaxpr = str(jax.make_jaxpr(lambda a, b: fast_ops.conv_general_dilated(
        a, b, stride, padding, dimension_numbers=NHWC))(x, w))
    assert "conv_general_dilated" in jaxpr


@pytest.mark.parametrize("kwargs", [{}, dict(channels=(20, 50), hidden=500, features=256,
                                             dropout=0.5, bottleneck_norm=True,
                                             center_inputs=True)])
def test_fast_lenet_has_the_plain_params_outputs_and_gradients(kwargs):
  """The fast LeNet (its convs' biases added after the max-pools, lenet.BIAS_AFTER_POOL) against
  nn.Conv, relu and nn.max_pool: the same params, outputs and gradients, with nonzero conv biases,
  and with TLL's channel dropout (the same mask) and batch norm in training mode."""
  x = jax.random.uniform(jax.random.PRNGKey(0), (6, 28, 28, 1))
  fast, plain = LeNet(**kwargs), LeNet(fast_ops=False, **kwargs)
  variables = fast.init(jax.random.PRNGKey(1), x)
  _close_trees(variables, plain.init(jax.random.PRNGKey(1), x), rtol=0, atol=0)
  params = jax.tree.map(lambda v: v + 0.05 * jnp.cos(jnp.arange(v.size).reshape(v.shape)),
                        variables["params"])
  others = {k: v for k, v in variables.items() if k != "params"}

  def logits(model, p):
    return model.apply({"params": p, **others}, x, train=True,
                       rngs={"dropout": jax.random.PRNGKey(2)}, mutable=list(others))[0]["logits"]

  def loss(model):
    return lambda p: jnp.sum(jnp.sin(logits(model, p)))

  np.testing.assert_allclose(logits(fast, params), logits(plain, params), rtol=1e-5, atol=1e-5)
  _close_trees(jax.grad(loss(fast))(params), jax.grad(loss(plain))(params), rtol=1e-4, atol=1e-5)


def test_tll_lenet_sizes_and_channel_dropout():
  """Transfer-Learning-Library's digits LeNet: its parameter count from the layer sizes, and its
  Dropout2d zeroes whole conv2 channels (a channel's pooled 4x4 map is all zero or all scaled
  by 2)."""
  x = jax.random.uniform(jax.random.PRNGKey(0), (4, 28, 28, 1))
  model = LeNet(channels=(20, 50), hidden=500, features=256, dropout=0.5)
  params = model.init(jax.random.PRNGKey(1), x)["params"]
  expected = ((5 * 5 * 1 * 20 + 20) + (5 * 5 * 20 * 50 + 50) + (4 * 4 * 50 * 500 + 500)
              + (500 * 256 + 256) + (256 * 10 + 10))
  assert sum(v.size for v in jax.tree.leaves(params)) == expected
  assert model.apply({"params": params}, x)["features"].shape == (4, 256)
  eval_out = model.apply({"params": params}, x)["logits"]
  np.testing.assert_array_equal(eval_out, model.apply({"params": params}, x, train=False)["logits"])
  conv2 = lambda train: model.apply({"params": params}, x, train=train,
                                    rngs={"dropout": jax.random.PRNGKey(2)},
                                    capture_intermediates=lambda m, _: isinstance(m, nn.Dropout),
                                    mutable=["intermediates"])[1]["intermediates"]
  dropped = np.asarray(jax.tree.leaves(conv2(True))[0])  # the first Dropout: after conv2
  kept = np.asarray(jax.tree.leaves(conv2(False))[0])
  assert dropped.shape == (4, 4, 4, 50)  # the fast path drops channels after conv2's max-pool
  zero = np.all(dropped == 0, axis=(1, 2))
  assert 0.2 < zero.mean() < 0.8
  alive = np.broadcast_to(~zero[:, None, None, :], dropped.shape)
  np.testing.assert_allclose(dropped[alive], 2 * kept[alive], rtol=1e-6)


def _dann_setup(dtype):
  cfg = config_lib.load_with_overrides(str(REPO / "configs/digits_adapt.py:dann/mnist_usps"),
                                       {"dtype": dtype})
  dann = methods.get_method("dann")
  rng = np.random.default_rng(0)
  batch = {k: {"image": rng.random((8, 28, 28, 1), dtype=np.float32),
               "label": rng.integers(0, 10, 8).astype(np.int32)} for k in ("source", "target")}
  return cfg, dann, dann.build_model(cfg), batch


def test_bfloat16_computes_in_bf16_close_to_fp32_and_keeps_params_state_loss_fp32():
  cfg32, dann, model32, batch = _dann_setup("float32")
  cfg16, _, model16, _ = _dann_setup("bfloat16")
  params = model32.init(jax.random.PRNGKey(0), batch["source"]["image"])["params"]
  images = jnp.concatenate([batch["source"]["image"], batch["target"]["image"]])
  out16 = model16.apply({"params": params}, images, reversal=0.5)
  out32 = model32.apply({"params": params}, images, reversal=0.5)
  assert out16["features"].dtype == jnp.bfloat16  # computed in bf16 ...
  assert out16["logits"].dtype == out16["domain_logits"].dtype == jnp.float32  # ... losses in fp32
  _close_trees(out16, out32, rtol=0.05, atol=0.05)

  def loss_grads(cfg, model):
    loss = dann.make_loss(cfg)
    return jax.grad(lambda p: loss(model, p, batch, jax.random.PRNGKey(1), 0.3)[0])(params)

  g16, g32 = loss_grads(cfg16, model16), loss_grads(cfg32, model32)
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(g16))
  # bf16 keeps ~3 significant digits; after a dozen layers each leaf is within 20%, all within 5%.
  for a, b in zip(jax.tree.leaves(g16), jax.tree.leaves(g32)):
    assert np.linalg.norm(a - b) <= 0.2 * np.linalg.norm(b)
  flat16, flat32 = (np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)]) for g in (g16, g32))
  assert np.linalg.norm(flat16 - flat32) <= 0.05 * np.linalg.norm(flat32)
  tx = optim.make_optimizer(cfg16.optim, 10)
  state = steps.new_state(params, tx)
  state, metrics = jax.jit(steps.make_update(dann.make_loss(cfg16), model16, tx, 10))(
      state, batch, jax.random.PRNGKey(2))
  floats = [x for x in jax.tree.leaves((state.params, state.opt_state)) if x.dtype.kind == "f"]
  assert floats and all(x.dtype == jnp.float32 for x in floats)
  assert metrics["loss"].dtype == jnp.float32


def test_torch_reference_computes_the_engine_dann_loss():
  pytest.importorskip("torch")
  sys.path.insert(0, str(REPO / "benchmarks"))
  import torch_reference  # noqa: PLC0415
  cfg, dann, model, batch = _dann_setup("float32")
  params = model.init(jax.random.PRNGKey(0), batch["source"]["image"])["params"]
  want = dann.make_loss(cfg)(model, params, batch, jax.random.PRNGKey(1), 0.4)[0]
  step = torch_reference.DannStep(batch, cfg, 10, params=jax.device_get(params))
  np.testing.assert_allclose(step.loss(0.4), want, rtol=1e-5)
