"""mmjax's core train steps on a GPU, beside their PyTorch references and the chip's matmul ceiling.

python benchmarks/gpu_steps.py [--out=benchmarks/results/gpu_steps.json] [--sections=...]

Made for a short, one-shot session on an accelerator machine that has jax, flax, optax and torch
but no TensorFlow and no datasets: every batch is random data of the real shapes (speed does not
depend on the pixel values), and only the tf-free parts of mmjax are imported (models, methods,
`mmjax.train.steps` / `optim`, configs). Sections:

- `ceiling`: jitted 8192^3 matmuls in bfloat16 and float32 (default precision): the chip's
  practical FLOP/s ceilings, measured in the same run.
- `transformer`: the fusion Transformer train step (early fusion, Adam) at issue 3's benchmark shape
  (batch 64, 64 image + 16 question tokens, width 128, 4 layers) in float32 and bfloat16, and at a
  GPU-sized shape (batch 256, width 1024, 8 layers, 16 heads, MLP 4096) in bfloat16; PyTorch:
  nn.TransformerEncoder with the same params (losses checked equal), bf16 under autocast.
- `dann`: the DANN LeNet digits step (128 + 128 28x28 images, SGD momentum, DANN's schedules) with
  XLA's convs and with `fast_ops`, float32 and bfloat16; PyTorch reference with the same params.
- `maml`: the second-order MAML meta-step, conv4, 5-way 1-shot, 15 queries, meta-batch 32, tasks
  by `vmap` and by `unroll`; the PyTorch reference (tasks in a Python loop, create_graph=True).

Each step is timed as the median over `--repeats` of `--steps` steps, the JAX and PyTorch runners
alternating. FLOPs are XLA:CPU's cost_analysis() of the same step program (`flops.cpu_flops`: the
GPU's own cost_analysis leaves out what cuBLAS and cuDNN run and is recorded only for reference),
and for the Transformer also the model FLOPs of its matmuls (`flops.early_fusion_train_flops`);
`mfu` is the step's FLOP/s over the measured bf16 (or f32) matmul ceiling.
"""
import dataclasses
import json
import os
import pathlib
import platform
import sys
import time
import traceback
from typing import Callable

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import flops as flops_lib  # noqa: E402
import timing  # noqa: E402  (benchmarks/timing.py)
from mmjax import config as config_lib  # noqa: E402
from mmjax import methods  # noqa: E402
from mmjax.methods import inputs, maml  # noqa: E402
from mmjax.train import optim, steps  # noqa: E402

flags.DEFINE_list("sections", ["ceiling", "transformer", "dann", "maml"], "what to measure")
flags.DEFINE_integer("repeats", 5, "alternating repeats; the median is reported")
flags.DEFINE_integer("steps", 20, "steps per timed repeat")
flags.DEFINE_integer("matmul_size", 8192, "side of the ceiling matmuls")
flags.DEFINE_bool("torch", True, "time the PyTorch references too")
flags.DEFINE_bool("smoke", False, "tiny shapes, to check the script on a CPU before a device run")
flags.DEFINE_string("out", str(REPO / "benchmarks/results/gpu_steps.json"), "JSON output")
FLAGS = flags.FLAGS


@dataclasses.dataclass
class Step:
  """One measured step: JAX runner, optional torch runner (each runs n steps and syncs)."""
  name: str
  description: str
  jax: Callable[[int], None]
  flops: float                  # XLA:CPU's count of the same program (benchmarks/flops.py)
  dtype: str
  torch: Callable[[int], None] | None = None
  extra: dict = dataclasses.field(default_factory=dict)


def _sync_torch():
  import torch  # noqa: PLC0415
  if torch.cuda.is_available():
    torch.cuda.synchronize()


def _torch_device() -> str:
  import torch  # noqa: PLC0415
  if torch.cuda.is_available():
    # XLA on GPU runs float32 dots and convs with TF32 at its default precision; so does torch here.
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return "cuda"
  return "cpu"


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  return float((cost[0] if isinstance(cost, list) else cost)["flops"])


def _timed(runners: dict) -> dict:
  """Median seconds per step of each runner, alternating within every repeat
  (benchmarks/timing.py, as the CPU benchmarks)."""
  times = timing.interleaved(runners, FLAGS.steps, FLAGS.repeats)
  return {name: float(np.median(t)) for name, t in times.items()}


def _jax_runner(update, state, batch, rng):
  box = {"state": state}

  def run(n):
    for _ in range(n):
      box["state"], metrics = update(box["state"], batch, rng)
    jax.block_until_ready((box["state"], metrics))
  return run


def _torch_runner(step):
  def run(n):
    for _ in range(n):
      step()
    _sync_torch()
  return run


def ceilings() -> dict:
  """FLOP/s of jitted square matmuls in bfloat16 and float32 (default precision)."""
  n = FLAGS.matmul_size
  out = {}
  for dtype in ("bfloat16", "float32"):
    a, b = (jax.random.normal(jax.random.PRNGKey(i), (n, n), dtype) for i in (0, 1))
    matmul = jax.jit(jnp.matmul)

    def run(k, a=a, b=b, matmul=matmul):
      for _ in range(k):
        c = matmul(a, b)
      jax.block_until_ready(c)
    seconds = _timed({"m": run})["m"]
    out[dtype] = 2.0 * n ** 3 / seconds
    print(f"matmul {n}^3 {dtype}: {out[dtype] / 1e12:.1f} TFLOP/s", flush=True)
  # Whether float32 dots at the default precision use TF32 here: their error against HIGHEST.
  a, b = (jax.random.normal(jax.random.PRNGKey(i), (512, 512)) for i in (0, 1))
  exact = jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)
  out["f32_default_rel_err"] = float(jnp.linalg.norm(jnp.matmul(a, b) - exact)
                                     / jnp.linalg.norm(exact))
  print(f"float32 default-precision matmul, relative error vs HIGHEST: "
        f"{out['f32_default_rel_err']:.1e} (TF32 ~1e-3, full f32 ~1e-7)", flush=True)
  return out


def _state(cfg, model, example, part):
  return steps.init_state(model, example,
                          lambda p: optim.make_optimizer(cfg.optim, cfg.train.steps, params=p),
                          part, cfg.seed)


def _engine_step(cfg, method, model, local, example):
  """The engine's compiled update on a cached batch: (runner, state, batch, FLOPs, extra)."""
  part = steps.Partitioner(cfg.parallel)
  state, tx = _state(cfg, model, example, part)
  loss_fn = method.make_loss(cfg)
  raw = steps.make_update(loss_fn, model, tx, cfg.train.steps)
  update = part.compile_update(raw)
  batch, key = part.global_batch(local), jax.random.PRNGKey(1)
  extra = {"jax_loss": float(loss_fn(model, state.params, batch, key, 0.0)[0]),
           "gflop_device_cost_analysis": _flops(update.lower(state, batch, key).compile()) / 1e9}
  flops = flops_lib.cpu_flops(raw, state, batch, key)
  return _jax_runner(update, state, batch, key), state, flops, extra


def transformer_step(name, dtype, batch_size, width, depth, heads, mlp_dim) -> Step:
  cfg = config_lib.base_config()
  cfg.update(method="supervised", dtype=dtype)
  cfg.data.input_key = "image,question"
  cfg.data.global_batch = batch_size
  cfg.optim.name = "adam"
  model_kw = dict(width=width, depth=depth, num_heads=heads, mlp_dim=mlp_dim, patch_size=8,
                  vocab_size=32)
  cfg.model = dict(name="fusion_transformer", modalities=("image", "question"),
                   tokenizers=("patch", "tokens"), fusion="early", num_classes=10, **model_kw)
  method = methods.get_method(cfg.method)
  model = method.build_model(cfg)
  rng = np.random.default_rng(0)
  local = {"train": {"image": rng.random((batch_size, 64, 64, 3), np.float32),
                     "question": rng.integers(1, 32, (batch_size, 16)).astype(np.int32),
                     "label": rng.integers(0, 10, batch_size).astype(np.int32)}}
  example = inputs.example_inputs(local["train"], cfg.data.input_key)
  example["question"] = jnp.ones_like(example["question"])
  run, state, flops, extra = _engine_step(cfg, method, model, local, example)
  extra["gflop_model"] = flops_lib.early_fusion_train_flops(
      batch_size, 64, 8 * 8 * 3, 16, width, depth, mlp_dim) / 1e9
  torch_run = None
  if FLAGS.torch:
    import torch_reference  # noqa: PLC0415
    step = torch_reference.FusionTransformerStep(
        local["train"], cfg.optim.lr, params=jax.device_get(state.params), device=_torch_device(),
        bf16=dtype == "bfloat16", **model_kw)
    extra["torch_loss"] = step.loss()
    torch_run = _torch_runner(step)
  return Step(name, f"fusion Transformer (early), batch {batch_size}, 65+17 tokens, width {width}, "
              f"{depth} layers, {heads} heads, MLP {mlp_dim}, Adam, {dtype}",
              run, flops, dtype, torch_run, extra)


def dann_step(name, dtype, fast_ops) -> Step:
  cfg = config_lib.load_with_overrides(str(REPO / "configs/digits_adapt.py:dann/mnist_usps"),
                                       {"dtype": dtype})
  with cfg.unlocked():
    cfg.model.fast_ops = fast_ops
  method = methods.get_method(cfg.method)
  model = method.build_model(cfg)
  half = cfg.data.global_batch
  rng = np.random.default_rng(0)
  local = {s: {"image": rng.random((half, 28, 28, 1), np.float32),
               "label": rng.integers(0, 10, half).astype(np.int32)} for s in ("source", "target")}
  example = inputs.example_inputs(local["source"], cfg.data.input_key)
  run, state, flops, extra = _engine_step(cfg, method, model, local, example)
  torch_run = None
  if FLAGS.torch and dtype == "float32":
    import torch_reference  # noqa: PLC0415
    step = torch_reference.DannStep(local, cfg, cfg.train.steps,
                                    params=jax.device_get(state.params), device=_torch_device())
    extra["torch_loss"] = step.loss(0.0)
    torch_run = _torch_runner(step)
  return Step(name, f"DANN LeNet digits, {half}+{half} 28x28, SGD momentum, {dtype}, "
              f"{'fast_ops' if fast_ops else 'XLA convs'}",
              run, flops, dtype, torch_run, extra)


def maml_step(name, task_map, with_torch) -> Step:
  cfg = config_lib.load_with_overrides(str(REPO / "configs/omniglot_maml.py:5w1s"),
                                       {"meta.task_map": task_map})
  meta = cfg.meta
  model = maml.build_model(cfg)
  part = steps.Partitioner("jit")
  rng = np.random.default_rng(0)
  tasks = {part_name: {"image": rng.random((meta.meta_batch, meta.ways * n, 28, 28, 1), np.float32),
                       "label": np.tile(np.repeat(np.arange(meta.ways), n),
                                        (meta.meta_batch, 1)).astype(np.int32)}
           for part_name, n in (("support", meta.shots), ("query", meta.queries))}
  example = jnp.zeros((1, 28, 28, 1))
  params = maml.init_meta_params(cfg, model.init(jax.random.PRNGKey(0), example)["params"])
  tx = optim.make_optimizer(cfg.optim, cfg.train.steps, params=params)
  state = jax.jit(lambda p: steps.new_state(p, tx),
                  out_shardings=part.replicated)(params)
  raw = steps.make_meta_update(maml.make_meta_grad(cfg, model), tx)
  update = part.compile_update(raw)
  batch, key = part.global_batch(tasks), jax.random.PRNGKey(1)
  start = time.perf_counter()
  device_flops = _flops(update.lower(state, batch, key).compile())
  extra = {"compile_s": time.perf_counter() - start, "meta_batch": meta.meta_batch,
           "gflop_device_cost_analysis": device_flops / 1e9}
  flops = flops_lib.cpu_flops(raw, state, batch, key)
  torch_run = None
  if FLAGS.torch and with_torch:
    import torch_reference  # noqa: PLC0415
    torch_run = _torch_runner(torch_reference.MamlConv4Step(
        tasks, ways=meta.ways, inner_steps=meta.inner_steps, inner_lr=meta.inner_lr,
        lr=cfg.optim.lr, width=cfg.model.width, device=_torch_device()))
  return Step(name, f"second-order MAML conv4 {meta.ways}-way {meta.shots}-shot, {meta.queries} "
              f"queries, meta-batch {meta.meta_batch}, tasks by {task_map}",
              _jax_runner(update, state, batch, key), flops, "float32", torch_run, extra)


SECTIONS = {
    "transformer": lambda: [
        transformer_step("transformer_issue_f32", "float32", 64, 128, 4, 4, 512),
        transformer_step("transformer_issue_bf16", "bfloat16", 64, 128, 4, 4, 512),
        transformer_step("transformer_large_bf16", "bfloat16",
                         *((4, 64, 1, 4, 128) if FLAGS.smoke else (256, 1024, 8, 16, 4096)))],
    "dann": lambda: [dann_step("dann_xla_f32", "float32", False),
                     dann_step("dann_fast_ops_f32", "float32", True),
                     dann_step("dann_xla_bf16", "bfloat16", False)],
    "maml": lambda: [maml_step("maml_vmap", "vmap", True), maml_step("maml_unroll", "unroll", True)],
}


def measure(step: Step, ceiling: dict) -> dict:
  runners = {"jax": step.jax}
  if step.torch is not None:
    runners["torch"] = step.torch
  seconds = _timed(runners)
  row = {"entry": step.name, "description": step.description, "dtype": step.dtype,
         "jax_ms": 1e3 * seconds["jax"], "gflop_per_step": step.flops / 1e9,
         "tflops": step.flops / seconds["jax"] / 1e12, **step.extra}
  peak = ceiling.get("bfloat16" if step.dtype == "bfloat16" else "float32")
  if peak:
    row["ceiling_tflops"] = peak / 1e12
    row["mfu"] = step.flops / seconds["jax"] / peak
    if "gflop_model" in row:
      row["mfu_model_flops"] = row["gflop_model"] * 1e9 / seconds["jax"] / peak
  if "torch" in seconds:
    row["torch_ms"] = 1e3 * seconds["torch"]
    row["speed_vs_torch"] = seconds["torch"] / seconds["jax"]
  if "torch_loss" in row:
    row["loss_rel_diff"] = abs(row["jax_loss"] - row["torch_loss"]) / abs(row["torch_loss"])
  if "meta_batch" in row:
    row["tasks_per_s"] = row["meta_batch"] / seconds["jax"]
  return row


def _machine() -> dict:
  info = {"host": platform.node(), "jax": jax.__version__, "python": platform.python_version(),
          "platform": jax.devices()[0].platform, "device_kind": jax.devices()[0].device_kind,
          "devices": jax.device_count(), "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
  try:
    import torch  # noqa: PLC0415
    info["torch"] = torch.__version__
    info["torch_device"] = _torch_device()
  except ImportError:
    pass
  return info


def main(argv):
  del argv
  out = pathlib.Path(FLAGS.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  result = {**_machine(), "repeats": FLAGS.repeats, "steps_per_repeat": FLAGS.steps, "rows": [],
            "errors": {}}
  print(json.dumps(_machine()), flush=True)
  ceiling = ceilings() if "ceiling" in FLAGS.sections else {}
  result["ceiling_tflops"] = {k: v / 1e12 for k, v in ceiling.items() if k != "f32_default_rel_err"}
  result["f32_default_rel_err"] = ceiling.get("f32_default_rel_err")
  for section in FLAGS.sections:
    if section == "ceiling":
      continue
    try:
      for step in SECTIONS[section]():
        row = measure(step, ceiling)
        result["rows"].append(row)
        print(json.dumps(row), flush=True)
        out.write_text(json.dumps(result, indent=2) + "\n")  # keep what is done if later ones fail
    except Exception:  # noqa: BLE001 (one failing section must not lose the others' numbers)
      result["errors"][section] = traceback.format_exc()
      print(result["errors"][section], flush=True)
  out.write_text(json.dumps(result, indent=2) + "\n")
  print(f"{'entry':<26}{'JAX ms':>10}{'torch ms':>10}{'JAX/torch':>10}{'TFLOP/s':>9}{'MFU':>7}")
  for r in result["rows"]:
    print(f"{r['entry']:<26}{r['jax_ms']:>10.2f}{r.get('torch_ms', float('nan')):>10.2f}"
          f"{r.get('speed_vs_torch', float('nan')):>9.2f}x{r['tflops']:>9.2f}"
          f"{r.get('mfu', float('nan')):>7.3f}")
  print(f"wrote {out}")


if __name__ == "__main__":
  app.run(main)
