"""Digits table: LeNet source only and train on target, MNIST→USPS and USPS→MNIST.

python experiments/digits_table.py --workdir=runs/digits_table [--seeds=5] [--quick] [--parallel=N]

Runs every cell not yet finished (a killed run resumes: finished cells are skipped, the interrupted
one continues from its checkpoint), then writes the table (Markdown, LaTeX, CSV) and its plots to
--out (default docs/results, or <workdir>/tables with --quick).
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import app  # noqa: E402

from mmjax import table_script, tables  # noqa: E402

LABELS = {  # configs/digits.py arg -> (row, column)
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
    protocol="fixed_ours",
    published={("source only", "MNIST→USPS"): 0.821, ("source only", "USPS→MNIST"): 0.746},
    published_source="Transfer-Learning-Library (source only, LeNet); ADDA (Tzeng et al. 2017) "
                     "reports 75.2 ± 1.6 and 57.1 ± 1.7",
    extra_metrics={"source test acc.": "source_test/accuracy"},
    notes="SGD momentum 0.9, lr 0.01, weight decay 5e-4, batch 128, 3000 steps; USPS resized "
          "to 28×28; full train splits (7291 USPS, 60000 MNIST).",
)


def main(argv):
  del argv
  settings = table_script.settings_from_sweep("configs/digits.py", LABELS)
  return table_script.main(SPEC, settings, QUICK, "100 steps, batch 64, 1 seed")


if __name__ == "__main__":
  app.run(main)
