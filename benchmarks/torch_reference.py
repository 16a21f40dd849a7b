"""PyTorch references of mmjax's core train steps, for the speed ratios of benchmarks/core_steps.py.

Each reference is the same model, shapes, loss and optimizer as the engine's step, written the
ordinary PyTorch way (eager mode, torch.optim), and can load the JAX params so the harness checks
that both compute the same loss before it times them. Needs requirements-bench.txt (CPU torch).
"""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class _ReverseGradient(torch.autograd.Function):
  """Identity forward, -coeff * g backward (Ganin et al. 2016, eq. 13-14)."""

  @staticmethod
  def forward(ctx, x, coeff):
    ctx.coeff = coeff
    return x.view_as(x)

  @staticmethod
  def backward(ctx, g):
    return -ctx.coeff * g, None


class DannLeNet(nn.Module):
  """mmjax's LeNet (conv 32 5x5, pool, conv 48 5x5, pool, 100, 100, classes) with DANN's domain
  classifier (domain_layers x domain_hidden ReLU, then 1 logit) behind a gradient reversal."""

  def __init__(self, num_classes=10, hidden=100, domain_hidden=1024, domain_layers=2):
    super().__init__()
    self.conv1 = nn.Conv2d(1, 32, 5)
    self.conv2 = nn.Conv2d(32, 48, 5)
    self.fc1 = nn.Linear(4 * 4 * 48, hidden)
    self.fc2 = nn.Linear(hidden, hidden)
    self.head = nn.Linear(hidden, num_classes)
    sizes = [hidden] + [domain_hidden] * domain_layers
    self.domain = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
    self.domain_head = nn.Linear(sizes[-1], 1)

  def forward(self, x, reversal: float):
    x = F.max_pool2d(F.relu(self.conv1(x)), 2)
    x = F.max_pool2d(F.relu(self.conv2(x)), 2)
    # Flatten in (h, w, c) order, as the NHWC JAX model does, so the two share fc1's weights.
    x = x.permute(0, 2, 3, 1).flatten(1)
    features = F.relu(self.fc2(F.relu(self.fc1(x))))
    h = _ReverseGradient.apply(features, reversal)
    for layer in self.domain:
      h = F.relu(layer(h))
    return self.head(features), self.domain_head(h)[:, 0]

  def load_jax_params(self, params) -> None:
    """Copies a JAX DomainAdversarialNet(LeNet) param tree (HWIO convs, [in, out] denses) in."""
    pairs = [(self.conv1, params["backbone"]["conv1"]), (self.conv2, params["backbone"]["conv2"]),
             (self.fc1, params["backbone"]["fc1"]), (self.fc2, params["backbone"]["fc2"]),
             (self.head, params["backbone"]["head"]), (self.domain_head, params["domain_head"])]
    pairs += [(layer, params[f"domain_fc{i + 1}"]) for i, layer in enumerate(self.domain)]
    with torch.no_grad():
      for module, p in pairs:
        kernel = np.asarray(p["kernel"])
        kernel = kernel.transpose(3, 2, 0, 1) if kernel.ndim == 4 else kernel.T
        module.weight.copy_(torch.tensor(kernel))
        module.bias.copy_(torch.tensor(np.asarray(p["bias"])))


def dann_loss(model, source_images, source_labels, target_images, reversal):
  """Source cross-entropy + mean domain BCE over source (0) and target (1), one forward pass."""
  n = source_images.shape[0]
  logits, domain_logits = model(torch.cat([source_images, target_images]), reversal)
  domain = torch.cat([torch.zeros(n, device=source_images.device),
                      torch.ones(target_images.shape[0], device=source_images.device)])
  return (F.cross_entropy(logits[:n], source_labels)
          + F.binary_cross_entropy_with_logits(domain_logits, domain))


class DannStep:
  """One DANN train step: SGD momentum with coupled weight decay (optax add_decayed_weights then
  sgd, which is what torch.optim.SGD(weight_decay=...) computes), DANN's lr and lambda schedules.

  Images come in NHWC (the pipeline's layout) and are moved to NCHW once, outside the timed step.
  """

  def __init__(self, batch, config, total_steps: int, params=None, device="cpu"):
    self.model = DannLeNet(config.model.num_classes, domain_hidden=config.adapt.domain_hidden,
                           domain_layers=config.adapt.domain_layers)
    if params is not None:
      self.model.load_jax_params(params)
    self.model.to(device)
    o, a = config.optim, config.adapt
    self.opt = torch.optim.SGD(self.model.parameters(), lr=o.lr, momentum=o.momentum,
                               weight_decay=o.weight_decay)
    self._lr = lambda p: o.lr / (1.0 + o.decay_alpha * p) ** o.decay_beta
    self._reversal = lambda p: a.lambda_max * (2.0 / (1.0 + np.exp(-a.gamma * p)) - 1.0)
    self.total_steps, self.step = total_steps, 0
    to_nchw = lambda v: torch.from_numpy(np.ascontiguousarray(
        np.asarray(v).transpose(0, 3, 1, 2))).to(device)
    self.source = to_nchw(batch["source"]["image"])
    self.labels = torch.from_numpy(np.asarray(batch["source"]["label"]).astype(np.int64)).to(device)
    self.target = to_nchw(batch["target"]["image"])

  def loss(self, progress: float = 0.0) -> float:
    with torch.no_grad():
      return float(dann_loss(self.model, self.source, self.labels, self.target,
                             self._reversal(progress)))

  def __call__(self) -> float:
    progress = self.step / self.total_steps
    for group in self.opt.param_groups:
      group["lr"] = self._lr(progress)
    self.opt.zero_grad(set_to_none=True)
    loss = dann_loss(self.model, self.source, self.labels, self.target, self._reversal(progress))
    loss.backward()
    self.opt.step()
    self.step += 1
    return loss


class MamlConv4Step:
  """Second-order MAML meta-step of conv4 (Finn et al. 2017) the usual PyTorch way: tasks in a
  Python loop, functional conv/batch-norm over a params list, inner gradients with create_graph,
  torch.optim.Adam on the summed query losses (as learn2learn's and higher's MAML run it).

  Same shapes as mmjax's omniglot_maml config: 4 x [3x3 stride-2 conv of `width`, batch-statistics
  norm (eps 1e-3), ReLU], linear head on 2x2x`width`. Tasks: {"support"/"query": {"image" [T, N,
  28, 28, 1] float32, "label" [T, N] int}} as numpy (mmjax.data.episodes.batch).
  """

  def __init__(self, tasks, ways: int, inner_steps: int, inner_lr: float, lr: float,
               width: int = 64, seed: int = 0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(width, 1, 3, 3)] + [(width, width, 3, 3)] * 3
    self.params = []
    for shape in shapes:
      fan_in = shape[1] * 9
      self.params += [torch.randn(shape, generator=gen) * (1 / fan_in) ** 0.5,
                      torch.zeros(shape[0]), torch.ones(shape[0]), torch.zeros(shape[0])]
    self.params += [torch.randn(ways, 4 * width, generator=gen) * (1 / (4 * width)) ** 0.5,
                    torch.zeros(ways)]
    self.params = [p.to(device).requires_grad_(True) for p in self.params]
    self.opt = torch.optim.Adam(self.params, lr=lr)
    self.inner_steps, self.inner_lr = inner_steps, inner_lr
    self.tasks = [{part: (torch.from_numpy(np.ascontiguousarray(
        tasks[part]["image"][t].transpose(0, 3, 1, 2))).to(device), torch.from_numpy(
            tasks[part]["label"][t].astype(np.int64)).to(device)) for part in ("support", "query")}
                  for t in range(tasks["support"]["image"].shape[0])]

  @staticmethod
  def forward(params, x):
    for i in range(4):
      w, b, scale, shift = params[4 * i:4 * i + 4]
      x = F.conv2d(x, w, b, stride=2, padding=1)
      mean = x.mean((0, 2, 3), keepdim=True)
      var = ((x - mean) ** 2).mean((0, 2, 3), keepdim=True)
      x = F.relu((x - mean) / torch.sqrt(var + 1e-3) * scale[None, :, None, None]
                 + shift[None, :, None, None])
    return F.linear(x.flatten(1), params[-2], params[-1])

  def __call__(self) -> float:
    self.opt.zero_grad()
    total = 0.0
    for task in self.tasks:
      fast = self.params
      x, y = task["support"]
      for _ in range(self.inner_steps):
        grads = torch.autograd.grad(F.cross_entropy(self.forward(fast, x), y), fast,
                                    create_graph=True)
        fast = [p - self.inner_lr * g for p, g in zip(fast, grads)]
      x, y = task["query"]
      loss = F.cross_entropy(self.forward(fast, x), y) / len(self.tasks)
      loss.backward()
      total = total + loss.detach()
    self.opt.step()
    return total


class FusionTransformerNet(nn.Module):
  """mmjax's FusionTransformer with `early` fusion of an image (patch tokens) and a question (token
  ids), built on torch's nn.TransformerEncoder (pre-LN, GELU, no dropout): per modality a class
  token, learned position and type embeddings; one encoder over both sequences and a final
  LayerNorm; the mean of the two class tokens' outputs; a linear head."""

  def __init__(self, num_classes=10, width=128, depth=4, num_heads=4, mlp_dim=512, patch_size=8,
               vocab_size=32, image_size=64, question_len=16):
    super().__init__()
    self.patch = nn.Conv2d(3, width, patch_size, stride=patch_size)
    self.embed = nn.Embedding(vocab_size, width)
    patches = (image_size // patch_size) ** 2
    self.cls = nn.ParameterList([nn.Parameter(torch.zeros(1, 1, width)) for _ in range(2)])
    self.pos = nn.ParameterList([nn.Parameter(0.02 * torch.randn(1, n + 1, width))
                                 for n in (patches, question_len)])
    self.type_emb = nn.ParameterList([nn.Parameter(0.02 * torch.randn(width)) for _ in range(2)])
    layer = nn.TransformerEncoderLayer(
        width, num_heads, mlp_dim, dropout=0.0, activation=_gelu_tanh, layer_norm_eps=1e-6,
        batch_first=True, norm_first=True)
    self.encoder = nn.TransformerEncoder(layer, depth, norm=nn.LayerNorm(width, eps=1e-6),
                                         enable_nested_tensor=False)
    self.head = nn.Linear(width, num_classes)
    self.image_tokens = patches + 1

  def forward(self, image, question):
    """image [B, 3, H, W] (NCHW), question [B, L] int64 ids (0 = padding) -> logits [B, classes]."""
    b = image.shape[0]
    seqs = [self.patch(image).flatten(2).transpose(1, 2), self.embed(question)]
    tokens = [torch.cat([self.cls[i].expand(b, -1, -1), s], 1) + self.pos[i] + self.type_emb[i]
              for i, s in enumerate(seqs)]
    valid = torch.cat([torch.ones(b, self.image_tokens, dtype=torch.bool, device=image.device),
                       torch.ones(b, 1, dtype=torch.bool, device=image.device), question != 0], 1)
    x = self.encoder(torch.cat(tokens, 1), src_key_padding_mask=~valid)
    return self.head((x[:, 0] + x[:, self.image_tokens]) / 2)

  def load_jax_params(self, params) -> None:
    """Copies a JAX FusionTransformer(early; image: patch, question: tokens) param tree in."""
    t = lambda v: torch.tensor(np.asarray(v, np.float32))
    dense = lambda m, p: (m.weight.copy_(t(p["kernel"]).T), m.bias.copy_(t(p["bias"])))
    with torch.no_grad():
      img, q = params["image_tokenizer"], params["question_tokenizer"]
      self.patch.weight.copy_(t(img["patch"]["embedding"]["kernel"]).permute(3, 2, 0, 1))
      self.patch.bias.copy_(t(img["patch"]["embedding"]["bias"]))
      self.embed.weight.copy_(t(q["tokens"]["embedding"]["embedding"]))
      for i, tok in enumerate((img, q)):
        self.cls[i].copy_(t(tok["cls"]))
        self.pos[i].copy_(t(tok["position_embedding"]))
        self.type_emb[i].copy_(t(tok["type_embedding"]))
      enc = params["fusion_encoder"]
      for i, layer in enumerate(self.encoder.layers):
        p = enc[f"layer_{i}"]
        att = p["self_attention"]
        heads = lambda k: t(att[k]["kernel"]).T
        layer.self_attn.in_proj_weight.copy_(torch.cat([heads(k) for k in ("query", "key", "value")]))
        layer.self_attn.in_proj_bias.copy_(torch.cat([t(att[k]["bias"]).reshape(-1)
                                                      for k in ("query", "key", "value")]))
        dense(layer.self_attn.out_proj, att["out"])
        for norm, name in ((layer.norm1, "attention_norm"), (layer.norm2, "mlp_norm")):
          norm.weight.copy_(t(p[name]["scale"]))
          norm.bias.copy_(t(p[name]["bias"]))
        dense(layer.linear1, p["mlp"]["fc1"])
        dense(layer.linear2, p["mlp"]["fc2"])
      self.encoder.norm.weight.copy_(t(enc["encoder_norm"]["scale"]))
      self.encoder.norm.bias.copy_(t(enc["encoder_norm"]["bias"]))
      dense(self.head, params["head"])


def _gelu_tanh(x):
  return F.gelu(x, approximate="tanh")  # flax's nn.gelu default


class FusionTransformerStep:
  """One Adam step of FusionTransformerNet on a cached batch (image NHWC float32, question ids,
  label), optionally under bf16 autocast (fp32 params and optimizer state, as config.dtype does)."""

  def __init__(self, batch, lr: float, params=None, device="cpu", bf16: bool = False, **model_kw):
    self.model = FusionTransformerNet(**model_kw)
    if params is not None:
      self.model.load_jax_params(params)
    self.model.to(device)
    self.opt = torch.optim.Adam(self.model.parameters(), lr=lr)
    self.image = torch.from_numpy(np.ascontiguousarray(
        np.asarray(batch["image"], np.float32).transpose(0, 3, 1, 2))).to(device)
    self.question = torch.from_numpy(np.asarray(batch["question"]).astype(np.int64)).to(device)
    self.label = torch.from_numpy(np.asarray(batch["label"]).astype(np.int64)).to(device)
    self.autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16)

  def _loss(self):
    with self.autocast:
      logits = self.model(self.image, self.question)
    return F.cross_entropy(logits.float(), self.label)

  def loss(self) -> float:
    with torch.no_grad():
      return float(self._loss())

  def __call__(self):
    self.opt.zero_grad(set_to_none=True)
    loss = self._loss()
    loss.backward()
    self.opt.step()
    return loss
