"""Exact t-SNE (van der Maaten & Hinton, JMLR 2008) for a few thousand points, in numpy and JAX.

The input affinities are calibrated per point by binary search to a given perplexity; the 2-d map
is found by gradient descent with momentum, per-parameter gains and early exaggeration, as in the
paper's reference implementation. Cost is O(N^2) memory and time per iteration: keep N <= ~2000.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np


def squared_distances(x) -> np.ndarray:
  x = np.asarray(x, np.float64)
  sq = np.sum(x * x, axis=1)
  return np.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0)


def conditional_probabilities(distances, perplexity: float, tol: float = 1e-5,
                              max_steps: int = 200) -> np.ndarray:
  """p_{j|i} ∝ exp(-beta_i d_ij) (j != i), with beta_i set by bisection so that each row's entropy
  H(P_i) = log(perplexity) nats (eq. 1 and the perplexity definition of §2). Rows of [N, N]."""
  d = np.array(distances, np.float64)
  n = len(d)
  if not 1.0 <= perplexity < n:
    raise ValueError(f"perplexity must be in [1, {n}) for {n} points, got {perplexity}")
  np.fill_diagonal(d, np.inf)
  d -= d.min(axis=1, keepdims=True)  # shifts each row; p_{j|i} does not change
  target = np.log(perplexity)
  beta, lo, hi = np.ones(n), np.zeros(n), np.full(n, np.inf)
  for _ in range(max_steps):
    p, entropy = _row_distributions(d, beta)
    too_flat = entropy > target  # entropy falls as beta grows
    lo = np.where(too_flat, beta, lo)
    hi = np.where(too_flat, hi, beta)
    beta = np.where(np.isinf(hi), beta * 2.0, (lo + hi) / 2.0)
    if np.max(np.abs(entropy - target)) < tol:
      break
  return p


def _row_distributions(d, beta):
  weights = np.exp(-d * beta[:, None])
  total = weights.sum(axis=1, keepdims=True)
  p = weights / total
  entropy = np.log(total[:, 0]) + beta * np.sum(np.where(p > 0, d, 0.0) * p, axis=1)
  return p, entropy


def joint_probabilities(x, perplexity: float) -> np.ndarray:
  """p_ij = (p_{j|i} + p_{i|j}) / 2N (§3.1), floored at 1e-12."""
  p = conditional_probabilities(squared_distances(x), perplexity)
  return np.maximum((p + p.T) / (2.0 * len(p)), 1e-12)


def kl_gradient(p, y):
  """dC/dy_i = 4 sum_j (p_ij - q_ij)(y_i - y_j)(1 + |y_i - y_j|^2)^-1 (eq. 5), and C = KL(P||Q)."""
  diff = y[:, None, :] - y[None, :, :]
  kernel = 1.0 / (1.0 + jnp.sum(diff * diff, axis=-1))
  kernel = kernel * (1.0 - jnp.eye(len(y), dtype=y.dtype))
  q = jnp.maximum(kernel / jnp.sum(kernel), 1e-12)
  grad = 4.0 * jnp.einsum("ij,ijk->ik", (p - q) * kernel, diff)
  return grad, jnp.sum(p * jnp.log(p / q))


@functools.partial(jax.jit, static_argnames=("steps", "exaggeration_steps"))
def _optimize(p, y, learning_rate, exaggeration, steps, exaggeration_steps):

  def step(carry, t):
    y, update, gains = carry
    scale = jnp.where(t < exaggeration_steps, exaggeration, 1.0)
    momentum = jnp.where(t < exaggeration_steps, 0.5, 0.8)
    grad, kl = kl_gradient(scale * p, y)
    same_sign = jnp.sign(grad) == jnp.sign(update)
    gains = jnp.maximum(jnp.where(same_sign, gains * 0.8, gains + 0.2), 0.01)
    update = momentum * update - learning_rate * gains * grad
    y = y + update
    return (y - y.mean(axis=0), update, gains), kl

  (y, _, _), kls = jax.lax.scan(step, (y, jnp.zeros_like(y), jnp.ones_like(y)), jnp.arange(steps))
  return y, kls


def tsne(x, *, perplexity: float = 30.0, steps: int = 1000, seed: int = 0,
         exaggeration: float = 12.0, exaggeration_steps: int = 250, learning_rate=None):
  """A 2-d map [N, 2] of the points x [N, D], and the KL divergence at each step.

  learning_rate defaults to max(N / exaggeration / 4, 50) (Belkina et al. 2019, scikit-learn's "auto").
  """
  x = np.asarray(x, np.float64).reshape(len(x), -1)
  p = jnp.asarray(joint_probabilities(x, perplexity), jnp.float32)
  y0 = 1e-4 * jax.random.normal(jax.random.PRNGKey(seed), (len(x), 2), jnp.float32)
  lr = learning_rate or max(len(x) / exaggeration / 4.0, 50.0)
  y, kls = _optimize(p, y0, lr, exaggeration, steps, exaggeration_steps)
  return np.asarray(y), np.asarray(kls)
