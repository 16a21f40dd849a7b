"""MAML paper Table 1 (Omniglot): MAML and first-order MAML, plus ANIL, Meta-SGD, Reptile at 5w1s.

python experiments/maml_omniglot_table.py --workdir=runs/omniglot [--budget=full|cpu]
    [--columns=5w1s,5w5s,20w1s,20w5s] [--rows=maml,fo,anil,metasgd,reptile] [--seeds=1]

Each cell is configs/omniglot_maml.py:<column>[_<variant>][_cpu]; ANIL, Meta-SGD and Reptile run at
5-way 1-shot only. The metric is meta-test accuracy on 600 tasks after 3 test-time steps (Reptile:
10); the table's ± is over seeds and the CI95 column is the 95% interval over tasks.
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import app, flags  # noqa: E402

from mmjax import table_script, tables  # noqa: E402

flags.DEFINE_enum("budget", "full", ["full", "cpu"], "full: the paper's settings; cpu: *_cpu")
flags.DEFINE_list("columns", ["5w1s", "5w5s", "20w1s", "20w5s"], "settings to run")
flags.DEFINE_list("rows", ["maml", "fo", "anil", "metasgd", "reptile"], "methods to run")
FLAGS = flags.FLAGS

COLUMNS = {"5w1s": "5-way 1-shot", "5w5s": "5-way 5-shot", "20w1s": "20-way 1-shot",
           "20w5s": "20-way 5-shot"}
ROWS = {"maml": ("", "MAML"), "fo": ("_fo", "first-order MAML"), "anil": ("_anil", "ANIL"),
        "metasgd": ("_metasgd", "Meta-SGD"), "reptile": ("_reptile", "Reptile")}
ONLY_5W1S = ("anil", "metasgd", "reptile")
# Finn et al. 2017, Table 1 (MAML); first-order MAML as reported by Nichol et al. 2018, Table 1;
# Meta-SGD: Li et al. 2017, Table 1. No ANIL number: none was checked against its paper.
PUBLISHED = {
    ("MAML", "5-way 1-shot"): .987, ("MAML", "5-way 5-shot"): .999,
    ("MAML", "20-way 1-shot"): .958, ("MAML", "20-way 5-shot"): .989,
    ("first-order MAML", "5-way 1-shot"): .983, ("first-order MAML", "5-way 5-shot"): .992,
    ("first-order MAML", "20-way 1-shot"): .894, ("first-order MAML", "20-way 5-shot"): .979,
    ("Meta-SGD", "5-way 1-shot"): .9953,
}
QUICK = (("train.steps", "4"), ("train.log_every", "2"), ("meta.test_tasks", "8"),
         ("meta.meta_batch", "4"), ("meta.queries", "2"))


def spec(budget: str, columns, rows) -> tables.TableSpec:
  notes = ("MAML's settings: 5-way 1 inner step alpha 0.4 meta-batch 32, 20-way 5 steps alpha "
           "0.1 meta-batch 16, 3 test steps, Adam 0.001, 60,000 meta-iterations; stride-2 conv4 "
           "with batch-statistics norm; 1200 training characters with rotations; 15 queries.")
  if budget == "cpu":
    notes = ("CPU BUDGET (configs/omniglot_maml.py *_cpu): 500 meta-iterations of 8 tasks "
             "(20-way: 250 of 4), 5 queries, 600 test tasks; far from the paper's 60,000 x 32, "
             "so far below its accuracy.")
  return tables.TableSpec(
      name="maml_omniglot" + ("_cpu" if budget == "cpu" else ""),
      title="Omniglot few-shot classification: meta-test accuracy",
      metric="meta_test/accuracy", rows=[ROWS[r][1] for r in rows],
      columns=[COLUMNS[c] for c in columns], protocol="fixed", published=PUBLISHED,
      published_source="Finn et al. 2017, Table 1; first-order MAML: Nichol et al. 2018, Table 1; "
                       "Meta-SGD: Li et al. 2017, Table 1",
      extra_metrics={"CI95 (tasks)": "meta_test/accuracy_ci95"}, notes=notes)


def settings(budget: str, columns, rows) -> list:
  suffix = "_cpu" if budget == "cpu" else ""
  return [{"row": ROWS[r][1], "column": COLUMNS[c],
           "config": f"configs/omniglot_maml.py:{c}{ROWS[r][0]}{suffix}"}
          for c in columns for r in rows if c == "5w1s" or r not in ONLY_5W1S]


def main(argv):
  del argv
  bad = sorted(set(FLAGS.columns) - set(COLUMNS)) + sorted(set(FLAGS.rows) - set(ROWS))
  if bad:
    raise SystemExit(f"unknown --columns/--rows {bad}; columns {list(COLUMNS)}, rows {list(ROWS)}")
  return table_script.main(spec(FLAGS.budget, FLAGS.columns, FLAGS.rows),
                           settings(FLAGS.budget, FLAGS.columns, FLAGS.rows),
                           QUICK, "4 meta-iterations of 4 tasks, 8 test tasks")


if __name__ == "__main__":
  app.run(main)
