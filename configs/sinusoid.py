"""Sinusoid regression (Finn et al. 2017, §5.1 and Appendix C): MAML and the pretrained baseline.

Args: maml | pretrained, with _cpu for this machine's budget (e.g. maml_cpu).
- The paper's network: 2 hidden layers of 40 ReLU units; K = 10 support and 10 query points per
  task, one inner step of alpha = 0.01, meta-batch 25, Adam 0.001, 70,000 meta-iterations; MSE on
  600 test tasks after 1, 5 and 10 test-time steps of alpha (every count up to 10 is reported).
- pretrained: the same network trained on the query points of every task with no adaptation
  (MAML with 0 inner steps is exactly that; see tests/test_maml.py), then fine-tuned at test time
  with the same steps as MAML. The paper tuned the baseline's test-time step size; ours is alpha.
- _cpu: 10,000 meta-iterations.
"""
from mmjax.config import base_config

ARGS = ("maml", "pretrained", "maml_cpu", "pretrained_cpu")


def get_config(arg=None):
  arg = arg or "maml"
  if arg not in ARGS:
    raise ValueError(f"unknown sinusoid arg {arg!r}; use one of {', '.join(ARGS)}")
  c = base_config()
  c.trainer = "meta"
  c.method = "maml"
  c.model.name = "mlp"
  c.model.num_classes = 1          # the regression output
  c.model.hidden = (40, 40)
  c.model.activation = "relu"
  c.data.input_key = "x"
  c.meta.algorithm = "maml"
  c.meta.dataset = "sinusoid"
  c.meta.loss = "mse"
  c.meta.shots = 10
  c.meta.queries = 10
  c.meta.inner_steps = 0 if arg.startswith("pretrained") else 1
  c.meta.inner_lr = 0.01
  c.meta.test_inner_steps = 10
  c.meta.meta_batch = 25
  c.meta.test_tasks = 600
  c.optim.name = "adam"
  c.optim.lr = 0.001
  c.train.steps = 10_000 if arg.endswith("_cpu") else 70_000
  c.train.log_every = 500
  c.train.sweep_axis = "vmap"      # as a sweep: the tiny MLP's runs batch well (benchmarks/README.md)
  c.checkpoint.every = 5000
  return c


def sweep():
  return [{"arg": arg} for arg in ARGS]
