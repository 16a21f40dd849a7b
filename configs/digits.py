"""Digits, LeNet, supervised: the "source only" baseline and the "train on target" oracle.

Args: mnist_usps | usps_mnist (train on the source domain, evaluate on both test sets), and
mnist_usps_oracle | usps_mnist_oracle (train on the target domain's train split: the upper bound).
A "/tll" suffix (e.g. mnist_usps/tll) trains with Transfer-Learning-Library's digits recipe instead
(tll_recipe below), the baselines of configs/digits_adapt.py's /tll rows.
"""
from mmjax.config import base_config

# arg -> (source domain, target domain, train on the target instead of the source)
ARGS = {
    "mnist_usps": ("mnist", "usps", False),
    "usps_mnist": ("usps", "mnist", False),
    "mnist_usps_oracle": ("mnist", "usps", True),
    "usps_mnist_oracle": ("usps", "mnist", True),
}


def get_config(arg=None):
  arg = arg or "mnist_usps"
  base, *variant = arg.split("/")
  if base not in ARGS or variant not in ([], ["tll"]):
    raise ValueError(f"unknown digits arg {arg!r}; use one of {', '.join(ARGS)}, each optionally "
                     "with /tll")
  source, target, oracle = ARGS[base]
  c = base_config()
  c.model.name = "lenet"
  c.model.num_classes = 10
  c.method = "supervised"
  c.data.train = target if oracle else source
  c.data.global_batch = 128
  c.evals.source_test = dict(dataset=source, split="test")
  c.evals.target_test = dict(dataset=target, split="test")
  c.train.steps = 3000
  c.train.log_every = 100
  c.eval_every = 1000
  c.optim.name = "sgd"
  c.optim.lr = 0.01
  c.optim.momentum = 0.9
  c.optim.weight_decay = 5e-4
  c.checkpoint.every = 1000
  if variant:
    tll_recipe(c)
  return c


def tll_recipe(c):
  """Transfer-Learning-Library's digits recipe (its examples' LeNet scripts, lr 0.01, batch 128):
  its LeNet (conv 20 and 50 channels, fc 500, a 256-wide bottleneck with batch norm, dropout 0.5
  after conv2 and fc1), inputs normalised to [-1, 1], SGD with Nesterov momentum 0.9 and weight
  decay 1e-3, lr 0.01 (1 + 0.001 i)^-0.75 at step i (optim.decay_per_step, so --config.train.steps=50000
  keeps it); 10,000 steps (TLL trains 50,000); PyTorch's default initialisers (TLL trains in PyTorch:
  nn.Conv2d / nn.Linear draw weights with a third of flax's lecun_normal variance and biases that
  are not 0; mmjax.models.inits), which raised CDAN M->U by 0.65-1.15 points a seed."""
  c.model.update(channels=(20, 50), hidden=500, features=256, dropout=0.5, bottleneck_norm=True,
                 center_inputs=True, param_init="torch")
  c.adapt.domain_init = "torch"   # the domain classifier's too, where a method has one
  c.train.steps = 10000
  c.optim.schedule = "dann"  # lr / (1 + alpha p)^0.75 with p = i / steps
  c.optim.decay_alpha = 0.0
  c.optim.decay_per_step = 0.001   # lr (1 + 0.001 i)^-0.75 at step i, whatever train.steps
  c.optim.weight_decay = 1e-3
  c.optim.nesterov = True
  c.eval_every = 2000
  c.checkpoint.every = 2000


def sweep():
  """The settings the digits table runs (seeds are added by the experiment runner)."""
  return [{"arg": arg} for arg in ARGS]
