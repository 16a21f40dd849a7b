"""Runs one experiment: python launch.py --config=configs/digits.py:mnist_usps --workdir=runs/digits

Overrides: --config.train.steps=200 --config.optim.lr=0.01 (unknown keys stop the run at once).
Several processes: --coordinator_address=HOST:PORT --num_processes=N --process_id=I, or nothing on a
cloud TPU pod or under SLURM, where jax.distributed finds them itself.
"""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # tf.data's C++ INFO lines drown the run's own log

from absl import app, flags, logging

flags.DEFINE_string("config", None, "config file and arg, e.g. configs/digits.py:mnist_usps")
flags.DEFINE_string("workdir", None, "where checkpoints, metrics and results go")
flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0 for multi-process runs")
flags.DEFINE_integer("num_processes", None, "number of processes of a multi-process run")
flags.DEFINE_integer("process_id", None, "this process's index in a multi-process run")
flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize() with auto-detection")
flags.mark_flags_as_required(["config", "workdir"])
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
  train.get_trainer(config.trainer)(config, FLAGS.workdir)


if __name__ == "__main__":
  overrides, argv = split_overrides(sys.argv)
  app.run(lambda a: main(a, overrides), argv=argv)
