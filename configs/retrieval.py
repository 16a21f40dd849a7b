"""Cross-modal retrieval with a dual encoder and symmetric InfoNCE.

Args: omniglot (image <-> pen strokes of the same drawing, held-out characters: instance retrieval)
| av_digits (audio <-> image; a hit is an item of the same digit).
"""
from mmjax.config import base_config

ARGS = {
    "omniglot": ("omniglot_strokes", ("image", "strokes"), ("patch", "strokes")),
    "av_digits": ("av_digits", ("audio", "image"), ("audio", "patch")),
}


def get_config(arg=None):
  arg = arg or "omniglot"
  if arg not in ARGS:
    raise ValueError(f"unknown retrieval arg {arg!r}; use one of {', '.join(ARGS)}")
  dataset, modalities, tokenizers = ARGS[arg]
  c = base_config()
  c.method = "retrieval"
  c.data.train = dataset
  c.data.input_key = ",".join(modalities)
  c.data.global_batch = 128
  c.evals.test = dict(dataset=dataset, split="test")
  c.eval_batch = 500
  c.model = dict(name="dual_encoder", modalities=modalities, tokenizers=tokenizers, width=64,
                 depth=2, num_heads=4, mlp_dim=128, embed_dim=64, patch_size=7)
  c.optim.name = "adamw"
  c.optim.lr = 1e-3
  c.optim.weight_decay = 1e-4
  c.optim.schedule = "warmup_cosine"
  c.optim.warmup_steps = 100
  c.optim.grad_clip_norm = 1.0
  c.train.steps = 2000
  c.train.log_every = 100
  c.checkpoint.every = 500
  return c


def sweep():
  return [{"arg": arg} for arg in ARGS]
