"""Initialiser schemes (mmjax.models.inits): PyTorch's nn.Linear / nn.Conv2d defaults against their
formula (kaiming_uniform_ with a = sqrt(5): bound = gain * sqrt(3 / fan_in), gain = sqrt(2 / (1 +
a^2))), LeNet and the domain classifiers under each scheme, and the config override that selects
one."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import config as config_lib
from mmjax.models import inits
from mmjax.models.adversarial import DomainAdversarialNet
from mmjax.models.conditional import ConditionalAdversarialNet
from mmjax.models.lenet import LeNet


def _torch_bound(fan_in: int) -> float:
  """PyTorch's reset_parameters: kaiming_uniform_(w, a=sqrt(5)) and the bias U(-1/sqrt(fan_in), ..)
  both come to this bound; written here from kaiming_uniform_'s own formula."""
  a = math.sqrt(5.0)
  gain = math.sqrt(2.0 / (1.0 + a * a))
  return gain * math.sqrt(3.0 / fan_in)


def _check_uniform(values, bound):
  """All inside [-bound, bound], filling it, with a uniform's mean 0 and variance bound^2 / 3."""
  v = np.asarray(values, np.float64).ravel()
  assert np.all(np.abs(v) <= bound * (1 + 1e-6))
  assert np.abs(v).max() > 0.99 * bound
  assert abs(v.mean()) < 4 * bound / math.sqrt(3 * v.size)
  np.testing.assert_allclose(v.var(), bound ** 2 / 3, rtol=0.03)


@pytest.mark.parametrize("shape,fan_in", [((2000, 300), 2000), ((5, 5, 20, 400), 500)])
def test_torch_kernel_and_bias_match_pytorch_formula(shape, fan_in):
  kernel_init, bias_init = inits.kernel_and_bias("torch", fan_in)
  kernel = kernel_init(jax.random.PRNGKey(0), shape, jnp.float32)
  _check_uniform(kernel, _torch_bound(fan_in))
  bias = bias_init(jax.random.PRNGKey(1), (20000,), jnp.float32)
  _check_uniform(bias, _torch_bound(fan_in))


def test_lenet_and_conv4_default_params_are_flax_defaults():
  """Under the default scheme every kernel has lecun_normal's spread (1 / sqrt(fan_in)) and every
  conv/dense bias is 0, as nn.Conv / nn.Dense make them (their values are what old checkpoints
  and results were made with)."""
  from mmjax.models import Conv4  # noqa: PLC0415
  for model, x in ((LeNet(channels=(20, 50), hidden=500), jnp.zeros((2, 28, 28, 1))),
                   (Conv4(width=64), jnp.zeros((2, 28, 28, 1)))):
    params = model.init(jax.random.PRNGKey(0), x)["params"]
    for name, p in params.items():
      if "kernel" not in p:
        continue
      kernel = np.asarray(p["kernel"], np.float64)
      fan_in = int(np.prod(kernel.shape[:-1]))
      np.testing.assert_array_equal(p["bias"], 0.0)
      if kernel.size >= 20000:  # enough values for the spread to be within 3%
        np.testing.assert_allclose(kernel.std(), 1 / math.sqrt(fan_in), rtol=0.03, err_msg=name)
        # a normal of std 1 / (0.8796 sqrt(fan_in)), truncated at 2 of its std
        assert np.abs(kernel).max() <= 2 / (0.87962566103423978 * math.sqrt(fan_in)) + 1e-6


def test_flax_scheme_is_flax_defaults():
  assert inits.layer_inits("flax", 10) == {}
  kernel_init, bias_init = inits.kernel_and_bias("flax", 10)
  key = jax.random.PRNGKey(3)
  np.testing.assert_array_equal(kernel_init(key, (10, 7)),
                                nn.initializers.lecun_normal()(key, (10, 7)))
  np.testing.assert_array_equal(bias_init(key, (7,)), np.zeros(7))
  with pytest.raises(ValueError, match="unknown init scheme 'xavier'"):
    inits.layer_inits("xavier", 10)


def _lenet_fan_ins(params):
  """fan_in of each LeNet layer from its kernel's shape (HWIO or [in, out])."""
  return {name: int(np.prod(p["kernel"].shape[:-1])) for name, p in params.items()}


@pytest.mark.parametrize("fast_ops", [True, False])
def test_lenet_torch_init(fast_ops):
  x = jnp.zeros((2, 28, 28, 1))
  kwargs = dict(channels=(20, 50), hidden=500, features=256)
  params = LeNet(**kwargs, param_init="torch", fast_ops=fast_ops).init(
      jax.random.PRNGKey(0), x)["params"]
  flax_params = LeNet(**kwargs, fast_ops=fast_ops).init(jax.random.PRNGKey(0), x)["params"]
  assert jax.tree.structure(params) == jax.tree.structure(flax_params)
  fan_ins = _lenet_fan_ins(params)
  assert fan_ins == {"conv1": 25, "conv2": 500, "fc1": 800, "fc2": 500, "head": 256}
  for name, p in params.items():
    bound = _torch_bound(fan_ins[name])
    assert np.abs(np.asarray(p["kernel"])).max() <= bound * (1 + 1e-6), name
    assert np.abs(np.asarray(p["bias"])).max() <= bound * (1 + 1e-6), name
    assert np.abs(np.asarray(p["bias"])).max() > 0.5 * bound, name  # not zero, unlike flax's
    assert np.asarray(flax_params[name]["bias"]).max() == 0.0
  # conv2's kernel alone has 25,000 values: it must have a uniform's variance.
  _check_uniform(params["conv2"]["kernel"], _torch_bound(500))


def test_lenet_fast_and_plain_share_torch_init():
  x = jnp.zeros((2, 28, 28, 1))
  fast = LeNet(param_init="torch").init(jax.random.PRNGKey(4), x)["params"]
  plain = LeNet(param_init="torch", fast_ops=False).init(jax.random.PRNGKey(4), x)["params"]
  jax.tree.map(np.testing.assert_array_equal, fast, plain)


@pytest.mark.parametrize("net", [DomainAdversarialNet, ConditionalAdversarialNet])
def test_domain_classifier_torch_init(net):
  x = jnp.zeros((4, 28, 28, 1))
  params = net(backbone=LeNet(), domain_hidden=64, domain_init="torch").init(
      jax.random.PRNGKey(0), x)["params"]
  default = net(backbone=LeNet(), domain_hidden=64).init(jax.random.PRNGKey(0), x)["params"]
  jax.tree.map(np.testing.assert_array_equal, params["backbone"], default["backbone"])
  for name in ("domain_fc1", "domain_fc2", "domain_head"):
    fan_in = params[name]["kernel"].shape[0]
    assert params[name]["kernel"].shape == default[name]["kernel"].shape
    bound = _torch_bound(fan_in)
    assert np.abs(np.asarray(params[name]["kernel"])).max() <= bound * (1 + 1e-6)
    assert 0 < np.abs(np.asarray(params[name]["bias"])).max() <= bound * (1 + 1e-6)
    assert np.asarray(default[name]["bias"]).max() == 0.0


def test_config_override_adds_model_field():
  cfg = config_lib.load_with_overrides("configs/digits_adapt.py:cdan/mnist_usps",
                                       {"model.param_init": "torch", "adapt.domain_init": "torch"})
  assert cfg.model.param_init == "torch" and cfg.adapt.domain_init == "torch"
  with pytest.raises(config_lib.ConfigError, match="Nearest valid keys: model.param_init"):
    config_lib.load_with_overrides("configs/digits_adapt.py:cdan/mnist_usps",
                                   {"model.param_inti": "torch"})
  with pytest.raises(config_lib.ConfigError, match="bad value 'x' for config key 'model.fast_ops'"):
    config_lib.load_with_overrides("configs/digits.py:mnist_usps", {"model.fast_ops": "x"})
  with pytest.raises(config_lib.ConfigError, match="model.param_init='xavier': expected one of"):
    config_lib.load_with_overrides("configs/digits.py:mnist_usps", {"model.param_init": "xavier"})
  with pytest.raises(config_lib.ConfigError, match="adapt.domain_init='xavier'"):
    config_lib.load_with_overrides("configs/digits_adapt.py:dann/mnist_usps",
                                   {"adapt.domain_init": "xavier"})
  # Tuple fields take "a,b" or one value; model.name is applied before the fields it decides.
  other = config_lib.load_with_overrides("configs/digits.py:mnist_usps", {"model.channels": "20,50"})
  assert list(other.model.channels) == [20, 50]
  assert list(config_lib.load_with_overrides(
      "configs/digits.py:mnist_usps", {"model.channels": "32"}).model.channels) == [32]
  other = config_lib.load_with_overrides("configs/digits.py:mnist_usps",
                                         {"model.fast_variance": "false", "model.name": "conv4"})
  assert other.model.name == "conv4" and other.model.fast_variance is False
  # A run written before the field existed is the same run as one that sets its default.
  plain = config_lib.load("configs/digits_adapt.py:cdan/mnist_usps")
  assert config_lib.run_differences(plain, config_lib.load_with_overrides(
      "configs/digits_adapt.py:cdan/mnist_usps",
      {"adapt.domain_init": "flax", "model.param_init": "flax"})) == {}
  assert config_lib.run_differences(plain, cfg) == {"adapt.domain_init": ("flax", "torch"),
                                                    "model.param_init": ("flax", "torch")}
  # The /tll recipe trains with PyTorch's initialisers (TLL is PyTorch code); a /tll run written
  # before that (its config has no model.param_init, and adapt.domain_init "flax") differs from it.
  tll = config_lib.load("configs/digits_adapt.py:cdan/mnist_usps/tll")
  old_tll = config_lib.load_with_overrides("configs/digits_adapt.py:cdan/mnist_usps/tll",
                                           {"adapt.domain_init": "flax"})
  with old_tll.unlocked():
    del old_tll.model["param_init"]
  assert config_lib.run_differences(old_tll, tll) == {"adapt.domain_init": ("flax", "torch"),
                                                      "model.param_init": ("flax", "torch")}
