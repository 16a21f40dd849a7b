"""Multimodal few-shot: MAML on Omniglot 5-way 1-shot with image + pen strokes against image only.

python experiments/maml_multimodal_table.py --workdir=runs/omniglot_mm [--budget=full|cpu]
    [--rows=image,strokes,image_strokes] [--seeds=1] [--parallel=N] [--quick]

Each cell is configs/omniglot_mm_maml.py:<row>[_cpu]: the same small Transformer and MAML recipe
with the image, the strokes, or both fused by concatenation. The metric is meta-test accuracy on 600
tasks of alphabets unseen in meta-training, after 1 test-time step; the
table's ± is over seeds and the CI95 column is the 95% interval over tasks. Every row meets the
same test tasks. No published numbers: no paper we know reports this task.
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import app, flags  # noqa: E402

from mmjax import table_script, tables  # noqa: E402

flags.DEFINE_enum("budget", "full", ["full", "cpu"],
                  "full: MAML's 5-way 1-shot settings; cpu: the *_cpu configs")
flags.DEFINE_list("rows", ["image", "strokes", "image_strokes"], "modalities to run")
FLAGS = flags.FLAGS

COLUMN = "5-way 1-shot"
ROWS = {"image": "image only", "strokes": "strokes only",
        "image_strokes": "image + strokes (concat)"}
QUICK = (("train.steps", "4"), ("train.log_every", "2"), ("meta.test_tasks", "8"),
         ("meta.meta_batch", "4"), ("meta.queries", "2"))


def spec(budget: str, rows) -> tables.TableSpec:
  notes = ("omniglot_strokes: meta-train on 136 characters of 5 alphabets, meta-test on 106 "
           "characters of 3 other alphabets; no rotated classes. FusionTransformer width 32, depth "
           "1 (cnn image tokens, one token per pen point); MAML with 1 inner step of alpha 0.1, 1 "
           "test step, meta-batch 32, Adam 0.001, 60,000 meta-iterations.")
  if budget == "cpu":
    notes = ("CPU BUDGET (configs/omniglot_mm_maml.py *_cpu): 1000 meta-iterations of 8 tasks, "
             "5 queries, 600 test tasks; same data, model and MAML settings otherwise.")
  return tables.TableSpec(
      name="maml_multimodal" + ("_cpu" if budget == "cpu" else ""),
      title="Multimodal few-shot: Omniglot image + pen strokes, meta-test accuracy",
      metric="meta_test/accuracy", rows=[ROWS[r] for r in rows], columns=[COLUMN],
      protocol="fixed_ours", extra_metrics={"CI95 (tasks)": "meta_test/accuracy_ci95"},
      notes=notes)


def fusion_margin(records) -> str:
  """How many points image + strokes gains over image only (means over seeds)."""
  means = {r["row"]: r["mean"] for r in records if r["n"]}
  image, both = means.get(ROWS["image"]), means.get(ROWS["image_strokes"])
  if image is None or both is None:
    return ""
  return f"Image + strokes minus image only: {100 * (both - image):+.1f} points."


def settings(budget: str, rows) -> list:
  suffix = "_cpu" if budget == "cpu" else ""
  return [{"row": ROWS[r], "column": COLUMN, "config": f"configs/omniglot_mm_maml.py:{r}{suffix}"}
          for r in rows]


def main(argv):
  del argv
  bad = sorted(set(FLAGS.rows) - set(ROWS))
  if bad:
    raise SystemExit(f"unknown --rows {bad}; use {list(ROWS)}")
  return table_script.main(spec(FLAGS.budget, FLAGS.rows), settings(FLAGS.budget, FLAGS.rows),
                           QUICK, "4 meta-iterations of 4 tasks, 8 test tasks",
                           conclusion=fusion_margin)


if __name__ == "__main__":
  app.run(main)
