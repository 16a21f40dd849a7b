"""MK-MMD, CDAN's multilinear maps and entropy weights, against references computed another way;
CDAN's gradient reversal; the cdan, cdan_e and dan losses compiled on LeNet."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import config as config_lib
from mmjax import methods
from mmjax.methods import dann
from mmjax.losses import gaussian_kernels, mk_mmd
from mmjax.models import LeNet
from mmjax.models.conditional import (ConditionalAdversarialNet, multilinear_map,
                                      random_map_matrices, randomized_multilinear_map)


# --- MK-MMD -----------------------------------------------------------------------------------------

def _np_mmd(x, y, kernel_mul=2.0, kernel_num=5, estimator="unbiased"):
  """MK-MMD^2 by plain loops over pairs of points, in float64."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  pooled = list(x) + list(y)
  pairs = [(a, b) for i, a in enumerate(pooled) for j, b in enumerate(pooled) if i != j]
  base = sum(np.sum((a - b) ** 2) for a, b in pairs) / len(pairs)

  def k(a, b):
    return sum(np.exp(-np.sum((a - b) ** 2) / (base * kernel_mul ** (i - kernel_num // 2)))
               for i in range(kernel_num))

  def within(s):
    if estimator == "biased":
      return sum(k(a, b) for a in s for b in s) / len(s) ** 2
    return sum(k(s[i], s[j]) for i in range(len(s)) for j in range(len(s)) if i != j) / (
        len(s) * (len(s) - 1))

  between = sum(k(a, b) for a in x for b in y) / (len(x) * len(y))
  return within(x) + within(y) - 2 * between


@pytest.mark.parametrize("estimator", ["unbiased", "biased"])
@pytest.mark.parametrize("sizes,kernel_mul,kernel_num", [((6, 6), 2.0, 5), ((5, 7), 1.5, 4),
                                                          ((4, 3), 2.0, 1)])
def test_mk_mmd_matches_a_double_loop_over_pairs(estimator, sizes, kernel_mul, kernel_num):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(sizes[0], 3)).astype(np.float32)
  y = (rng.normal(size=(sizes[1], 3)) + 0.5).astype(np.float32)
  got = mk_mmd(jnp.asarray(x), jnp.asarray(y), kernel_mul, kernel_num, estimator)
  np.testing.assert_allclose(got, _np_mmd(x, y, kernel_mul, kernel_num, estimator), rtol=1e-4,
                             atol=1e-6)


def test_mk_mmd_of_the_same_sample_and_of_shifted_samples():
  rng = np.random.default_rng(1)
  x, y = rng.normal(size=(2, 64, 4)).astype(np.float32)
  # The same points: the biased estimator is exactly 0; the unbiased one is its closed form
  # 2 S / (n (n - 1)) - 2 (S + n K) / n^2, S the off-diagonal kernel sum, K = kernel_num.
  np.testing.assert_allclose(mk_mmd(x, x, estimator="biased"), 0.0, atol=1e-6)
  k = np.asarray(gaussian_kernels(jnp.concatenate([x, x])))[:64, :64]
  off = k.sum() - np.trace(k)
  np.testing.assert_allclose(np.trace(k), 5 * 64, rtol=1e-6)
  np.testing.assert_allclose(mk_mmd(x, x), 2 * off / (64 * 63) - 2 * (off + 64 * 5) / 64 ** 2,
                             rtol=1e-4)
  # Two samples of one distribution vs a shifted one.
  # (The kernel is a sum of 5 kernels, so MMD^2 is at most 10.)
  same, shifted = float(mk_mmd(x, y)), float(mk_mmd(x, y + 1.0))
  assert abs(same) < 0.05 and shifted > 20 * abs(same)
  assert float(mk_mmd(x, y + 1.0, estimator="biased")) > 20 * abs(same)


def test_mk_mmd_bandwidth_is_not_differentiated():
  """The gradient is that of the kernel sum with the bandwidth held at its value (as `.data`)."""
  rng = np.random.default_rng(2)
  x, y = rng.normal(size=(2, 5, 3)).astype(np.float32)
  z = np.concatenate([x, y]).astype(np.float64)
  base = np.mean([np.sum((a - b) ** 2) for (i, a), (j, b) in
                  itertools.product(enumerate(z), repeat=2) if i != j])

  def fixed_bandwidth_mmd(xs):
    pooled = jnp.concatenate([xs, y])
    d2 = jnp.sum((pooled[:, None] - pooled[None]) ** 2, -1)
    k = sum(jnp.exp(-d2 / (base * 2.0 ** (i - 2))) for i in range(5))
    off = 1 - jnp.eye(5)
    return (jnp.sum(k[:5, :5] * off) / 20 + jnp.sum(k[5:, 5:] * off) / 20
            - 2 * jnp.mean(k[:5, 5:]))

  np.testing.assert_allclose(jax.grad(mk_mmd)(jnp.asarray(x), jnp.asarray(y)),
                             jax.grad(fixed_bandwidth_mmd)(jnp.asarray(x)), rtol=1e-4, atol=1e-6)


def test_mk_mmd_rejects_a_bad_estimator_and_too_few_examples():
  x = jnp.zeros((3, 2))
  with pytest.raises(ValueError, match="unbiased, biased"):
    mk_mmd(x, x, estimator="linear")
  with pytest.raises(ValueError, match="at least 2"):
    mk_mmd(x, x[:1])


# --- CDAN's maps and weights ------------------------------------------------------------------------

def test_multilinear_map_is_the_flattened_outer_product_per_example():
  rng = np.random.default_rng(3)
  f, g = rng.normal(size=(4, 6)).astype(np.float32), rng.random((4, 3)).astype(np.float32)
  want = np.stack([np.outer(g[i], f[i]).ravel() for i in range(4)])
  np.testing.assert_allclose(multilinear_map(f, g), want, rtol=1e-6)
  np.testing.assert_allclose(multilinear_map(f, g), np.einsum("nc,nf->ncf", g, f).reshape(4, 18),
                             rtol=1e-6)


def test_randomized_map_formula_and_its_expected_inner_products():
  rng = np.random.default_rng(4)
  f, g = rng.normal(size=(2, 5)).astype(np.float32), rng.random((2, 3)).astype(np.float32)
  r_f, r_g = random_map_matrices(7, 5, 3, 16)
  r_f2, _ = random_map_matrices(7, 5, 3, 16)
  np.testing.assert_array_equal(r_f, r_f2)  # fixed by the seed
  r_f, r_g = np.asarray(r_f, np.float64), np.asarray(r_g, np.float64)
  want = np.stack([(r_f.T @ f[i]) * (r_g.T @ g[i]) / 4.0 for i in range(2)])
  np.testing.assert_allclose(randomized_multilinear_map(f, g, r_f.astype(np.float32),
                                                        r_g.astype(np.float32)), want, rtol=1e-5)
  # Long et al. 2018, Theorem 1: E<T(f, g), T(f', g')> = <f, f'> <g, g'> = <f x g, f' x g'>.
  exact = float(f[0] @ f[1]) * float(g[0] @ g[1])
  np.testing.assert_allclose(exact, multilinear_map(f, g)[0] @ multilinear_map(f, g)[1], rtol=1e-5)
  estimates = []
  for seed in range(8):
    t = randomized_multilinear_map(f, g, *random_map_matrices(seed, 5, 3, 1 << 14))
    estimates.append(float(t[0] @ t[1]))
  scale = np.linalg.norm(f[0]) * np.linalg.norm(f[1]) * np.linalg.norm(g[0]) * np.linalg.norm(g[1])
  assert abs(np.mean(estimates) - exact) < 0.03 * scale


def _np_entropy_weights(logits, n):
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  w = 1 + np.exp(np.sum(p * np.log(p), 1))
  weight = np.concatenate([w[:n] / w[:n].sum(), np.zeros(len(w) - n)]) + np.concatenate(
      [np.zeros(n), w[n:] / w[n:].sum()])
  return weight / weight.sum()  # thuml/CDAN loss.py: sum(weight * bce) / sum(weight)


@pytest.mark.parametrize("n_source,n_target", [(4, 4), (3, 5)])
def test_cdan_e_weights_match_the_official_formula_and_carry_no_gradient(n_source, n_target):
  cdan = methods.get_method("cdan_e")
  logits = np.random.default_rng(5).normal(size=(n_source + n_target, 4)).astype(np.float32) * 3
  w = cdan.entropy_weights(jnp.asarray(logits), n_source)
  np.testing.assert_allclose(w, _np_entropy_weights(logits.astype(np.float64), n_source), rtol=1e-5)
  np.testing.assert_allclose([w[:n_source].sum(), w[n_source:].sum()], [0.5, 0.5], rtol=1e-6)
  grad = jax.grad(lambda z: jnp.sum(cdan.entropy_weights(z, n_source) * jnp.arange(len(z))))(
      jnp.asarray(logits))
  np.testing.assert_array_equal(grad, 0.0)


# --- the methods ------------------------------------------------------------------------------------

def _config(method, **adapt):
  cfg = config_lib.base_config()
  cfg.method = method
  cfg.data.target = "usps"
  cfg.adapt.domain_hidden = 16
  cfg.adapt.domain_layers = 2
  cfg.adapt.randomized_dim = 32
  cfg.adapt.update(adapt)
  return cfg


def _batch(n=6, m=6):
  rng = np.random.default_rng(6)
  return {k: {"image": rng.random((size, 28, 28, 1), dtype=np.float32),
              "label": rng.integers(0, 10, size).astype(np.int32)}
          for k, size in (("source", n), ("target", m))}


@pytest.mark.parametrize("method,randomized", [("cdan", False), ("cdan_e", False),
                                               ("cdan", True)])
def test_cdan_gradients_are_class_minus_lambda_times_domain(method, randomized):
  cfg = _config(method, randomized=randomized)
  cdan = methods.get_method(method)
  model = cdan.build_model(cfg)
  batch = _batch()
  params = model.init(jax.random.PRNGKey(0), batch["source"]["image"])["params"]
  progress = 0.3
  lam = float(dann.reversal_strength(progress))
  total = jax.grad(lambda p: cdan.make_loss(cfg)(model, p, batch, jax.random.PRNGKey(1),
                                                 progress)[0])(params)
  images = jnp.concatenate([batch["source"]["image"], batch["target"]["image"]])
  # The same two losses without reversal (coefficient -1 makes the layer the identity), with the
  # CDAN+E weights as numpy constants.
  plain = model.apply({"params": params}, images, reversal=-1.0)
  weights = (_np_entropy_weights(np.asarray(plain["logits"], np.float64), 6) if method == "cdan_e"
             else np.full(12, 1 / 12))

  def parts(p):
    out = model.apply({"params": p}, images, reversal=-1.0)
    ce = -jnp.mean(jax.nn.log_softmax(out["logits"][:6])[jnp.arange(6), batch["source"]["label"]])
    d = jnp.concatenate([jnp.zeros(6), jnp.ones(6)])
    z = out["domain_logits"]
    bce = jnp.maximum(z, 0) - z * d + jnp.log1p(jnp.exp(-jnp.abs(z)))
    return ce, jnp.sum(weights * bce)

  g_class = jax.grad(lambda p: parts(p)[0])(params)
  g_domain = jax.grad(lambda p: parts(p)[1])(params)
  for path in ("backbone", "domain_fc1", "domain_fc2", "domain_head"):
    want = jax.tree.map(
        lambda c, d: c - lam * d if path == "backbone" else c + d, g_class[path], g_domain[path])
    for a, b in zip(jax.tree.leaves(total[path]), jax.tree.leaves(want)):
      np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)
  # g = softmax(logits) enters T(f, g) under stop_gradient (thuml/CDAN): the domain loss reaches the
  # backbone through f alone, so the classifier head, which only makes g, gets none of it.
  for leaf in jax.tree.leaves(g_domain["backbone"]["head"]):
    np.testing.assert_array_equal(leaf, 0.0)
  assert any(np.abs(leaf).max() > 0 for leaf in jax.tree.leaves(g_domain["backbone"]["fc2"]))


@pytest.mark.parametrize("randomized,input_dim", [(False, 100 * 10), (True, 32)])
def test_conditional_adversarial_net_wraps_any_backbone(randomized, input_dim):
  model = ConditionalAdversarialNet(backbone=LeNet(num_classes=10), domain_hidden=16,
                                    domain_layers=1, randomized=randomized, randomized_dim=32)
  x = jnp.zeros((3, 28, 28, 1))
  params = model.init(jax.random.PRNGKey(0), x)["params"]
  out = model.apply({"params": params}, x)
  assert out["logits"].shape == (3, 10) and out["domain_logits"].shape == (3,)
  assert set(params) == {"backbone", "domain_fc1", "domain_head"}
  assert params["domain_fc1"]["kernel"].shape == (input_dim, 16)


@pytest.mark.parametrize("method,adapt", [
    ("cdan", {}), ("cdan", {"randomized": True}), ("cdan_e", {}), ("cdan_e", {"randomized": True}),
    ("dan", {}), ("dan", {"mmd_estimator": "biased", "kernel_num": 3})])
def test_each_method_loss_compiles_and_is_finite(method, adapt):
  cfg = _config(method, **adapt)
  m = methods.get_method(method)
  model = m.build_model(cfg)
  batch = _batch(4, 4)
  params = model.init(jax.random.PRNGKey(0), batch["source"]["image"])["params"]
  loss = jax.jit(lambda p, b, r, s: m.make_loss(cfg)(model, p, b, r, s))
  value, metrics = loss(params, batch, jax.random.PRNGKey(1), 0.5)
  components = {"class_loss", "mmd"} if method == "dan" else {"class_loss", "domain_loss", "lambda"}
  assert {"loss", "accuracy"} | components <= set(metrics)
  assert all(np.isfinite(v) for v in jax.device_get(metrics).values()) and np.isfinite(value)
  if method != "dan":
    np.testing.assert_allclose(metrics["lambda"], 2 / (1 + np.exp(-5.0)) - 1, rtol=1e-6)


def test_dan_loss_is_class_loss_plus_weighted_mmd_of_the_features():
  cfg = _config("dan", mmd_weight=0.7)
  dan = methods.get_method("dan")
  model = dan.build_model(cfg)
  batch = _batch(5, 7)
  params = model.init(jax.random.PRNGKey(0), batch["source"]["image"])["params"]
  value, metrics = dan.make_loss(cfg)(model, params, batch, jax.random.PRNGKey(1), 0.0)
  out = model.apply({"params": params},
                    jnp.concatenate([batch["source"]["image"], batch["target"]["image"]]))
  logp = jax.nn.log_softmax(out["logits"][:5])
  ce = -np.mean(np.asarray(logp)[np.arange(5), batch["source"]["label"]])
  mmd = _np_mmd(out["features"][:5], out["features"][5:])
  np.testing.assert_allclose(metrics["mmd"], mmd, rtol=1e-3, atol=1e-6)
  np.testing.assert_allclose(value, ce + 0.7 * mmd, rtol=1e-4)


def test_method_names_and_config_errors():
  assert methods.get_method("cdan") is methods.get_method("cdan_e")
  with pytest.raises(ValueError, match="known methods"):
    methods.get_method("mmd")
  for name in ("cdan", "cdan_e", "dan"):
    cfg = _config(name)
    cfg.data.target = ""
    with pytest.raises(ValueError, match="config.data.target"):
      methods.get_method(name).streams(cfg)
  with pytest.raises(ValueError, match="mmd_estimator"):
    methods.get_method("dan").make_loss(_config("dan", mmd_estimator="linear"))
  cfg = _config("dan")
  cfg.parallel = "pmap"
  with pytest.raises(ValueError, match="parallel='jit'"):
    methods.get_method("dan").make_loss(cfg)
