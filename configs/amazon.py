"""Amazon reviews (DANN paper §5.1): a shallow network on 5000-d counts, NN (source only) and DANN.

Args: <method>/<source>_<target>, method in nn | dann, domains books | dvd | electronics | kitchen
(e.g. configs/amazon.py:dann/books_dvd). Train on the source's 2000 labelled reviews plus the
target's 2000 train reviews without labels; evaluate on the target's test file.

A "/val" suffix (configs/amazon.py:dann/books_dvd/val) trains on a fixed 80% of the source's
reviews (data split "train_fit") and also evaluates on the other 20% ("source_val"), the held-out
set the model-selection protocols of mmjax.selection read (experiments/amazon_selection.py).

The paper's network (Ganin et al. 2016, §5.1.2 and the authors' code): one hidden layer of 50
sigmoid units, a logistic domain regressor on it, plain SGD. The authors' code trains one example at
a time for up to 200 epochs with early stopping on a source validation split; this config uses
mini-batches and a fixed number of steps, and the reversal schedule lambda_p scaled to lambda_max.
"""
from mmjax.config import base_config

DOMAINS = ("books", "dvd", "electronics", "kitchen")
PAIRS = tuple(f"{s}_{t}" for s in DOMAINS for t in DOMAINS if s != t)
ARGS = tuple(f"{m}/{p}" for m in ("nn", "dann") for p in PAIRS)


def get_config(arg=None):
  arg = arg or "dann/books_dvd"
  base = arg.removesuffix("/val")
  if base not in ARGS:
    raise ValueError(f"unknown amazon arg {arg!r}; use <nn|dann>/<source>_<target>[/val] with "
                     f"domains {', '.join(DOMAINS)}")
  method, pair = base.split("/")
  source, target = pair.split("_")
  c = base_config()
  c.method = "supervised" if method == "nn" else "dann"
  c.model.name = "mlp"
  c.model.num_classes = 2
  c.model.hidden = (50,)
  c.model.activation = "sigmoid"
  c.data.input_key = "features"
  c.data.train = f"amazon_{source}"
  c.data.target = f"amazon_{target}" if method == "dann" else ""
  c.data.global_batch = 32
  c.evals.target_test = dict(dataset=f"amazon_{target}", split="test")
  c.evals.source_test = dict(dataset=f"amazon_{source}", split="test")
  if base != arg:  # "/val": hold 20% of the source out for model selection
    c.data.train_split = "train_fit"
    c.evals.source_val = dict(dataset=f"amazon_{source}", split="train_val")
  c.adapt.domain_layers = 0        # logistic domain regressor on the hidden layer, as in the paper
  c.adapt.lambda_max = 0.1
  c.train.steps = 3000
  c.train.log_every = 250
  c.train.sweep_axis = "map"       # as a sweep: lax.map over the 60 runs of a row, 3.4x faster per
                                   # step than "unroll" and 2x faster than vmap (benchmarks/README.md)
  c.eval_every = 0
  c.optim.name = "sgd"
  c.optim.momentum = 0.0
  c.optim.lr = 0.05
  c.checkpoint.every = 3000
  return c


def sweep():
  return [{"arg": arg} for arg in ARGS + tuple(f"{arg}/val" for arg in ARGS)]
