"""Digits table: LeNet source only and train on target, MNIST→USPS and USPS→MNIST.

python experiments/digits_table.py --workdir=runs/digits_table [--seeds=5] [--quick] [--parallel=N]

Runs every cell not yet finished (a killed run resumes: finished cells are skipped, the interrupted
one continues from its checkpoint), then writes the table (Markdown, LaTeX, CSV) and its plots to
--out (default docs/results, or <workdir>/tables with --quick).
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import app, flags, logging  # noqa: E402

from mmjax import experiments, logs, plots, tables  # noqa: E402
from mmjax.config import load_module  # noqa: E402

flags.DEFINE_string("workdir", None, "root of the cells' workdirs")
flags.DEFINE_integer("seeds", 5, "seeds per cell")
flags.DEFINE_bool("quick", False, "tiny scale (100 steps, one seed) to check the pipeline")
flags.DEFINE_integer("parallel", 1, "cells run at once")
flags.DEFINE_string("out", None, "where the table and plots go")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS

CONFIG = "configs/digits.py"
LABELS = {  # config arg -> (row, column)
    "mnist_usps": ("source only", "MNIST→USPS"),
    "usps_mnist": ("source only", "USPS→MNIST"),
    "mnist_usps_oracle": ("train on target", "MNIST→USPS"),
    "usps_mnist_oracle": ("train on target", "USPS→MNIST"),
}
QUICK = (("train.steps", "100"), ("train.log_every", "20"), ("eval_every", "0"),
         ("checkpoint.every", "100"), ("data.global_batch", "64"))

SPEC = tables.TableSpec(
    name="digits",
    title="Digits, LeNet: target test accuracy",
    metric="target_test/accuracy",
    rows=["source only", "train on target"],
    columns=["MNIST→USPS", "USPS→MNIST"],
    protocol="fixed",
    published={("source only", "MNIST→USPS"): 0.821, ("source only", "USPS→MNIST"): 0.746},
    published_source="Transfer-Learning-Library (source only, LeNet); ADDA (Tzeng et al. 2017) "
                     "reports 75.2 ± 1.6 and 57.1 ± 1.7",
    extra_metrics={"source test acc.": "source_test/accuracy"},
    notes="SGD momentum 0.9, lr 0.01, weight decay 5e-4, batch 128, 3000 steps; USPS resized "
          "to 28×28; full train splits (7291 USPS, 60000 MNIST).",
)


def settings():
  return [{"row": LABELS[s["arg"]][0], "column": LABELS[s["arg"]][1],
           "config": f"{CONFIG}:{s['arg']}"} for s in _sweep()]


def _sweep():
  return load_module(experiments.REPO / CONFIG).sweep()


def main(argv):
  del argv
  logs.setup()
  seeds = range(1 if FLAGS.quick else FLAGS.seeds)
  cells = experiments.grid(settings(), seeds, QUICK if FLAGS.quick else ())
  root = pathlib.Path(FLAGS.workdir)
  status = experiments.Runner(root, FLAGS.parallel).run(cells)
  spec = SPEC
  if FLAGS.quick:
    spec = tables.TableSpec(**{**vars(SPEC), "notes": "QUICK CHECK: 100 steps, batch 64, 1 seed; "
                               "not a reproduction."})
  records = tables.collect(root, cells, spec)
  out = pathlib.Path(FLAGS.out or (root / "tables" if FLAGS.quick else experiments.REPO / "docs/results"))
  paths = tables.write_all(out, spec, records, len(seeds))
  paths["curves"] = plots.learning_curves(root, cells, spec, "train/loss", out / f"{spec.name}_curves")
  paths["accuracy_curves"] = plots.learning_curves(root, cells, spec, SPEC.metric,
                                                   out / f"{spec.name}_accuracy_curves")
  paths["bars"] = plots.bars(spec, records, out / f"{spec.name}_bars")
  print(paths["md"].read_text())
  failed = {k: v for k, v in status.items() if v.startswith(("failed", "stopped"))}
  for key, why in failed.items():
    logging.error("cell %s: %s", key, why)
  logging.info("wrote %s", ", ".join(str(p) for p in paths.values()))
  return 1 if failed else 0


if __name__ == "__main__":
  app.run(main)
