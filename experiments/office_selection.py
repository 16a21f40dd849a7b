"""Office-Caltech10 SURF, DANN with lambda_max chosen per pair: source validation, reverse validation,
and the target oracle (labelled as such), beside the fixed lambda_max of configs/office.py.

python experiments/office_selection.py --workdir=runs/office_selection [--seeds=5] [--columns=A→W,...]
    [--quick] [--parallel=N] [--tables_only]

Every pair runs once per candidate lambda_max (each run trains on 80% of the source, the rest is the
source validation set), then once more per candidate as the reverse-validation run (mmjax.selection).
Each criterion keeps, per pair, the candidate with its best score, and the table reports that
candidate's target accuracy.
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import app  # noqa: E402

from experiments import office_table  # noqa: E402
from mmjax import selection, table_script, tables  # noqa: E402

GRID_VALUES = ("0.1", "0.3", "1.0")
GRID = {f"lambda_max={v}": (("adapt.lambda_max", v),) for v in GRID_VALUES}
FIXED = "lambda_max=0.1"  # configs/office.py's value
ROWS = {"fixed": f"DANN, {FIXED} fixed", "source_val": "DANN, source validation",
        "reverse_val": "DANN, reverse validation", "oracle": "DANN, target oracle (upper bound)"}
QUICK_COLUMNS = ("A→W", "D→C")
SPEC = tables.TableSpec(
    name="office_selection",
    title="Office-Caltech10 SURF, DANN with lambda_max selected per pair: target accuracy",
    metric="target_test/accuracy",
    rows=list(ROWS.values()),
    columns=office_table.COLUMNS,
    protocol={ROWS["fixed"]: "fixed_ours", **{ROWS[k]: k for k in selection.CRITERIA}},
    extra_metrics={"source val. acc.": "source_val/accuracy"},
    mean_column=True,
    notes=f"Grid lambda_max in {{{', '.join(GRID_VALUES)}}}; everything else as configs/office.py "
          "(the fixed-protocol DANN row of the Office table). Each criterion chooses per pair "
          "the lambda_max with the best mean score over seeds; the choices are listed below.",
)


def main(argv):
  del argv
  labels = {arg: rc for arg, rc in office_table.labels().items() if arg.startswith("dann/")}
  settings = table_script.settings_from_sweep("configs/office.py", labels)
  return table_script.selection_main(SPEC, settings, GRID, ROWS, FIXED, office_table.QUICK,
                                     QUICK_COLUMNS)


if __name__ == "__main__":
  app.run(main)
