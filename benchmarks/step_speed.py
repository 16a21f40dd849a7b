"""Speed of the digits train step (LeNet, supervised, SGD momentum) on whatever devices are present.

python benchmarks/step_speed.py [--batch=128] [--steps=200] [--parallel=jit] [--out=FILE.json]

Prints a table and writes JSON: first-step seconds (compile + run), steps/s and examples/s on one
cached batch, and the same with the real input pipeline feeding every step.
"""
import json
import os
import pathlib
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
from absl import app, flags  # noqa: E402

from mmjax import config as config_lib  # noqa: E402
from mmjax import data as data_lib  # noqa: E402
from mmjax import methods, models  # noqa: E402
from mmjax.train import optim, steps  # noqa: E402

flags.DEFINE_integer("batch", 128, "global batch")
flags.DEFINE_integer("steps", 200, "timed steps per measurement")
flags.DEFINE_string("parallel", "jit", "jit or pmap")
flags.DEFINE_string("dataset", "mnist", "training set fed by the real pipeline")
flags.DEFINE_string("out", "benchmarks/results/step_speed.json", "JSON output")
FLAGS = flags.FLAGS
REPO = pathlib.Path(__file__).resolve().parents[1]


def _timed(update, state, batches, rng, n):
  """Runs n steps; returns (state, seconds), with the clock stopped only once the device is done."""
  window = steps.DispatchWindow()
  start = time.perf_counter()
  for _ in range(n):
    state, metrics = update(state, next(batches), rng)
    window.push(metrics)
  jax.block_until_ready((state, metrics))
  return state, time.perf_counter() - start


def main(argv):
  del argv
  cfg = config_lib.load(str(REPO / "configs/digits.py:mnist_usps"))
  model = models.build_model(cfg.model, cfg.dtype)
  method = methods.get_method(cfg.method)
  tx = optim.make_optimizer(cfg.optim, FLAGS.steps)
  part = steps.Partitioner(FLAGS.parallel)
  part.check_batch(FLAGS.batch, "--batch")
  axis = "batch" if FLAGS.parallel == "pmap" else None
  update = part.compile_update(steps.make_update(method.make_loss(cfg), model, tx, FLAGS.steps,
                                                 axis))

  arrays = data_lib.load_split(FLAGS.dataset, "train")
  params = model.init(jax.random.PRNGKey(0), arrays["image"][:1].astype("float32"))["params"]
  state = jax.jit(lambda p: steps.new_state(p, tx),
                  out_shardings=part.replicated)(params)
  if FLAGS.parallel == "pmap":
    state = part.to_pmap_state(state)
  to_device = part.pmap_batch if FLAGS.parallel == "pmap" else part.global_batch
  pipeline = data_lib.TrainIterator(arrays, global_batch=FLAGS.batch, seed=0,
                                    process_index=jax.process_index(),
                                    process_count=jax.process_count())
  rng = jax.random.PRNGKey(1)
  cached = to_device({"train": next(pipeline)})

  def repeat():
    while True:
      yield cached

  def fed():
    for local in pipeline:
      yield to_device({"train": local})

  state, first = _timed(update, state, repeat(), rng, 1)
  state, _ = _timed(update, state, repeat(), rng, 10)  # warm caches
  state, t_cached = _timed(update, state, repeat(), rng, FLAGS.steps)
  state, t_fed = _timed(update, state, fed(), rng, FLAGS.steps)
  result = {
      "benchmark": "digits_lenet_supervised_step",
      "batch": FLAGS.batch, "steps": FLAGS.steps, "parallel": FLAGS.parallel,
      "first_step_s": first,
      "steps_per_s": FLAGS.steps / t_cached,
      "examples_per_s": FLAGS.steps * FLAGS.batch / t_cached,
      "pipeline_steps_per_s": FLAGS.steps / t_fed,
      "pipeline_fraction": t_cached / t_fed,
      "devices": jax.device_count(), "platform": jax.devices()[0].platform,
      "device_kind": jax.devices()[0].device_kind, "host": platform.node(),
      "cpu_count": os.cpu_count(), "jax": jax.__version__,
      "date": time.strftime("%Y-%m-%d"),
  }
  print(f"{'quantity':<28}{'value':>14}")
  for key in ("first_step_s", "steps_per_s", "examples_per_s", "pipeline_steps_per_s",
              "pipeline_fraction"):
    print(f"{key:<28}{result[key]:>14.3f}")
  print(f"devices: {result['devices']} x {result['device_kind']} ({result['platform']})")
  out = pathlib.Path(FLAGS.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=2) + "\n")
  print(f"wrote {out}")


if __name__ == "__main__":
  app.run(main)
