"""Proxy A-distance (Ben-David et al. 2007; Ganin et al. 2016, §5.1.5) with a linear SVM.

A linear classifier learns to tell source (0) from target (1) examples on one half of each domain;
its error eps on the other half gives PAD = 2 (1 - 2 eps): about 0 when the domains cannot be told
apart, 2 when they are linearly separable.
"""
import numpy as np
import scipy.optimize

# The authors' grid of SVM costs (GRAAL-Research/domain_adversarial_neural_network, experiments).
COSTS = tuple(np.logspace(-5, 4, 10))


def linear_svm(x, y, cost: float, max_iter: int = 500):
  """(w, b) of the L2-regularised squared-hinge linear SVM (LIBLINEAR's primal L2-loss SVM):
  min_w,b 1/2 |w|^2 + cost sum_i max(0, 1 - y_i (w.x_i + b))^2, labels y in {-1, +1}."""
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)

  def objective(theta):
    w, b = theta[:-1], theta[-1]
    slack = np.maximum(0.0, 1.0 - y * (x @ w + b))
    value = 0.5 * w @ w + cost * slack @ slack
    coeff = -2.0 * cost * slack * y
    return value, np.concatenate([w + x.T @ coeff, [coeff.sum()]])

  theta = np.zeros(x.shape[1] + 1)
  result = scipy.optimize.minimize(objective, theta, jac=True, method="L-BFGS-B",
                                   options={"maxiter": max_iter})
  return result.x[:-1], result.x[-1]


def proxy_a_distance(source, target, *, costs=COSTS, seed: int = 0) -> dict:
  """PAD between two sets of feature vectors [N, D] and [M, D].

  The larger domain is subsampled to the size of the smaller, so that chance error is 1/2 (a
  constant guess would otherwise score as a distance). Each domain is shuffled (with `seed`) and
  halved; an SVM per cost in `costs` trains on the first
  halves and is tested on the second. As in the authors' code, the reported error is the lowest
  test error over the costs, an error above 1/2 counts as 1 minus it, and so PAD is in [0, 2].
  """
  source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
  if source.ndim != 2 or target.ndim != 2 or source.shape[1] != target.shape[1]:
    raise ValueError(f"expected source [N, D] and target [M, D], got {source.shape} and {target.shape}")
  if min(len(source), len(target)) < 4:
    raise ValueError("need at least 4 examples per domain (two per half)")
  rng = np.random.default_rng(seed)
  n = min(len(source), len(target))
  halves = [np.array_split(rng.permutation(d)[:n], 2) for d in (source, target)]
  x_train = np.concatenate([halves[0][0], halves[1][0]])
  y_train = np.concatenate([-np.ones(len(halves[0][0])), np.ones(len(halves[1][0]))])
  x_test = np.concatenate([halves[0][1], halves[1][1]])
  y_test = np.concatenate([-np.ones(len(halves[0][1])), np.ones(len(halves[1][1]))])
  errors = []
  for cost in costs:
    w, b = linear_svm(x_train, y_train, cost)
    error = float(np.mean(np.where(x_test @ w + b > 0, 1.0, -1.0) != y_test))
    errors.append(min(error, 1.0 - error))
  best = int(np.argmin(errors))
  return {"pad": 2.0 * (1.0 - 2.0 * errors[best]), "error": errors[best],
          "cost": float(costs[best]), "n_per_domain": n}


def repeated_proxy_a_distance(source, target, *, repeats: int = 5, seed: int = 0) -> dict:
  """PAD over `repeats` random halvings (seeds seed..seed+repeats-1): mean, std and each split's.

  With a few hundred examples per domain one halving's PAD varies by about ±0.1, so a single
  split (the paper's protocol) cannot tell close representations apart.
  """
  runs = [proxy_a_distance(source, target, seed=seed + i) for i in range(repeats)]
  pads = np.array([r["pad"] for r in runs])
  return {"pad": float(pads.mean()), "pad_std": float(pads.std(ddof=1)) if repeats > 1 else 0.0,
          "pads": pads.tolist(), "costs": [r["cost"] for r in runs],
          "n_per_domain": runs[0]["n_per_domain"]}
