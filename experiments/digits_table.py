"""Digits table: LeNet source only, DANN, CDAN, CDAN+E, DAN (MK-MMD) and train on target,
MNIST→USPS and USPS→MNIST.

python experiments/digits_table.py --workdir=runs/digits_table [--seeds=5] [--adapt_seeds=N]
                                   [--quick] [--parallel=N] [--recipe=tll]

--adapt_seeds caps the seeds of the adaptation rows (default: --seeds); each cell's n says how many
seeds it has. --recipe=tll runs every cell with Transfer-Learning-Library's digits recipe (the
configs' /tll args: its LeNet with a batch-norm bottleneck, batch norm in the domain classifier,
10,000 steps) into the table "digits_tll"; use its own --workdir.

Runs every cell not yet finished (a killed run resumes: finished cells are skipped, the interrupted
one continues from its checkpoint), then writes the table (Markdown, LaTeX, CSV) and its plots to
--out (default docs/results, or <workdir>/tables with --quick).
"""
import dataclasses
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import app, flags  # noqa: E402

from mmjax import table_script, tables  # noqa: E402

LABELS = {  # configs/digits.py arg -> (row, column)
    "mnist_usps": ("source only", "MNIST→USPS"),
    "usps_mnist": ("source only", "USPS→MNIST"),
    "mnist_usps_oracle": ("train on target", "MNIST→USPS"),
    "usps_mnist_oracle": ("train on target", "USPS→MNIST"),
}
ADAPT = {  # configs/digits_adapt.py method -> row
    "dann": "DANN", "cdan": "CDAN", "cdan_e": "CDAN+E", "dan": "DAN (MK-MMD)"}
COLUMNS = {"mnist_usps": "MNIST→USPS", "usps_mnist": "USPS→MNIST"}
flags.DEFINE_integer("adapt_seeds", None, "seeds of the adaptation rows (default: --seeds)")
flags.DEFINE_enum("recipe", "paper", ["paper", "tll"], "paper: the table's own recipe; tll: "
                  "Transfer-Learning-Library's (the configs' /tll args), table digits_tll")
QUICK = (("train.steps", "100"), ("train.log_every", "20"), ("eval_every", "0"),
         ("checkpoint.every", "100"), ("data.global_batch", "64"))

SPEC = tables.TableSpec(
    name="digits",
    title="Digits, LeNet: target test accuracy",
    metric="target_test/accuracy",
    rows=["source only", *ADAPT.values(), "train on target"],
    columns=["MNIST→USPS", "USPS→MNIST"],
    protocol="fixed_ours",
    published={("source only", "MNIST→USPS"): 0.821, ("source only", "USPS→MNIST"): 0.746,
               ("DANN", "MNIST→USPS"): 0.917, ("DANN", "USPS→MNIST"): 0.952,
               ("CDAN", "MNIST→USPS"): 0.960, ("CDAN", "USPS→MNIST"): 0.977},
    published_source="Transfer-Learning-Library (LeNet: source only, DANN, CDAN); ADDA (Tzeng et "
                     "al. 2017) reports source only 75.2 ± 1.6 and 57.1 ± 1.7",
    extra_metrics={"source test acc.": "source_test/accuracy"},
    notes="SGD momentum 0.9, lr 0.01, weight decay 5e-4, batch 128, 3000 steps; USPS resized "
          "to 28×28; full train splits (7291 USPS, 60000 MNIST). Adaptation rows "
          "(configs/digits_adapt.py): + 128 unlabelled target images a step, DANN's annealed lr "
          "and λ schedule (γ 10), a 2×1024 domain classifier.",
)


TLL_SPEC = dataclasses.replace(
    SPEC, name="digits_tll",
    title="Digits, LeNet, Transfer-Learning-Library's recipe: target test accuracy",
    notes="Transfer-Learning-Library's digits recipe (configs/digits.py tll_recipe): its LeNet "
          "(conv 20 and 50, fc 500, 256-wide bottleneck with batch norm, dropout 0.5), inputs in "
          "[-1, 1], SGD Nesterov momentum 0.9, weight decay 1e-3, lr 0.01 (1 + 0.001 i)^-0.75, "
          "batch 128, 10,000 steps (TLL: 50,000, and it reports the best epoch on the target test "
          "set), PyTorch's default initialisers for every layer (mmjax.models.inits). Adaptation "
          "rows: + 128 unlabelled target images a step, a 2×1024 domain classifier with batch "
          "norm, λ = 2 / (1 + exp(-i / 1000)) - 1 at step i (TLL's warm-start reversal).")


def main(argv):
  del argv
  tll = flags.FLAGS.recipe == "tll"
  suffix = "/tll" if tll else ""
  settings = [{**s, "config": s["config"] + suffix}
              for s in table_script.settings_from_sweep("configs/digits.py", LABELS)]
  adapt_seeds = flags.FLAGS.adapt_seeds
  for method, row in ADAPT.items():
    for pair, column in COLUMNS.items():
      setting = {"row": row, "column": column,
                 "config": f"configs/digits_adapt.py:{method}/{pair}{suffix}"}
      if adapt_seeds is not None:
        setting["max_seeds"] = adapt_seeds
      settings.append(setting)
  return table_script.main(TLL_SPEC if tll else SPEC, settings, QUICK,
                           "100 steps, batch 64, 1 seed")


if __name__ == "__main__":
  app.run(main)
