"""Multi-kernel maximum mean discrepancy (MK-MMD), the feature-matching loss of DAN.

Long et al., ICML 2015 ("Learning Transferable Features with Deep Adaptation Networks"), eq. 1-3, with
Gretton et al., JMLR 2012 (eq. 2 biased, eq. 3 unbiased estimators). The kernel is a sum of Gaussians
exp(-|x - y|^2 / b_k) with bandwidths b_k = b * kernel_mul^(k - kernel_num // 2), k = 0..kernel_num-1,
b the mean squared distance between distinct points of the pooled sample, as in the public DAN
code (jindongwang/transferlearning, `guassian_kernel`); b is a statistic of the batch, not a path for
gradients (the reference takes it from `.data`).
"""
import jax
import jax.numpy as jnp

ESTIMATORS = ("unbiased", "biased")


def squared_distances(z):
  """|z_i - z_j|^2 for all pairs of rows, clipped at 0 against rounding."""
  sq = jnp.sum(z * z, axis=-1)
  return jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * z @ z.T, 0.0)


def gaussian_kernels(z, kernel_mul: float = 2.0, kernel_num: int = 5):
  """The summed Gaussian kernel matrix of the rows of z (the pooled source and target sample)."""
  n = z.shape[0]
  d2 = squared_distances(z)
  base = jax.lax.stop_gradient(jnp.sum(d2) / (n * n - n))
  # All points equal (e.g. dead features) would give 0 / 0; any positive bandwidth gives k = 1 there.
  base = jnp.maximum(base, jnp.finfo(d2.dtype).tiny)
  bandwidths = base * kernel_mul ** (jnp.arange(kernel_num, dtype=d2.dtype) - kernel_num // 2)
  return jnp.sum(jnp.exp(-d2[None] / bandwidths[:, None, None]), axis=0)


def mk_mmd(source, target, kernel_mul: float = 2.0, kernel_num: int = 5,
           estimator: str = "unbiased"):
  """MK-MMD^2 between the rows of source [m, d] and target [n, d].

  "unbiased": within-domain means over distinct pairs i != j (Gretton et al. 2012, eq. 3), zero in
  expectation for equal distributions. "biased": means over all pairs (eq. 2, the V-statistic of
  the public DAN code), exactly 0 when the two samples are the same points.
  """
  if estimator not in ESTIMATORS:
    raise ValueError(f"unknown MMD estimator {estimator!r}; use one of {', '.join(ESTIMATORS)}")
  m, n = source.shape[0], target.shape[0]
  if estimator == "unbiased" and min(m, n) < 2:
    raise ValueError(f"the unbiased MMD estimator needs at least 2 examples per domain, got {m} "
                     f"source and {n} target")
  z = jnp.concatenate([source, target]).astype(jnp.float32)
  k = gaussian_kernels(z, kernel_mul, kernel_num)
  k_ss, k_tt, k_st = k[:m, :m], k[m:, m:], k[:m, m:]
  if estimator == "biased":
    return jnp.mean(k_ss) + jnp.mean(k_tt) - 2.0 * jnp.mean(k_st)
  off_s, off_t = 1.0 - jnp.eye(m), 1.0 - jnp.eye(n)
  return (jnp.sum(k_ss * off_s) / (m * (m - 1)) + jnp.sum(k_tt * off_t) / (n * (n - 1))
          - 2.0 * jnp.mean(k_st))
