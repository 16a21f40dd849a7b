"""Proxy A-distance and t-SNE (mmjax.analysis) against hand examples and independent computations."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.analysis import pad, tsne


def test_svm_matches_the_hand_solved_one_dimensional_case():
  # x = -1 (y = -1) and +1 (y = +1): b = 0 by symmetry and 1/2 w^2 + 2 C (1 - w)^2 is least at
  # w = 4C / (1 + 4C).
  for cost in (0.1, 1.0, 10.0):
    w, b = pad.linear_svm(np.array([[-1.0], [1.0]]), np.array([-1.0, 1.0]), cost)
    assert w[0] == pytest.approx(4 * cost / (1 + 4 * cost), abs=1e-5)
    assert b == pytest.approx(0.0, abs=1e-5)


def test_pad_is_near_zero_for_one_distribution_and_two_for_separable_ones():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(400, 10)), rng.normal(size=(300, 10))
  same = pad.proxy_a_distance(a, b)
  assert same["n_per_domain"] == 300
  assert same["pad"] < 0.35  # chance error 1/2, minus the optimism of the best of 10 costs
  shifted = pad.proxy_a_distance(a, b + np.r_[6.0, np.zeros(9)])
  assert shifted["pad"] == pytest.approx(2.0) and shifted["error"] == 0.0
  partial = pad.proxy_a_distance(a, b + np.r_[1.0, np.zeros(9)])
  # Two unit Gaussians 1 apart: the best linear error is Phi(-1/2) = 0.309, PAD about 0.76.
  assert 0.45 < partial["pad"] < 1.1
  repeated = pad.repeated_proxy_a_distance(a, b, repeats=3, seed=5)
  singles = [pad.proxy_a_distance(a, b, seed=s)["pad"] for s in (5, 6, 7)]
  assert repeated["pads"] == singles and repeated["pad"] == pytest.approx(np.mean(singles))


def test_perplexity_calibration_reaches_the_target_entropy():
  rng = np.random.default_rng(1)
  x = np.concatenate([rng.normal(size=(60, 5)), 4 + 0.1 * rng.normal(size=(60, 5))])
  for perplexity in (5.0, 30.0):
    p = tsne.conditional_probabilities(tsne.squared_distances(x), perplexity)
    assert np.allclose(p.sum(1), 1.0) and np.all(np.diag(p) == 0)
    entropy = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=1)
    np.testing.assert_allclose(np.exp(entropy), perplexity, rtol=1e-3)


def test_kl_gradient_matches_autodiff_of_the_kl_divergence():
  rng = np.random.default_rng(2)
  p = jnp.asarray(tsne.joint_probabilities(rng.normal(size=(12, 4)), 4.0), jnp.float32)
  y = jnp.asarray(rng.normal(size=(12, 2)), jnp.float32)

  def kl(y):
    d = jnp.sum((y[:, None] - y[None]) ** 2, -1)
    w = (1 - jnp.eye(12)) / (1 + d)
    q = w / w.sum()
    off = 1 - jnp.eye(12)
    return jnp.sum(off * p * jnp.log(p / jnp.where(off > 0, q, 1.0)))

  grad, value = tsne.kl_gradient(p, y)
  np.testing.assert_allclose(grad, jax.grad(kl)(y), rtol=1e-4, atol=1e-6)
  assert float(value) == pytest.approx(float(kl(y)), rel=1e-5)


def test_tsne_keeps_well_separated_clusters_apart():
  rng = np.random.default_rng(3)
  centres = 10.0 * np.eye(3, 8)
  x = np.concatenate([c + rng.normal(size=(40, 8)) for c in centres])
  labels = np.repeat(np.arange(3), 40)
  y, kls = tsne.tsne(x, perplexity=15.0, steps=500, exaggeration_steps=100)
  assert y.shape == (120, 2) and np.isfinite(y).all() and kls[-1] < kls[100]
  d = tsne.squared_distances(y)
  same = labels[:, None] == labels[None, :]
  # Every point is nearer to all of its own cluster than to any point of another cluster.
  assert np.max(np.where(same, d, 0), axis=1).max() < np.min(np.where(same, np.inf, d))
