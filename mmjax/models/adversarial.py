"""Gradient reversal and the domain-adversarial network built on any feature extractor.

Ganin & Lempitsky 2015 / Ganin et al., JMLR 2016 (eq. 13-14): the reversal layer is the identity on
the forward pass and multiplies the gradient by -lambda on the backward pass, so one minimisation
trains the domain classifier to separate domains and the features to confuse it.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models import inits, norms


@jax.custom_vjp
def reverse_gradient(x, coeff):
  """Identity forward; the backward pass returns -coeff * g (and no gradient for coeff)."""
  del coeff
  return x


def _reverse_fwd(x, coeff):
  return x, coeff


def _reverse_bwd(coeff, g):
  return (jax.tree.map(lambda t: (-coeff * t).astype(t.dtype), g), jnp.zeros_like(coeff))


reverse_gradient.defvjp(_reverse_fwd, _reverse_bwd)


def domain_classifier(h, hidden: int, layers: int, dtype, norm: bool = False, train: bool = False,
                      init: str = "flax"):
  """`layers` ReLU layers of `hidden` units, then one logit per example (target vs source).

  Called inside a parent's compact __call__, so its layers (domain_fc1.., domain_head) are the
  parent's params. `norm`: batch norm before each ReLU (Transfer-Learning-Library's
  DomainDiscriminator: Linear, BatchNorm1d, ReLU), running averages in "batch_stats". `init`: the
  layers' initialiser scheme (`mmjax.models.inits`: "flax" or "torch").
  """
  for i in range(layers):
    h = nn.Dense(hidden, dtype=dtype, name=f"domain_fc{i + 1}",
                 **inits.layer_inits(init, h.shape[-1]))(h)
    if norm:
      h = norms.batch_norm(train, dtype=dtype, name=f"domain_norm{i + 1}")(h)
    h = nn.relu(h)
  return nn.Dense(1, dtype=dtype, name="domain_head",
                  **inits.layer_inits(init, h.shape[-1]))(h)[:, 0].astype(jnp.float32)


class DomainAdversarialNet(nn.Module):
  """A backbone that returns `features` and `logits`, plus a domain classifier behind a reversal.

  Returns the backbone's dict with `domain_logits` (one logit per example: target vs source) added.
  """
  backbone: nn.Module
  domain_hidden: int = 1024
  domain_layers: int = 2
  domain_norm: bool = False
  domain_init: str = "flax"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, reversal: float = 0.0):
    out = dict(self.backbone(x, train=train))
    h = reverse_gradient(out["features"], jnp.asarray(reversal, jnp.float32))
    out["domain_logits"] = domain_classifier(h, self.domain_hidden, self.domain_layers, self.dtype,
                                             self.domain_norm, train, self.domain_init)
    return out
