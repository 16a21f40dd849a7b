"""Digits, LeNet, unsupervised domain adaptation: DANN, CDAN, CDAN+E and DAN (MK-MMD).

The digits config with the unlabelled target train split as a second stream (batches of 128 source
+ 128 target) and the DANN paper's annealed learning rate (Ganin et al. 2016, §5.2.2).
Args: <method>/<pair>, method in dann | cdan | cdan_e | dan, pair in mnist_usps | usps_mnist
(e.g. configs/digits_adapt.py:dann/mnist_usps). <method>/<pair>/tll: Transfer-Learning-Library's
digits recipe instead: its LeNet (conv 20 and 50 channels, 500 hidden, a 256-wide bottleneck with
batch norm, dropout 0.5 after conv2 and fc1, inputs normalised to [-1, 1]), batch norm in the
domain classifier, weight decay 1e-3 with Nesterov momentum, the reversal's lambda on TLL's
warm-start schedule 2 / (1 + exp(-i / 1000)) - 1 at step i (adapt.gamma_per_step), PyTorch's
default initialisers (model.param_init, adapt.domain_init) and 10,000 steps; the table (sweep())
runs the plain args.
"""
import pathlib

from mmjax.config import load_module

digits = load_module(pathlib.Path(__file__).with_name("digits.py"))
METHODS = ("dann", "cdan", "cdan_e", "dan")
PAIRS = ("mnist_usps", "usps_mnist")
TABLE_ARGS = tuple(f"{m}/{p}" for m in METHODS for p in PAIRS)
ARGS = TABLE_ARGS + tuple(f"{arg}/tll" for arg in TABLE_ARGS)


def get_config(arg=None):
  arg = arg or "dann/mnist_usps"
  if arg not in ARGS:
    raise ValueError(f"unknown digits_adapt arg {arg!r}; use one of {', '.join(ARGS)}")
  method, pair, *variant = arg.split("/")
  c = digits.get_config(pair)
  c.method = method
  c.data.target = c.evals.target_test.dataset
  c.optim.schedule = "dann"
  c.adapt.gamma = 10.0
  c.adapt.domain_hidden = 1024
  c.adapt.domain_layers = 2
  if variant == ["tll"]:
    digits.tll_recipe(c)
    c.adapt.domain_norm = True
    # TLL's DomainAdversarialLoss and ConditionalDomainAdversarialLoss build their
    # WarmStartGradientReverseLayer with alpha=1, max_iters=1000: lambda = 2 / (1 + exp(-i / 1000)) - 1
    # at step i (0.46 at step 1,000, 0.99 at 5,300), whatever train.steps is. Until 2026-11-27 this
    # was ten times faster (gamma = 10 * steps / 1000); the digits_tll table's first 5-seed runs
    # used that, with flax's initialisers (--set=adapt.gamma=100 --set=adapt.gamma_per_step=0
    # --set=model.param_init=flax --set=adapt.domain_init=flax reproduces them).
    c.adapt.gamma = 0.0
    c.adapt.gamma_per_step = 0.001
  return c


def sweep():
  return [{"arg": arg} for arg in TABLE_ARGS]
