"""Digits, LeNet, supervised: the "source only" baseline and the "train on target" oracle.

Args: mnist_usps | usps_mnist (train on the source domain, evaluate on both test sets), and
mnist_usps_oracle | usps_mnist_oracle (train on the target domain's train split: the upper bound).
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
  if arg not in ARGS:
    raise ValueError(f"unknown digits arg {arg!r}; use one of {', '.join(ARGS)}")
  source, target, oracle = ARGS[arg]
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
  return c


def sweep():
  """The settings the digits table runs (seeds are added by the experiment runner)."""
  return [{"arg": arg} for arg in ARGS]
