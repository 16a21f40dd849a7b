"""The conditional domain-adversarial network of CDAN: a domain classifier on features x predictions.

Long et al., NeurIPS 2018 ("Conditional Adversarial Domain Adaptation"), eq. 4-6: the domain
classifier sees the multilinear map T(f, g) = f ⊗ g of the features f and the class probabilities g,
or, when f ⊗ g is too large, the randomized map (1/sqrt(d)) (R_f f) ⊙ (R_g g) with fixed Gaussian
matrices, whose inner products equal those of f ⊗ g in expectation (their Theorem 1).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models.adversarial import domain_classifier, reverse_gradient


def multilinear_map(f, g):
  """Per example, the outer product g f^T flattened class-major: [n, C * F] (official code's order)."""
  return jnp.einsum("nc,nf->ncf", g, f).reshape(f.shape[0], -1)


def random_map_matrices(seed: int, features_dim: int, num_classes: int, output_dim: int):
  """R_f [F, d] and R_g [C, d] with N(0, 1) entries, the same for every call with the same seed."""
  key_f, key_g = jax.random.split(jax.random.PRNGKey(seed))
  return (jax.random.normal(key_f, (features_dim, output_dim)),
          jax.random.normal(key_g, (num_classes, output_dim)))


def randomized_multilinear_map(f, g, r_f, r_g):
  """(1/sqrt(d)) (f R_f) ⊙ (g R_g): [n, d] (Long et al. 2018, eq. 5)."""
  return (f @ r_f) * (g @ r_g) / jnp.sqrt(float(r_f.shape[1]))


class ConditionalAdversarialNet(nn.Module):
  """A backbone that returns `features` and `logits`, plus a domain classifier on T(f, g).

  The gradient reversal sits between T(f, g) and the domain classifier. g is the softmax of the
  logits under stop_gradient, as in the official code (thuml/CDAN pytorch/loss.py detaches it), so
  the domain loss reaches the backbone through f only. Returns the backbone's dict with
  `domain_logits` (one logit per example: target vs source) added.
  """
  backbone: nn.Module
  domain_hidden: int = 1024
  domain_layers: int = 2
  randomized: bool = False
  randomized_dim: int = 1024
  map_seed: int = 0
  domain_norm: bool = False
  domain_init: str = "flax"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, reversal: float = 0.0):
    out = dict(self.backbone(x, train=train))
    f = out["features"].astype(jnp.float32)
    g = jax.lax.stop_gradient(jax.nn.softmax(out["logits"]))
    if self.randomized:
      r_f, r_g = random_map_matrices(self.map_seed, f.shape[-1], g.shape[-1], self.randomized_dim)
      h = randomized_multilinear_map(f, g, r_f, r_g)
    else:
      h = multilinear_map(f, g)
    h = reverse_gradient(h, jnp.asarray(reversal, jnp.float32))
    out["domain_logits"] = domain_classifier(h, self.domain_hidden, self.domain_layers, self.dtype,
                                             self.domain_norm, train, self.domain_init)
    return out
