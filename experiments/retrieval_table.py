"""Cross-modal retrieval with the dual encoder: Omniglot image↔strokes and AV digits audio↔image.

python experiments/retrieval_table.py --workdir=runs/retrieval_table [--seeds=3] [--quick]

Recall@1 (first modality → second) as the table's number, R@5/R@10 and the other direction beside.
Omniglot is instance retrieval over held-out characters' drawings; for AV digits a hit is any item of
the query's digit.
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import app  # noqa: E402

from mmjax import table_script, tables  # noqa: E402

COLUMNS = {"omniglot": "Omniglot image→strokes", "av_digits": "AV digits audio→image"}
ROW = "dual encoder (InfoNCE)"
QUICK = (("train.steps", "20"), ("train.log_every", "10"), ("checkpoint.every", "20"))
SPEC = tables.TableSpec(
    name="retrieval",
    title="Cross-modal retrieval, test split: Recall@1 (first modality → second)",
    metric="test/a_to_b_R@1",
    rows=[ROW],
    columns=list(COLUMNS.values()),
    protocol="fixed_ours",
    extra_metrics={"R@5": "test/a_to_b_R@5", "R@10": "test/a_to_b_R@10",
                   "reverse R@1": "test/b_to_a_R@1", "reverse R@5": "test/b_to_a_R@5",
                   "reverse R@10": "test/b_to_a_R@10"},
    notes="Two Transformer towers (width 64, 2 layers), 64-d shared space, learned temperature; "
          "AdamW lr 1e-3, batch 128, 2000 steps.",
)


def main(argv):
  del argv
  settings = table_script.settings_from_sweep(
      "configs/retrieval.py", {arg: (ROW, column) for arg, column in COLUMNS.items()})
  return table_script.main(SPEC, settings, QUICK, "20 steps, 1 seed")


if __name__ == "__main__":
  app.run(main)
