"""Batch-statistics norm (mmjax.models.norms): its written-out gradient against autodiff of the
plain forward and against central differences, to second order; conv4's bias-free convs before
it against nn.Conv."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.models import Conv4, norms


def _inputs(shape, dtype, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=shape) * 2 + 1, dtype)
  scale = jnp.asarray(rng.normal(size=shape[-1:]), dtype)
  bias = jnp.asarray(rng.normal(size=shape[-1:]) * 0.3, dtype)
  return x, scale, bias


def _loss(fused, relu, fast=True):
  return lambda x, s, b: jnp.sum(jnp.sin(1.7 * norms.batch_stats_norm(x, s, b, 1e-3, relu, fused,
                                                                        fast)))


def _meta(fused, relu, fast=True):
  """A function of the first gradients, as second-order MAML differentiates."""
  return lambda x, s, b: sum(jnp.sum(g ** 2) for g in jax.grad(_loss(fused, relu, fast),
                                                               (0, 1, 2))(x, s, b))


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("shape", [(6, 5, 5, 4), (9, 3)])
def test_fused_gradient_matches_autodiff_to_second_order(shape, relu, fast):
  with jax.enable_x64(True):
    args = _inputs(shape, np.float64)
    fused = jax.jit(lambda x, s, b: norms.batch_stats_norm(x, s, b, 1e-3, relu, True, fast))
    assert "custom_vjp" in str(jax.make_jaxpr(fused)(*args))
    # Against the plain forward of the other variance formula: the same function.
    np.testing.assert_allclose(fused(*args),
                               norms.batch_stats_norm(*args, 1e-3, relu, False, not fast),
                               rtol=1e-12, atol=1e-12)
    for f in (_loss, _meta):
      got = jax.jit(jax.grad(f(True, relu, fast), (0, 1, 2)))(*args)
      want = jax.grad(f(False, relu, not fast), (0, 1, 2))(*args)
      for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-10 * float(jnp.max(jnp.abs(w))))
  # float32: the same within rounding (inputs of mean 1 and spread 2, as conv outputs here).
  args = _inputs(shape, np.float32, seed=1)
  for f in (_loss, _meta):
    got = jax.jit(jax.grad(f(True, relu, fast), (0, 1, 2)))(*args)
    want = jax.jit(jax.grad(f(False, relu, False), (0, 1, 2)))(*args)
    for g, w in zip(got, want):
      np.testing.assert_allclose(g, w, rtol=0, atol=1e-4 * float(jnp.max(jnp.abs(w))))


def test_fast_variance_accuracy_against_float64():
  """The documented trade: mean(x^2) - mean(x)^2 in float32 loses digits as a channel's mean grows
  against its spread; the two-pass formula does not."""
  rng = np.random.default_rng(5)
  for offset, fast_tol in ((1.0, 1e-5), (30.0, 2e-3)):
    x64 = rng.normal(size=(64, 6, 6, 4)) + offset
    scale, bias = np.ones(4), np.zeros(4)
    want = (x64 - x64.mean((0, 1, 2))) / np.sqrt(x64.var((0, 1, 2)) + 1e-3)
    x = jnp.asarray(x64, jnp.float32)
    args = (jnp.asarray(scale, jnp.float32), jnp.asarray(bias, jnp.float32))
    fast = norms.batch_stats_norm(x, *args, 1e-3, fast_variance=True)
    two_pass = norms.batch_stats_norm(x, *args, 1e-3, fast_variance=False)
    np.testing.assert_allclose(two_pass, want, atol=2e-5)
    np.testing.assert_allclose(fast, want, atol=fast_tol)


def test_fused_gradient_matches_central_differences():
  with jax.enable_x64(True):
    args = _inputs((7, 3, 3, 2), np.float64, seed=2)
    for f in (_loss(True, True), _meta(True, True)):
      grads = jax.grad(f, (0, 1, 2))(*args)
      rng = np.random.default_rng(3)
      direction = [rng.normal(size=a.shape) for a in args]
      eps = 1e-6
      plus = f(*[a + eps * d for a, d in zip(args, direction)])
      minus = f(*[a - eps * d for a, d in zip(args, direction)])
      analytic = sum(jnp.vdot(g, d) for g, d in zip(grads, direction))
      np.testing.assert_allclose(analytic, (plus - minus) / (2 * eps), rtol=1e-6)


def test_conv4_skips_the_bias_before_its_norm_with_the_same_params_and_math():
  x = jnp.asarray(np.random.default_rng(4).normal(size=(6, 28, 28, 1)), jnp.float32)
  for pool in ("stride", "max"):
    fast, plain = Conv4(pool=pool), Conv4(pool=pool, fast_ops=False)
    params = fast.init(jax.random.PRNGKey(3), x)["params"]
    reference = plain.init(jax.random.PRNGKey(3), x)["params"]
    assert jax.tree.structure(params) == jax.tree.structure(reference)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reference)):
      np.testing.assert_array_equal(a, b)
    params = jax.tree.map(lambda v: v + 0.1, params)  # nonzero conv biases, which must cancel

    def loss(model):
      return lambda p: jnp.sum(jax.nn.log_softmax(model.apply({"params": p}, x)["logits"])[:, 0])

    np.testing.assert_allclose(fast.apply({"params": params}, x)["logits"],
                               plain.apply({"params": params}, x)["logits"], rtol=0, atol=1e-4)
    got, want = jax.jit(jax.grad(loss(fast)))(params), jax.jit(jax.grad(loss(plain)))(params)
    scale = max(float(jnp.max(jnp.abs(w))) for w in jax.tree.leaves(want))
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_allclose(g, w, rtol=0, atol=1e-5 * scale)
    for i in range(1, 5):  # exactly 0 here; nn.Conv's is 0 up to rounding
      assert not np.any(np.asarray(got[f"conv{i}"]["bias"]))
      assert float(jnp.max(jnp.abs(want[f"conv{i}"]["bias"]))) < 1e-5 * scale
