"""Parameter initialisers by scheme: flax's defaults, or PyTorch's for recipes ported from it.

"flax": nn.Dense / nn.Conv defaults (kernel lecun_normal: truncated normal, variance 1 / fan_in;
bias 0). "torch": PyTorch's nn.Linear / nn.Conv2d defaults (kaiming_uniform_ with a = sqrt(5) for
the weight, U(-1/sqrt(fan_in), 1/sqrt(fan_in)); the bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with the
weight's fan_in), which recipes such as Transfer-Learning-Library's were tuned with: the weights'
variance is 1 / (3 fan_in), a third of flax's, and the biases are not zero.
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

SCHEMES = ("flax", "torch")


def check_scheme(scheme: str) -> str:
  if scheme not in SCHEMES:
    raise ValueError(f"unknown init scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")
  return scheme


def torch_kernel_init():
  """U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = inputs x receptive field (HWIO or [in, out])."""
  return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int):
  """U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with the layer weight's fan_in."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def layer_inits(scheme: str, fan_in: int) -> dict:
  """kernel_init / bias_init keyword arguments for nn.Dense or nn.Conv under `scheme` ({} for flax,
  so that flax's defaults and their values stay exactly as before)."""
  if check_scheme(scheme) == "flax":
    return {}
  kernel_init, bias_init = kernel_and_bias(scheme, fan_in)
  return {"kernel_init": kernel_init, "bias_init": bias_init}


def kernel_and_bias(scheme: str, fan_in: int):
  """(kernel_init, bias_init) under `scheme`, flax's defaults for "flax"."""
  if check_scheme(scheme) == "flax":
    return nn.initializers.lecun_normal(), nn.initializers.zeros_init()
  return torch_kernel_init(), torch_bias_init(fan_in)


class ConvParams(nn.Module):
  """nn.Conv's params for a conv the caller computes itself: "kernel" (HWIO) then "bias", with
  nn.Conv's shapes and names, and under `param_init` "flax" its initialisers too (the same values
  from the same key). Returns (kernel, bias); the caller decides where the bias goes (LeNet adds it
  after its max-pool, conv4 drops it before a norm that cancels it)."""
  features: int
  kernel_size: tuple
  param_init: str = "flax"

  @nn.compact
  def __call__(self, in_features: int):
    kernel_init, bias_init = kernel_and_bias(
        self.param_init, in_features * self.kernel_size[0] * self.kernel_size[1])
    kernel = self.param("kernel", kernel_init,
                        (*self.kernel_size, in_features, self.features), jnp.float32)
    bias = self.param("bias", bias_init, (self.features,), jnp.float32)
    return kernel, bias
