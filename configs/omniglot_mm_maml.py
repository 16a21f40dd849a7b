"""Multimodal few-shot: MAML on Omniglot 5-way 1-shot, each drawing as image + pen strokes.

Args: <image|strokes|image_strokes>[_cpu], e.g. image_strokes_cpu.
- Tasks: meta.dataset = "omniglot_strokes" (images_background_small1/2 drawings with their stroke
  files, mmjax/data/omniglot_strokes.py): meta-train on its "train" split (136 characters of 5
  alphabets), meta-test on "test" (106 characters of 3 other alphabets), so test characters and
  alphabets are never seen in training. Classes are characters; no rotated classes (the strokes
  would have to turn with the image).
- The model is mmjax.models.FusionTransformer, small enough for second-order MAML on a CPU: width
  32, depth 1, 2 heads, MLP 64, no dropout (no rng in the inner loop) and only LayerNorm (per
  example, so support and query need no batch statistics). The image is tokenized by the `cnn`
  tokenizer (4x4 tokens), the strokes by the `strokes` tokenizer (one token per pen point);
  image_strokes fuses the two class tokens by concatenation and an MLP (fusion="concat"); image
  and strokes are the same network with one modality, so the image-only row is image_strokes
  without the strokes encoder.
- MAML's 5-way 1-shot settings otherwise (Finn et al. 2017, §5.2): 1 inner step, meta-batch 32,
  Adam 0.001, 60,000 meta-iterations (not run here; with 136 training characters instead of 4800
  rotated ones it may overfit long before), 15 queries, 600 test tasks. Two changes for the
  Transformer, chosen on meta-train tasks only: the inner rate is 0.1, not 0.4 (after 400-step
  probes at the CPU budget, training query accuracy after adaptation was 67% with 0.1 and 58% with
  0.4), and meta-test adapts with 1 step, as in training, not 3 (on 64 new tasks of the meta-train
  split, the alpha-0.1 probe's query accuracy after 1, 2, 3 steps was 67.5, 59.9, 53.4%: later
  steps overshoot).
- _cpu: the budget of this 2-core CPU machine: 5 queries per class, meta-batch 8, 1000
  meta-iterations, 600 test tasks, tasks unrolled in the step (meta.task_map = "unroll": 11.1
  meta-steps/s here against 3.2 with lax.map and 2.3 with vmap; on 2026-11-28, after vmapped oneDNN
  convs went one task per core, image_strokes_cpu still ran 6.6 meta-steps/s unrolled against 4.4
  with vmap, so this config keeps unroll, unlike omniglot_maml.py's _cpu configs).
"""
from mmjax.config import base_config

MODALITIES = {"image": ("image",), "strokes": ("strokes",), "image_strokes": ("image", "strokes")}
TOKENIZERS = {"image": "cnn", "strokes": "strokes"}
ARGS = tuple(f"{m}{scale}" for scale in ("", "_cpu") for m in MODALITIES)


def get_config(arg=None):
  arg = arg or "image_strokes"
  if arg not in ARGS:
    raise ValueError(f"unknown omniglot_mm_maml arg {arg!r}; use one of {', '.join(ARGS)}")
  cpu = arg.endswith("_cpu")
  modalities = MODALITIES[arg.removesuffix("_cpu")]
  c = base_config()
  c.trainer = "meta"
  c.method = "maml"
  c.model.name = "fusion_transformer"
  c.model.modalities = modalities
  c.model.tokenizers = tuple(TOKENIZERS[m] for m in modalities)
  c.model.fusion = "concat"
  c.model.num_classes = 5
  c.model.width = 32
  c.model.depth = 1
  c.model.num_heads = 2
  c.model.mlp_dim = 64
  c.data.input_key = ",".join(modalities)
  c.meta.algorithm = "maml"
  c.meta.dataset = "omniglot_strokes"
  c.meta.train_split = "train"
  c.meta.test_split = "test"
  c.meta.rotate_classes = False
  c.meta.ways = 5
  c.meta.shots = 1
  c.meta.queries = 15
  c.meta.inner_steps = 1
  c.meta.inner_lr = 0.1
  c.meta.test_inner_steps = 1
  c.meta.meta_batch = 32
  c.meta.test_tasks = 600
  c.optim.name = "adam"
  c.optim.lr = 0.001
  c.train.steps = 60_000
  c.train.log_every = 100
  c.checkpoint.every = 2000
  if cpu:
    c.meta.queries = 5
    c.meta.meta_batch = 8
    c.meta.task_map = "unroll"
    c.train.steps = 1000
    c.train.log_every = 50
    c.checkpoint.every = 250
  return c


def sweep():
  return [{"arg": arg} for arg in ARGS]
