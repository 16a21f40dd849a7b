"""Audio-visual digits: classify a spoken digit (FSDD) paired with an image of it (MNIST).

Args: image | audio (one modality) | concat | weighted_sum | late | early | cross_attention |
bottleneck (the fusion strategies of `mmjax.models.fusion`). Same small Transformer everywhere: the
image as 16 patch tokens (7x7), the audio as log-mel patch tokens computed in the model.
"""
from mmjax.config import base_config

FUSIONS = ("concat", "weighted_sum", "late", "early", "cross_attention", "bottleneck")
ARGS = ("image", "audio") + FUSIONS
TOKENIZERS = {"image": "patch", "audio": "audio"}


def get_config(arg=None):
  arg = arg or "early"
  if arg not in ARGS:
    raise ValueError(f"unknown av_digits arg {arg!r}; use one of {', '.join(ARGS)}")
  modalities = (arg,) if arg in TOKENIZERS else ("image", "audio")
  c = base_config()
  c.method = "supervised"
  c.data.train = "av_digits"
  c.data.input_key = ",".join(modalities)
  c.data.global_batch = 64
  c.evals.test = dict(dataset="av_digits", split="test")
  c.eval_batch = 300
  c.model = dict(name="fusion_transformer", modalities=modalities,
                 tokenizers=tuple(TOKENIZERS[m] for m in modalities),
                 fusion="early" if arg in TOKENIZERS else arg, num_classes=10, width=64, depth=2,
                 num_heads=4, mlp_dim=128, dropout=0.1, patch_size=7, bottleneck_tokens=4,
                 fusion_layer=1)
  c.optim.name = "adamw"
  c.optim.lr = 1e-3
  c.optim.weight_decay = 1e-4
  c.optim.schedule = "warmup_cosine"
  c.optim.warmup_steps = 100
  c.optim.grad_clip_norm = 1.0
  c.train.steps = 1500
  c.train.log_every = 100
  c.checkpoint.every = 500
  return c


def sweep():
  return [{"arg": arg} for arg in ARGS]
