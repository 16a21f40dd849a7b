"""Benchmark tools: FLOP counts for MFU, the PyTorch Transformer reference, the XLA:CPU runtime flag."""
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

from mmjax import models, runtime
from mmjax.train import steps

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import flops  # noqa: E402  (benchmarks/flops.py)


def _fusion(width=32, depth=2, mlp_dim=64, heads=4):
  return models.FusionTransformer(modalities=("image", "question"), tokenizers=("patch", "tokens"),
                                  fusion="early", num_classes=10, width=width, depth=depth,
                                  num_heads=heads, mlp_dim=mlp_dim, patch_size=8, vocab_size=32)


def _batch(n=4, pad_question=0):
  rng = np.random.default_rng(0)
  batch = {"image": rng.random((n, 64, 64, 3), np.float32),
           "question": rng.integers(1, 32, (n, 16)).astype(np.int32),
           "label": rng.integers(0, 10, n).astype(np.int32)}
  if pad_question:
    batch["question"][:, -pad_question:] = 0
  return batch


def _train_step(model, batch):
  inputs = {"image": batch["image"], "question": batch["question"]}
  params = model.init(jax.random.PRNGKey(0), inputs)["params"]
  tx = optax.adam(1e-3)
  state = steps.new_state(params, tx)

  def loss(model, params, batch, rng, progress):
    del rng, progress
    logits = model.apply({"params": params}, inputs)["logits"]
    value = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    return value, {"loss": value}
  return steps.make_update(loss, model, tx, 10), state, params


def test_model_flops_match_xla_count_of_the_train_step():
  """The analytic matmul FLOPs of an early-fusion train step against XLA:CPU's count of the
  compiled step, which also counts norms, softmax, GELU and Adam: a little below it."""
  batch = _batch(8)
  for width, depth, mlp_dim in ((32, 2, 64), (64, 1, 256)):
    update, state, _ = _train_step(_fusion(width, depth, mlp_dim), batch)
    counted = flops.cpu_flops(update, state, batch, jax.random.PRNGKey(1))
    compiled = jax.jit(update).lower(state, batch, jax.random.PRNGKey(1)).compile()
    cost = compiled.cost_analysis()
    assert counted == float((cost[0] if isinstance(cost, list) else cost)["flops"])
    model = flops.early_fusion_train_flops(8, 64, 8 * 8 * 3, 16, width, depth, mlp_dim)
    assert 0.85 * counted <= model <= counted, (model, counted)


def test_torch_transformer_reference_computes_the_same_loss():
  pytest.importorskip("torch")
  import torch_reference  # noqa: PLC0415
  batch = _batch(4, pad_question=3)  # padded question tokens: masked keys on both sides
  model = _fusion()
  _, _, params = _train_step(model, batch)
  logits = model.apply({"params": params}, {"image": batch["image"],
                                            "question": batch["question"]})["logits"]
  want = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
  step = torch_reference.FusionTransformerStep(batch, 1e-3, params=jax.device_get(params),
                                               width=32, depth=2, num_heads=4, mlp_dim=64)
  np.testing.assert_allclose(step.loss(), want, rtol=1e-5)
  before = step.loss()
  for _ in range(3):
    step()
  assert step.loss() < before  # the reference trains: Adam on the same loss


def test_runtime_configure_sets_the_flags_once_and_respects_the_user(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
  monkeypatch.delenv("MMJAX_XLA_CPU_DEFAULTS", raising=False)
  monkeypatch.setattr(runtime.importlib.metadata, "version", lambda name: "0.10.2")
  assert runtime.configure() == [runtime.NO_YNN_CONVOLUTIONS]
  assert os.environ["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=2",
                                             runtime.NO_YNN_CONVOLUTIONS]
  assert runtime.configure() == []  # idempotent
  assert os.environ["XLA_FLAGS"].count(runtime.YNN_FLAG) == 1
  monkeypatch.setenv("XLA_FLAGS", f"{runtime.YNN_FLAG}= --xla_cpu_use_onednn=false")
  assert runtime.configure() == []  # the user's own choices stay
  assert os.environ["XLA_FLAGS"].split() == [f"{runtime.YNN_FLAG}=", "--xla_cpu_use_onednn=false"]
  # The YNNPACK flag on jaxlib 0.10 and 0.11; oneDNN dots never.
  for version in ("0.10.0", "0.10.2", "0.11.2"):
    assert runtime.defaults(version) == [runtime.NO_YNN_CONVOLUTIONS]
  assert runtime.defaults("0.9.2") == []
  monkeypatch.setenv("XLA_FLAGS", "")
  monkeypatch.setenv("MMJAX_XLA_CPU_DEFAULTS", "0")
  assert runtime.configure() == []
  assert os.environ["XLA_FLAGS"] == ""


# Compiles and frees many small programs while their results are still being computed: with
# oneDNN dots (--xla_cpu_use_onednn=true, fusion type individual_dot) XLA:CPU aborted this within
# 300 rounds in 4 of 4 tries (object_pool.h "Check failed: available_.size() == num_created_"), as
# it did ending training runs.
_FREE_PROGRAMS_IN_FLIGHT = """
import sys
import mmjax, jax, jax.numpy as jnp, numpy as np
a, b = (jnp.asarray(np.random.default_rng(i).normal(size=s).astype(np.float32))
        for i, s in ((0, (256, 512)), (1, (512, 256))))
for i in range(int(sys.argv[1])):
  f = jax.jit(lambda x, w, k=i: jnp.tanh(x @ w) @ w.T + k)
  outs = [f(a, b) for _ in range(8)]
  del f
  jax.clear_caches()
print("survived", float(outs[-1][0, 0]))
"""


def test_importing_mmjax_keeps_convolutions_out_of_ynnpack_and_survives_freed_programs():
  """In a fresh process, after `import mmjax` convolutions compile to XLA's own (Eigen) ones and
  dots stay in YNNPACK; with MMJAX_XLA_CPU_DEFAULTS=0 both are YNNPACK fusions (the flags are what
  changes). Freeing programs whose results are in flight does not abort the process."""
  code = ("import mmjax, jax, jax.numpy as jnp, numpy as np\n"
          "f = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), 'VALID', "
          "dimension_numbers=('NHWC', 'HWIO', 'NHWC'))\n"
          "hlo = jax.jit(f).lower(jnp.ones((8, 12, 12, 32)), jnp.ones((5, 5, 32, 48)))"
          ".compile().as_text()\n"
          "a, b = (np.random.default_rng(i).normal(size=s).astype(np.float32)\n"
          "        for i, s in ((0, (256, 512)), (1, (512, 128))))\n"
          "dot = jax.jit(jnp.dot)\n"
          "dot_hlo = dot.lower(a, b).compile().as_text()\n"
          "err = np.abs(np.asarray(dot(a, b)) - a.astype(np.float64) @ b).max()\n"
          "print('ynn' if '__ynn_fusion' in hlo else 'eigen',\n"
          "      'onednn' if '__onednn_fusion' in dot_hlo else 'ynn' if '__ynn_fusion' in dot_hlo\n"
          "      else 'other', err < 1e-3)\n")
  outputs = {}
  for defaults in ("1", "0"):
    env = {**os.environ, "XLA_FLAGS": "", "MMJAX_XLA_CPU_DEFAULTS": defaults,
           "PYTHONPATH": str(REPO)}
    outputs[defaults] = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                                       capture_output=True, text=True).stdout.split()[-3:]
  assert outputs == {"1": ["eigen", "ynn", "True"], "0": ["ynn", "ynn", "True"]}
  env = {**os.environ, "XLA_FLAGS": "", "PYTHONPATH": str(REPO)}
  freed = subprocess.run([sys.executable, "-c", _FREE_PROGRAMS_IN_FLIGHT, "150"], env=env,
                         capture_output=True, text=True, timeout=300)
  assert freed.returncode == 0 and "survived" in freed.stdout, freed.stderr[-2000:]




_PAIRED_TIMING = """
import json, sys
sys.path.insert(0, "benchmarks")
import core_steps
core_steps.FLAGS(["core_steps", "--repeats=6", "--steps=10"])
# A fake clock: a runner call advances it by the runner's cost times the VM's speed in that
# repeat, which drifts by up to 2x between repeats; the fed step costs 5% more than the cached one.
clock, timed = [0.0], []
core_steps.time.perf_counter = lambda: clock[0]
drift = [1.0, 2.0, 1.3, 1.8, 1.1, 2.0]
def runner(name, cost):
  def run(n):
    if n == 2:  # interleaved()'s warm-up call, not timed
      return
    timed.append(name)
    clock[0] += n * cost * drift[(len(timed) - 1) // 4]
  return run
core_steps._matmul_runner = lambda: (runner("matmul", 0.5), 1e9)
core_steps.ENTRIES["fake"] = lambda: core_steps.Runners(
    description="fake", jax=runner("jax", 1.0), flops=1e9, torch=runner("torch", 1.2),
    pipeline=runner("pipeline", 1.05))
print(json.dumps({"timed": timed, "row": core_steps.measure("fake")}))
"""


def test_pipeline_fraction_pairs_the_cached_and_fed_steps_of_each_repeat():
  """benchmarks/core_steps.py: the fed step runs right after the cached one (right before it in the
  reversed repeats), and the fraction is the median and quartiles of the per-repeat ratios."""
  out = subprocess.run([sys.executable, "-c", _PAIRED_TIMING], cwd=REPO, capture_output=True,
                       text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
  assert out.returncode == 0, out.stderr[-2000:]
  got = json.loads(out.stdout.strip().splitlines()[-1])
  forward = got["timed"][:4]
  assert forward[:2] == ["jax", "pipeline"] and sorted(forward) == sorted(
      ["jax", "pipeline", "matmul", "torch"])
  assert got["timed"] == (forward + forward[::-1]) * 3
  row, drift = got["row"], np.array([1.0, 2.0, 1.3, 1.8, 1.1, 2.0])
  np.testing.assert_allclose(row["pipeline_fraction"], 1 / 1.05)
  np.testing.assert_allclose(row["pipeline_fraction_quartiles"], [1 / 1.05] * 2)
  np.testing.assert_allclose(row["speed_vs_torch_paired"], [1.2] * 3)
  np.testing.assert_allclose(row["jax_ms"], 1e3 * np.median(drift))
  np.testing.assert_allclose(row["matmul_ceiling_gflops"], 1 / (0.5 * np.median(drift)))
