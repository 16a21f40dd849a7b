"""Runs one experiment: python launch.py --config=configs/digits.py:mnist_usps --workdir=runs/digits

With no flags it runs the quickstart: a small fusion Transformer on generated Sort-of-CLEVR VQA.

Overrides: --config.train.steps=200 --config.optim.lr=0.01 (unknown keys stop the run at once).
Several processes: --coordinator_address=HOST:PORT --num_processes=N --process_id=I, or nothing on a
cloud TPU pod or under SLURM, where jax.distributed finds them itself.
Several runs as one vmapped sweep: --sweep=FILE.json, {"runs": [{"config": "configs/x.py:arg",
"overrides": {"seed": "1", ...}, "workdir": "..."}, ...]} (the experiment runner writes these).
"""
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # tf.data's C++ INFO lines drown the run's own log

from absl import app, flags, logging

QUICKSTART = (f"{os.path.dirname(os.path.abspath(__file__))}/configs/sort_of_clevr.py:quickstart",
              "runs/quickstart")
flags.DEFINE_string("config", None, "config file and arg, e.g. configs/digits.py:mnist_usps "
                    f"(default, with --workdir: the quickstart {QUICKSTART[0]})")
flags.DEFINE_string("workdir", None, f"where checkpoints, metrics and results go (required with "
                    f"--config; the quickstart's default is {QUICKSTART[1]})")
flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0 for multi-process runs")
flags.DEFINE_integer("num_processes", None, "number of processes of a multi-process run")
flags.DEFINE_integer("process_id", None, "this process's index in a multi-process run")
flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize() with auto-detection")
flags.DEFINE_string("sweep", None, "a JSON file of runs to train together as one sweep "
                    "(mmjax/train/sweep.py); replaces --config and --workdir")
FLAGS = flags.FLAGS


def split_overrides(argv):
  """Takes --config.a.b=value arguments out of argv; absl does not know them."""
  overrides, rest = {}, []
  for arg in argv:
    if arg.startswith("--config."):
      key, sep, value = arg[len("--config."):].partition("=")
      if not sep:
        sys.exit(f"override {arg!r} needs a value: --config.{key}=VALUE")
      overrides[key] = value
    else:
      rest.append(arg)
  return overrides, rest


def auto_multiprocess() -> bool:
  """True in a SLURM job of several tasks or on a multi-host cloud TPU slice."""
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    return True
  return "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")


def main(argv, overrides):
  del argv
  from mmjax import config as config_lib
  from mmjax import logs
  logs.setup()
  if FLAGS.sweep:
    return run_sweep(FLAGS.sweep, overrides)
  if FLAGS.config is None:
    FLAGS.config, FLAGS.workdir = QUICKSTART[0], FLAGS.workdir or QUICKSTART[1]
    logging.info("no --config: running the quickstart %s in %s", FLAGS.config, FLAGS.workdir)
  if FLAGS.workdir is None:
    sys.exit("--workdir is required with --config")
  try:
    config = config_lib.load_with_overrides(FLAGS.config, overrides)
  except config_lib.ConfigError as e:
    sys.exit(f"config error: {e}")

  import jax
  # CPU collectives across processes go through gloo; the setting is ignored on GPU and TPU.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if FLAGS.coordinator_address or FLAGS.num_processes:
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  elif FLAGS.distributed or auto_multiprocess():
    jax.distributed.initialize()
  logging.info("process %d of %d, %d local / %d global devices (%s)", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.default_backend())

  from mmjax import train
  results = train.get_trainer(config.trainer)(config, FLAGS.workdir)
  if jax.process_index() == 0:
    print(summary(results))


def run_sweep(path, overrides):
  """Trains the runs listed in `path` as one sweep; exit status 1 if a run did not finish."""
  from mmjax import config as config_lib
  if overrides:
    sys.exit("--config.* overrides do not apply to --sweep; put them in the sweep file")
  try:
    spec = json.loads(open(path).read())
    runs = [(config_lib.load_with_overrides(r["config"], r.get("overrides", {})), r["workdir"])
            for r in spec["runs"]]
  except (OSError, ValueError, KeyError, TypeError, config_lib.ConfigError) as e:
    sys.exit(f"bad sweep file {path}: {type(e).__name__}: {e}")
  import jax
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  from mmjax.train import sweep
  try:
    results = sweep.train_runs([sweep.Run(config, workdir) for config, workdir in runs])
  except sweep.SweepError as e:
    sys.exit(f"these runs cannot train as one sweep: {e}")
  for (_, workdir), result in zip(runs, results):
    print(f"{workdir}: " + (summary(result) if result else "FAILED (see its sweep_errors.txt)"))
  return 0 if all(r and not r.get("preempted") for r in results) else 1


def summary(results) -> str:
  """One line per eval set with its numbers, e.g. 'validation: accuracy 0.812, n 4000'."""
  if results.get("preempted"):
    return f"preempted at step {results['step']}; run the same command to resume"
  lines = [f"finished {results['step']} steps in {results.get('wall_time_s', 0):.0f} s"]
  if results.get("stopped_early"):
    lines[0] += (f" (stopped early: select.patience={results['stopped_early']['patience']}, best "
                 f"step {results['stopped_early']['best_step']})")
  for name, values in results.get("eval", {}).items():
    shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                      for k, v in values.items())
    lines.append(f"  {name}: {shown}")
  return "\n".join(lines)


if __name__ == "__main__":
  overrides, argv = split_overrides(sys.argv)
  app.run(lambda a: main(a, overrides), argv=argv)
