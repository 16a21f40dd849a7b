"""Office-Caltech10 SURF (Gong et al. 2012): an MLP on the 800-d histograms, source only, DANN, DAN.

Args: <method>/<source>_<target>, method in source_only | dann | dan, domains amazon | webcam |
dslr | caltech (e.g. configs/office.py:dann/amazon_webcam). Train on a fixed 80% of the source
(data split "train_fit") plus the whole target without labels; evaluate on the whole target
("target_test") and on the held-out 20% of the source ("source_val", which the model-selection
protocols of mmjax.selection read).

The recipe was set once, before any run, for small data: one ReLU hidden layer of 256 units with
dropout 0.5, SGD with momentum and weight decay, batch 32 per stream, 1500 steps (about 50 epochs of
the largest domain). DANN (Ganin et al. 2016): one hidden layer of 256 units in the domain
classifier behind the reversal, lambda_max 0.1 on the usual schedule. DAN (Long et al. 2015): the
multi-kernel MMD of the hidden layer with weight 1.
"""
from mmjax.config import base_config

DOMAINS = ("amazon", "webcam", "dslr", "caltech")
PAIRS = tuple(f"{s}_{t}" for s in DOMAINS for t in DOMAINS if s != t)
METHODS = {"source_only": "supervised", "dann": "dann", "dan": "dan"}
ARGS = tuple(f"{m}/{p}" for m in METHODS for p in PAIRS)


def get_config(arg=None):
  arg = arg or "dann/amazon_webcam"
  if arg not in ARGS:
    raise ValueError(f"unknown office arg {arg!r}; use <{'|'.join(METHODS)}>/<source>_<target> "
                     f"with domains {', '.join(DOMAINS)}")
  method, pair = arg.split("/")
  source, target = pair.split("_")
  c = base_config()
  c.method = METHODS[method]
  c.model.name = "mlp"
  c.model.num_classes = 10
  c.model.hidden = (256,)
  c.model.activation = "relu"
  c.model.dropout = 0.5
  c.data.input_key = "features"
  c.data.train = f"office_{source}"
  c.data.train_split = "train_fit"
  c.data.target = f"office_{target}"  # read by dann and dan; source_only ignores it
  c.data.target_split = "train"
  c.data.global_batch = 32
  c.evals.target_test = dict(dataset=f"office_{target}", split="test")
  c.evals.source_val = dict(dataset=f"office_{source}", split="train_val")
  c.adapt.domain_layers = 1
  c.adapt.domain_hidden = 256
  c.adapt.lambda_max = 0.1
  c.adapt.mmd_weight = 1.0
  c.train.steps = 1500
  c.train.log_every = 250
  c.train.sweep_axis = "map"       # as a sweep: lax.map over runs, as for the Amazon MLP
  c.eval_every = 0
  c.optim.name = "sgd"
  c.optim.momentum = 0.9
  c.optim.lr = 0.01
  c.optim.weight_decay = 5e-4
  c.checkpoint.every = 1500
  return c


def sweep():
  return [{"arg": arg} for arg in ARGS]
