"""DANN paper Table 1 (Amazon reviews, original features): NN (source only) and DANN, 12 pairs.

python experiments/amazon_table.py --workdir=runs/amazon_table [--seeds=5] [--quick] [--parallel=N]
python experiments/amazon_table.py --workdir=runs/amazon_es --source_val --set=eval_every=100 \
    --set=select.metric=source_val/accuracy --set=select.keep_weights=false --checkpoint=selected

With --source_val the cells are the "/val" configs: each trains on a fixed 80% of its source's
reviews and evaluates on the other 20% as well (source_val). With config.select on that set and
--checkpoint=selected, each run is reported at its best source-validation step: the engine's form of
the DANN authors' early stopping (their code holds out the source's last 10%; see
experiments/amazon_authors.py). The table is amazon_source_val[_selected].*.

The shallow network of the paper (50 sigmoid hidden units, logistic domain regressor) on the
5000-d count features, with the paper's numbers beside ours (Ganin et al., JMLR 2016, Table 1).
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import app, flags  # noqa: E402

from mmjax import table_script, tables  # noqa: E402

NAMES = {"books": "B", "dvd": "D", "electronics": "E", "kitchen": "K"}
# (DANN, NN) target accuracy per pair, Ganin et al. 2016, Table 1 (original features).
PUBLISHED = {
    "B→D": (.784, .790), "B→E": (.733, .747), "B→K": (.779, .778), "D→B": (.723, .720),
    "D→E": (.754, .732), "D→K": (.783, .778), "E→B": (.713, .709), "E→D": (.738, .733),
    "E→K": (.854, .854), "K→B": (.709, .708), "K→D": (.740, .739), "K→E": (.843, .841),
}
ROWS = {"nn": "NN (source only)", "dann": "DANN"}


def labels(suffix=""):
  labels = {}
  for method, row in ROWS.items():
    for s in NAMES:
      for t in NAMES:
        if s != t:
          labels[f"{method}/{s}_{t}{suffix}"] = (row, f"{NAMES[s]}→{NAMES[t]}")
  return labels


QUICK_PAIRS = ("B→D", "D→E", "E→K", "K→B")
QUICK = (("train.steps", "200"), ("train.log_every", "50"), ("checkpoint.every", "200"))
SPEC = tables.TableSpec(
    name="amazon",
    title="Amazon reviews, shallow network: target test accuracy",
    metric="target_test/accuracy",
    rows=list(ROWS.values()),
    columns=list(PUBLISHED),
    protocol="fixed_ours",
    published={**{("DANN", c): v[0] for c, v in PUBLISHED.items()},
               **{("NN (source only)", c): v[1] for c, v in PUBLISHED.items()}},
    published_source="Ganin et al., JMLR 2016, Table 1 (original features; hyperparameters "
                     "there chosen by reverse validation)",
    mean_column=True,
    notes="50 sigmoid hidden units, logistic domain regressor, SGD lr 0.05, batch 32 (+32 target "
          "for DANN), 3000 steps, lambda_p = 0.1 (2 / (1 + exp(-10 p)) - 1).",
)


def main(argv):
  del argv
  source_val = flags.FLAGS.source_val
  settings = table_script.settings_from_sweep("configs/amazon.py", labels("/val" if source_val
                                                                          else ""))
  if table_script.FLAGS.quick:  # four pairs keep the quick check near a minute
    settings = [s for s in settings if s["column"] in QUICK_PAIRS]
  spec = SPEC
  if source_val:
    spec = tables.TableSpec(**{**vars(SPEC), "name": "amazon_source_val", "notes": SPEC.notes + (
        " Each run trains on a fixed 80% of its source's 2000 labelled reviews (train_fit) and "
        "holds out the other 20% (source_val).")})
  return table_script.main(spec, settings, QUICK, "200 steps, 1 seed, 4 of the 12 pairs")


if __name__ == "__main__":
  # Defined here, not at import: the tests import this module beside other table scripts.
  flags.DEFINE_bool("source_val", False, "the /val configs: train on 80% of the source, hold out "
                    "20% as source_val (for --set=select.metric=source_val/accuracy)")
  app.run(main)
