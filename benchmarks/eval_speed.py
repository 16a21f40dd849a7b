"""Evaluation speed: one run's evaluation, and a sweep's evaluation of runs that share eval sets.

python benchmarks/eval_speed.py [--configs=amazon,digits] [--runs=5] [--repeats=5]
    [--out=benchmarks/results/eval_speed.json]

Per config it times, in alternating repeats (benchmarks/timing.py):
  fresh_step    trainer.evaluate as the trainer called it until 2026-11-29: a new jitted eval step
                each evaluation (so a trace and a compile each time) and the eval sets cut into
                batches and sent again;
  kept_step     one compiled eval step, batches cut and sent each time;
  kept_batches  one compiled eval step and the batches kept on the devices (the trainer now);
and for a sweep of --runs runs (seeds) that read the same eval sets:
  sweep_per_run each run's own pass (sweep._Standard.evaluate, which methods that collect
                per-example outputs use; kept step and, since the third run below, kept batches);
  sweep_together one pass whose batches are mapped over the runs (sweep._Standard.evaluate_runs).
It checks that the sweep's two ways give the same numbers (to 1e-5) and writes JSON.
"""
import argparse
import json
import pathlib
import platform
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import timing  # noqa: E402  (benchmarks/timing.py)
from mmjax import config as config_lib  # noqa: E402
from mmjax.train import sweep, trainer  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = {
    # The Amazon network on its three eval sets (source_test, source_val, target_test: 8,451 rows
    # of 5000 counts), as amazon_table.py --source_val evaluates it every 100 steps.
    "amazon": "configs/amazon.py:dann/dvd_books/val",
    # LeNet on MNIST test and USPS test (12,007 images), TLL's digits recipe.
    "digits": "configs/digits_adapt.py:dann/mnist_usps/tll",
}


def measure(name, spec, runs, repeats):
  config = config_lib.load(str(REPO / spec))
  swept = [sweep.Run(config_lib.load_with_overrides(str(REPO / spec), {"seed": str(s)}),
                     pathlib.Path("/nonexistent") / str(s)) for s in range(runs)]
  kind = sweep._Standard(swept, {})  # pylint: disable=protected-access
  tree = kind.init(np.arange(runs, dtype=np.int32))
  method, cfg = kind.method, swept[0].config
  model = method.build_model(cfg)
  partitioner, batch = kind.partitioner, kind.eval_batch
  first = sweep._row(tree, 0)["state"]  # pylint: disable=protected-access
  params, model_state = jax.device_put((first.params, first.model_state), partitioner.replicated)
  eval_sets = kind.eval_sets[0]
  step = trainer.make_eval_step(method, cfg, model, partitioner)
  kept = trainer.EvalBatches(partitioner, batch)

  def one_run(eval_step=None, batches=None):
    def run(n):
      for _ in range(n):
        trainer.evaluate(method, cfg, model, params, eval_sets, partitioner, batch,
                         eval_step=eval_step, model_state=model_state,
                         batches=batches() if batches else None)
    return run

  order = list(range(runs))

  def per_run(n):
    for _ in range(n):
      for i in order:
        kind.evaluate(i, sweep._row(tree, i))  # pylint: disable=protected-access

  def together(n):
    for _ in range(n):
      kind.evaluate_runs(order, tree, order)

  times = timing.interleaved({
      "fresh_step": one_run(),
      "kept_step": one_run(step, lambda: trainer.EvalBatches(partitioner, batch)),
      "kept_batches": one_run(step, lambda: kept),
      "sweep_per_run": per_run,
      "sweep_together": together,
  }, steps_per_repeat=1, repeats=repeats)
  alone = [kind.evaluate(i, sweep._row(tree, i)) for i in order]  # pylint: disable=protected-access
  for x, y in zip(alone, kind.evaluate_runs(order, tree, order)):
    for set_name in x:
      np.testing.assert_allclose([y[set_name]["accuracy"], y[set_name]["loss"]],
                                 [x[set_name]["accuracy"], x[set_name]["loss"]], rtol=1e-5)
  rows = sum(len(v["label"]) for v in eval_sets.values())
  med = {k: float(np.median(v)) for k, v in times.items()}
  return {"config": spec, "eval_rows": rows, "runs": runs, "eval_batch": batch,
          "seconds": times, "median_s": med,
          "per_run_eval_ms": {"fresh_step": 1e3 * med["fresh_step"],
                              "kept_step": 1e3 * med["kept_step"],
                              "kept_batches": 1e3 * med["kept_batches"],
                              "sweep_per_run": 1e3 * med["sweep_per_run"] / runs,
                              "sweep_together": 1e3 * med["sweep_together"] / runs}}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", default="amazon,digits")
  parser.add_argument("--runs", type=int, default=5)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--out", default=str(REPO / "benchmarks/results/eval_speed.json"))
  args = parser.parse_args()
  results = {"machine": platform.processor() or platform.machine(), "devices": jax.device_count(),
             "platform": jax.devices()[0].platform, "jax": jax.__version__,
             "date": time.strftime("%Y-%m-%d"), "results": {}}
  print(f"{'config':8} {'rows':>6} | ms per run's evaluation: {'fresh step':>10} {'kept step':>10} "
        f"{'kept batches':>12} | sweep of {args.runs}: {'per run':>8} {'together':>9}")
  for name in args.configs.split(","):
    r = measure(name, CONFIGS[name], args.runs, args.repeats)
    results["results"][name] = r
    ms = r["per_run_eval_ms"]
    print(f"{name:8} {r['eval_rows']:>6} | {'':24} {ms['fresh_step']:>10.1f} {ms['kept_step']:>10.1f} "
          f"{ms['kept_batches']:>12.1f} | {'':12} {ms['sweep_per_run']:>8.1f} "
          f"{ms['sweep_together']:>9.1f}")
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(results, indent=1))
  print("wrote", out)


if __name__ == "__main__":
  main()
