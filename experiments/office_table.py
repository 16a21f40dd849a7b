"""Office-Caltech10 SURF: source only, DANN and DAN (MMD) on the 12 pairs, an MLP on the histograms.

python experiments/office_table.py --workdir=runs/office_table [--seeds=5] [--quick] [--parallel=N]

Fixed hyperparameters (configs/office.py), set once before the runs. Model selection among a small
grid (source validation, reverse validation, target oracle) is experiments/office_selection.py.
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import app  # noqa: E402

from mmjax import table_script, tables  # noqa: E402

NAMES = {"amazon": "A", "webcam": "W", "dslr": "D", "caltech": "C"}
ROWS = {"source_only": "source only", "dann": "DANN", "dan": "DAN (MMD)"}
COLUMNS = [f"{NAMES[s]}→{NAMES[t]}" for s in NAMES for t in NAMES if s != t]


def labels():
  """config arg -> (row, column) for every method and pair of configs/office.py."""
  return {f"{method}/{s}_{t}": (row, f"{NAMES[s]}→{NAMES[t]}")
          for method, row in ROWS.items() for s in NAMES for t in NAMES if s != t}


QUICK_COLUMNS = ("A→W", "W→D", "D→C", "C→A")
QUICK = (("train.steps", "100"), ("train.log_every", "50"), ("checkpoint.every", "100"))
SPEC = tables.TableSpec(
    name="office",
    title="Office-Caltech10 SURF, MLP: target accuracy",
    metric="target_test/accuracy",
    rows=list(ROWS.values()),
    columns=COLUMNS,
    protocol="fixed_ours",
    extra_metrics={"source val. acc.": "source_val/accuracy"},
    mean_column=True,
    notes="800-d SURF histograms (GFK release, row-normalised and z-scored per domain); MLP with "
          "256 ReLU hidden units, dropout 0.5; SGD momentum 0.9, lr 0.01, weight decay 5e-4, "
          "batch 32 (+32 target), 1500 steps; trained on a fixed 80% of the source, the other 20% "
          "is the source validation set; target accuracy on the whole target domain. DANN: "
          "256-unit domain classifier, lambda_max 0.1; DAN: MK-MMD of the hidden layer, weight 1. "
          "No published number is beside ours: the SURF tables of the literature (GFK, TCA, JDA) "
          "report 1-NN or SVM classifiers on these features, a different model. Run with "
          "--seeds=3, not the 5 the issue asks for: the 108 runs took 80 min at --parallel=2 on "
          "a 2-core CPU shared with other jobs, and 5 seeds did not fit the time available.",
)


def main(argv):
  del argv
  settings = table_script.settings_from_sweep("configs/office.py", labels())
  if table_script.FLAGS.quick:  # four pairs keep the quick check near a minute
    settings = [s for s in settings if s["column"] in QUICK_COLUMNS]
  return table_script.main(SPEC, settings, QUICK, "100 steps, 1 seed, 4 of the 12 pairs")


if __name__ == "__main__":
  app.run(main)
