"""Speed of the MAML meta-step: conv4, Omniglot 5-way 1-shot, 15 queries, meta-batch 32.

python benchmarks/maml_step.py [--arg=5w1s] [--task_maps=unroll,map,vmap] [--steps=10] [--torch]
    [--out=FILE.json]

For each way of running a meta-batch's tasks (one program copy per task, lax.map one task at a
time, or jax.vmap over tasks) it prints and writes JSON: first-step seconds (compile + run), tasks/s
of the meta trainer's jitted update on one cached device meta-batch, and the host's seconds to draw
a meta-batch of tasks. With --torch (second-order MAML only; needs requirements-bench.txt) it times
the PyTorch reference on the same meta-batch in the same run (benchmarks/torch_reference.py,
MamlConv4Step) and reports each task map's speed ratio to it.

The task maps and the matmul ceiling alternate within each of --repeats repeats (in order, then
reversed) and medians are reported; the fraction of the ceiling is also given as the median of
the per-repeat fractions (`fraction_of_ceiling_paired`), since the VM's speed drifts between
repeats. PyTorch runs its repeats first, before XLA's threads start (see main).
"""
import json
import os
import pathlib
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import app, flags  # noqa: E402

import flops as flops_lib  # noqa: E402  (benchmarks/flops.py)
import timing  # noqa: E402  (benchmarks/timing.py)
from mmjax import config as config_lib  # noqa: E402
from mmjax.data import episodes  # noqa: E402
from mmjax.methods import maml  # noqa: E402
from mmjax.train import meta_trainer, optim, steps  # noqa: E402

flags.DEFINE_string("arg", "5w1s", "configs/omniglot_maml.py arg")
flags.DEFINE_list("task_maps", ["unroll", "map", "vmap"], "ways to run the tasks of a meta-batch")
flags.DEFINE_bool("torch", False, "also time the PyTorch reference and report speed ratios")
flags.DEFINE_integer("steps", 10, "timed steps per repeat")
flags.DEFINE_integer("repeats", 5, "alternating repeats; medians are reported")
flags.DEFINE_string("out", "benchmarks/results/maml_step.json", "JSON output")
FLAGS = flags.FLAGS
REPO = pathlib.Path(__file__).resolve().parents[1]


def measure(cfg, source, part):
  """(first step seconds incl. compile, runner(n) timing n steps in seconds, cost_analysis FLOPs
  of a step) for cfg."""
  model = maml.build_model(cfg)
  local = episodes.batch(source, 0, 0, range(cfg.meta.meta_batch))
  example = jnp.zeros((1,) + local["support"]["image"].shape[2:])
  params = maml.init_meta_params(cfg, model.init(jax.random.PRNGKey(0), example)["params"])
  tx = optim.make_optimizer(cfg.optim, cfg.train.steps, params=params)
  state = jax.jit(lambda p: steps.new_state(p, tx),
                  out_shardings=part.replicated)(params)
  update = part.compile_update(meta_trainer.make_meta_update(maml.make_meta_grad(cfg, model), tx))
  tasks, rng = part.global_batch(local), jax.random.PRNGKey(1)
  flops = flops_lib.cpu_flops(update, state, tasks, rng)  # with XLA's convs: one more compile
  start = time.perf_counter()
  update = update.lower(state, tasks, rng).compile()
  box = {"state": update(state, tasks, rng)[0]}
  jax.block_until_ready(box["state"])
  first = time.perf_counter() - start

  def run(n):
    for _ in range(n):
      box["state"], metrics = update(box["state"], tasks, rng)
      jax.block_until_ready(metrics)  # one step in flight: the same for every task map

  run(1)
  return first, run, flops


def measure_torch(cfg, source):
  """tasks/s of the PyTorch reference on the same meta-batch (2 threads, as XLA:CPU here)."""
  import torch  # pylint: disable=import-outside-toplevel
  import torch_reference  # pylint: disable=import-outside-toplevel
  if cfg.meta.algorithm != "maml":
    raise SystemExit("--torch compares second-order MAML only")
  torch.set_num_threads(os.cpu_count())
  step = torch_reference.MamlConv4Step(
      episodes.batch(source, 0, 0, range(cfg.meta.meta_batch)), ways=cfg.meta.ways,
      inner_steps=cfg.meta.inner_steps, inner_lr=cfg.meta.inner_lr, lr=cfg.optim.lr,
      width=cfg.model.width)
  step()  # warm-up
  start = time.perf_counter()
  step()
  first = time.perf_counter() - start
  per_repeat = []
  for _ in range(FLAGS.repeats):
    start = time.perf_counter()
    for _ in range(FLAGS.steps):
      step()
    per_repeat.append(cfg.meta.meta_batch * FLAGS.steps / (time.perf_counter() - start))
  return {"task_map": "torch", "first_step_s": first,
          "tasks_per_s": float(np.median(per_repeat)), "tasks_per_s_repeats": per_repeat,
          "torch": torch.__version__}


def main(argv):
  del argv
  base = config_lib.load(str(REPO / f"configs/omniglot_maml.py:{FLAGS.arg}"))
  part = steps.Partitioner("jit")
  source = episodes.make_task_source(base, "train")
  start = time.perf_counter()
  for step in range(5):
    episodes.batch(source, 0, step, range(base.meta.meta_batch))
  sample_s = (time.perf_counter() - start) / 5
  rows = []
  # PyTorch first: once XLA:CPU's thread pool has run, torch's OpenMP threads on these 2 cores ran
  # a meta-step 60x slower in the same process.
  torch_row = measure_torch(base, source) if FLAGS.torch else None
  runners = {}
  for task_map in FLAGS.task_maps:
    cfg = config_lib.load_with_overrides(str(REPO / f"configs/omniglot_maml.py:{FLAGS.arg}"),
                                         {"meta.task_map": task_map})
    first, run, flops = measure(cfg, source, part)
    runners[task_map] = run
    rows.append({"task_map": task_map, "first_step_s": first, "gflop_counted": flops / 1e9})
  matmul, matmul_flops = timing.matmul_runner()
  seconds = timing.interleaved({**runners, "matmul": matmul}, FLAGS.steps, FLAGS.repeats)
  ceilings = matmul_flops / np.asarray(seconds["matmul"])
  ceiling = float(np.median(ceilings))
  # cost_analysis() counts a while loop's body once (lax.map's 32 tasks count as 1), so every row
  # uses the largest count, that of a loop-free program (unroll or vmap): the same math.
  step_flops = max(row["gflop_counted"] for row in rows) * 1e9
  for row in rows:
    per_step = np.asarray(seconds[row["task_map"]])
    row["tasks_per_s_repeats"] = (base.meta.meta_batch / per_step).tolist()
    row["tasks_per_s"] = float(np.median(base.meta.meta_batch / per_step))
    row["gflops"] = step_flops * row["tasks_per_s"] / base.meta.meta_batch / 1e9
    row["fraction_of_ceiling"] = row["gflops"] * 1e9 / ceiling
    row["fraction_of_ceiling_paired"] = float(np.median(step_flops / per_step / ceilings))
  if torch_row:
    for row in rows:
      row["speed_vs_torch"] = row["tasks_per_s"] / torch_row["tasks_per_s"]
    rows.append(torch_row)
  result = {
      "benchmark": "maml_meta_step", "arg": FLAGS.arg, "algorithm": base.meta.algorithm,
      "ways": base.meta.ways, "shots": base.meta.shots, "queries": base.meta.queries,
      "meta_batch": base.meta.meta_batch, "inner_steps": base.meta.inner_steps,
      "steps": FLAGS.steps, "repeats": FLAGS.repeats, "rows": rows,
      "host_sample_s_per_meta_batch": sample_s, "matmul_ceiling_gflops": ceiling / 1e9,
      "matmul_ceiling_gflops_repeats": (ceilings / 1e9).tolist(),
      "devices": jax.device_count(), "platform": jax.devices()[0].platform,
      "device_kind": jax.devices()[0].device_kind, "host": platform.node(),
      "cpu_count": os.cpu_count(), "jax": jax.__version__, "date": time.strftime("%Y-%m-%d"),
  }
  print(f"{'task map':<10}{'first step (s)':>16}{'tasks/s':>12}{'vs torch':>10}{'GFLOP/s':>9}"
        f"{'of ceil.':>10}{'paired':>8}")
  for row in rows:
    ratio = f"{row['speed_vs_torch']:.2f}x" if "speed_vs_torch" in row else ""
    gflops = f"{row['gflops']:.1f}" if "gflops" in row else ""
    frac = f"{row['fraction_of_ceiling']:.2f}" if "fraction_of_ceiling" in row else ""
    paired = (f"{row['fraction_of_ceiling_paired']:.2f}" if "fraction_of_ceiling_paired" in row
              else "")
    print(f"{row['task_map']:<10}{row['first_step_s']:>16.2f}{row['tasks_per_s']:>12.1f}"
          f"{ratio:>10}{gflops:>9}{frac:>10}{paired:>8}")
  print(f"matmul ceiling: {ceiling / 1e9:.1f} GFLOP/s (jitted 2048^2 f32, median of the repeats; "
        f"{min(ceilings) / 1e9:.0f}-{max(ceilings) / 1e9:.0f})")
  print(f"host task sampling: {sample_s:.3f} s per meta-batch of {base.meta.meta_batch}")
  print(f"devices: {result['devices']} x {result['device_kind']} ({result['platform']})")
  out = pathlib.Path(FLAGS.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=2) + "\n")
  print(f"wrote {out}")


if __name__ == "__main__":
  app.run(main)
