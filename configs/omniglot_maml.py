"""Omniglot few-shot classification with MAML and relatives (Finn et al. 2017, §5.2 and Table 1).

Args: <ways>w<shots>s[_fo|_anil|_metasgd|_reptile][_cpu], e.g. 5w1s, 20w5s_fo, 5w1s_anil_cpu.
- 5-way: 1 inner step, alpha = 0.4, meta-batch 32; 20-way: 5 inner steps, alpha = 0.1, meta-batch
  16; 3 test-time steps; Adam 0.001; 60,000 meta-iterations (the paper's settings).
- The network is MAML's Omniglot conv4: stride-2 3x3 convs of 64 (no max-pool), batch norm with
  batch statistics, linear head on the 2x2x64 features.
- Tasks: the 1200 training characters with rotations as new classes (4800 classes); meta-test on
  600 tasks of the 423 other characters (also rotated), 15 queries per class. MAML's code used K
  queries per class; 15 lowers the variance of the test estimate.
- _fo: first-order MAML. _anil: adapt only the head (Raghu et al. 2020). _metasgd: learned
  per-parameter inner rates (Li et al. 2017), starting from alpha. _reptile: Nichol et al. 2018
  with plain SGD inner steps on the support set (5 steps, alpha 0.1, 10 at test), outer SGD of
  rate 1 annealed to 0 (cosine); their paper used Adam inner steps and a linear anneal.
- _cpu: the budget that fits this 2-core CPU machine: 5 queries per class, meta-batch 8 and 500
  meta-iterations (20-way: 4 tasks, 250 iterations), 600 test tasks as in the full configs, tasks
  vmapped in the step (the default meta.task_map; since 2026-11-28 vmapped oneDNN convs run one
  task per core, and 5w1s_cpu's meta-step ran 173.6 tasks/s with vmap against 119.6 unrolled;
  benchmarks/README.md). The tables in the README were made with the tasks unrolled
  (meta.task_map = "unroll"): the same math, other rounding. It shows the path works and learns;
  it does not reproduce the table (see README, Meta-learning).
"""
from mmjax.config import base_config

SETTINGS = ("5w1s", "5w5s", "20w1s", "20w5s")
VARIANTS = {"": "maml", "_fo": "fomaml", "_anil": "anil", "_metasgd": "metasgd",
            "_reptile": "reptile"}
ARGS = tuple(f"{s}{v}{scale}" for scale in ("", "_cpu") for s in SETTINGS for v in VARIANTS)


def _parse(arg):
  if arg not in ARGS:
    raise ValueError(f"unknown omniglot_maml arg {arg!r}; use <5w1s|5w5s|20w1s|20w5s>"
                     f"[{'|'.join(v for v in VARIANTS if v)}][_cpu], e.g. 5w1s_fo_cpu")
  cpu = arg.endswith("_cpu")
  arg = arg.removesuffix("_cpu")
  setting, _, variant = arg.partition("_")
  ways, shots = (int(x) for x in setting[:-1].split("w"))
  return ways, shots, VARIANTS["_" + variant if variant else ""], cpu


def get_config(arg=None):
  ways, shots, algorithm, cpu = _parse(arg or "5w1s")
  c = base_config()
  c.trainer = "meta"
  c.method = "maml"
  c.model.name = "conv4"
  c.model.num_classes = ways
  c.model.width = 64
  c.model.pool = "stride"
  c.data.input_key = "image"
  c.meta.algorithm = algorithm
  c.meta.dataset = "omniglot"
  c.meta.rotate_classes = True
  c.meta.ways = ways
  c.meta.shots = shots
  c.meta.queries = 15
  c.meta.inner_steps = 1 if ways == 5 else 5
  c.meta.inner_lr = 0.4 if ways == 5 else 0.1
  c.meta.test_inner_steps = 3
  c.meta.meta_batch = 32 if ways == 5 else 16
  c.meta.test_tasks = 600
  c.optim.name = "adam"
  c.optim.lr = 0.001
  c.train.steps = 60_000
  c.train.log_every = 100
  c.checkpoint.every = 2000
  if algorithm == "reptile":
    c.meta.inner_steps = 5
    c.meta.inner_lr = 0.1
    c.meta.test_inner_steps = 10
    c.optim.name = "sgd"
    c.optim.momentum = 0.0
    c.optim.lr = 1.0
    c.optim.schedule = "cosine"
  if cpu:
    c.meta.queries = 5
    c.meta.meta_batch = 8 if ways == 5 else 4
    c.train.steps = 500 if ways == 5 else 250
    c.train.log_every = 50
    c.checkpoint.every = 250
  return c


def sweep():
  return [{"arg": arg} for arg in ARGS]
