"""Office-Caltech10 SURF, DANN with lambda_max chosen per pair: source validation, reverse validation,
and the target oracle (labelled as such), beside the fixed lambda_max of configs/office.py.

python experiments/office_selection.py --workdir=runs/office_selection [--seeds=5] [--columns=A→W,...]
    [--quick] [--parallel=N]

Every pair runs once per candidate lambda_max (each run trains on 80% of the source, the rest is the
source validation set), then once more per candidate as the reverse-validation run (mmjax.selection).
Each criterion keeps, per pair, the candidate with its best score, and the table reports that
candidate's target accuracy.
"""
import dataclasses
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import app, flags, logging  # noqa: E402

from experiments import office_table  # noqa: E402
from mmjax import experiments, logs, plots, selection, table_script, tables  # noqa: E402

flags.DEFINE_list("columns", None, "pairs to run (e.g. A→W,D→C); default all 12")
FLAGS = table_script.FLAGS
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


def forward_and_reverse(root, cells):
  """Runs the candidates, then the reverse-validation run of each finished candidate."""
  runner = experiments.Runner(root, FLAGS.parallel, sweep=FLAGS.sweep)
  status = runner.run(cells)
  reverse = {c: selection.reverse_cell(root, c) for c in cells if experiments.is_finished(root, c)}
  status.update(runner.run(list(reverse.values())))
  return reverse, status


def table_records(spec, root, cells, reverse) -> tuple[list, dict]:
  """The rows of every protocol, relabelled into one table, and each criterion's choices."""
  rows, choices = {}, {}
  rows[ROWS["fixed"]] = [c for c in cells if c.tag == FIXED]
  for criterion in selection.CRITERIA:
    chosen, choices[criterion] = selection.select(selection.scores(root, cells, criterion, reverse))
    rows[ROWS[criterion]] = chosen
  records = []
  for label, chosen in rows.items():
    one_row = dataclasses.replace(spec, rows=["DANN"])
    records += [{**r, "row": label} for r in tables.collect(root, chosen, one_row)]
  order = {c: i for i, c in enumerate(spec.columns)}
  records.sort(key=lambda r: (order.get(r["column"], len(order)), spec.rows.index(r["row"])))
  return records, choices


def choices_markdown(choices) -> str:
  lines = ["", "Chosen per pair (criterion: pair → candidate, its score):", ""]
  for criterion, picks in choices.items():
    text = ", ".join(f"{column} {tag.split('=')[1]} ({100 * score:.1f})"
                     for (_, column), (tag, score) in sorted(picks.items(), key=lambda kv: kv[0][1]))
    lines.append(f"- {ROWS[criterion]}: {text}")
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  if not FLAGS.workdir:
    raise SystemExit("--workdir is required")
  logs.setup()
  labels = {arg: rc for arg, rc in office_table.labels().items() if arg.startswith("dann/")}
  settings = table_script.settings_from_sweep("configs/office.py", labels)
  spec, quick = SPEC, ()
  if FLAGS.quick:
    quick = office_table.QUICK
    spec = dataclasses.replace(SPEC, notes="QUICK CHECK: 100 steps, 1 seed, 2 pairs; not a result.")
  if FLAGS.columns or FLAGS.quick:
    columns = [c for c in SPEC.columns if c in (FLAGS.columns or QUICK_COLUMNS)]
    settings = [s for s in settings if s["column"] in columns]
    spec = dataclasses.replace(spec, columns=columns,
                               notes=f"{spec.notes} Pairs run: {len(columns)} of the 12.")
  seeds = range(1 if FLAGS.quick else FLAGS.seeds)
  root = pathlib.Path(FLAGS.workdir)
  cells = selection.candidate_cells(experiments.grid(settings, seeds, quick), GRID)
  reverse, status = forward_and_reverse(root, cells)
  records, choices = table_records(spec, root, cells, reverse)
  out = pathlib.Path(FLAGS.out or (root / "tables" if FLAGS.quick else experiments.REPO / "docs/results"))
  paths = tables.write_all(out, spec, records, len(seeds))
  with paths["md"].open("a") as md:
    md.write(choices_markdown(choices))
  paths["bars"] = plots.bars(spec, records, out / f"{spec.name}_bars")
  print(paths["md"].read_text())
  failed = {k: v for k, v in status.items() if v.startswith(("failed", "stopped"))}
  for key, why in failed.items():
    logging.error("cell %s: %s", key, why)
  return 1 if failed else 0


if __name__ == "__main__":
  app.run(main)
