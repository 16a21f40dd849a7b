"""The DANN authors' own shallow algorithm on the Amazon pairs: how far their protocol reproduces
the paper's Table 1.

python experiments/amazon_authors.py --workdir=runs/amazon_authors [--seeds=5] [--lam=0.1]
    [--pairs=D→B,D→E] [--parallel=2] [--quick]
python experiments/amazon_authors.py --workdir=runs/amazon_authors --pairs=D→B \
    --reverse_lams=0.01,0.0316,0.1,0.316,1 [--parallel=2]

experiments/amazon_table.py trains the paper's network with mmjax's engine (mini-batches, a fixed
number of steps, the last checkpoint). The numbers in the paper came from the authors' code
(GRAAL-Research/domain_adversarial_neural_network, DANN.py and experiments_amazon.py), which trains
differently. This script is a JAX transcription of that algorithm, so that a gap between our table
and the paper can be told apart from a gap between the paper and its own protocol:

- 50 sigmoid hidden units, a 2-way softmax, a logistic domain regressor on the hidden layer; W and V
  uniform in +-sqrt(6 / (fan_in + fan_out)), biases and the domain regressor 0; float64;
- the source's first 90% of its 2000 train reviews, in file order (no shuffling), one example per
  step, each paired with one target train review drawn uniformly; the last 10% is the validation set;
- plain SGD at lr 0.001 on E = L_y - lambda L_d with a constant lambda (0.1 in their script): the
  hidden layer descends E, the domain regressor descends lambda L_d (it learns at lr * lambda);
- up to 200 epochs, early stopping on the validation error (the authors' rule: a new best at epoch t,
  ties included, lets training go on to epoch max(30, 1.5 t); the weights of the best epoch are kept);
- lambda = 0 is their NN (source only). It never sees the target, so one NN run per source and seed
  is tested on each of that source's pairs.

What is not theirs: the per-step update is jax.grad of that objective (tests/test_amazon_authors.py
checks it against a numpy transcription of DANN.py's hand-written deltas, and the whole fit against
a numpy transcription of their loop), and seeds are 0..n-1 where their script uses one seed, 12342.
The random draws come in their order (W, then V, then one target index per source example), so
--seed_list=12342 replays their script's run up to float summation order. The paper chose lambda, and other hyperparameters, per pair by reverse validation;
this script's table runs one lambda for all pairs, so its DANN row is not the paper's protocol.
With --reverse_lams it runs DANN at each lambda of a grid, each run followed by its reverse run (the
paper's §5.1.2, with the same algorithm: the target's train reviews pseudo-labelled by the run, their
last 10% the reverse run's validation set, the source's training part its unlabelled target; the
score is the reverse model's accuracy on the source's validation set), and tabulates per pair the
lambda with the best mean reverse score over seeds, beside the target oracle's choice. As in
mmjax.selection, the forward run sees all of the target's train reviews, the reverse run's
validation set included (without labels).

Each run writes <workdir>/<tag>/<method>/<pair>/seed_<n>.json, with <tag> naming lambda, lr and the
epochs (finished runs are skipped when the script is run again); the table goes to
<workdir>/<tag>/table/amazon_authors.{md,tex,csv}, its NN row from the NN runs' own tag (lambda 0).
The folder is "table" for all 12 pairs and seeds 0-4; other runs name their pairs and seeds in it
(table_DB_KE_seeds0), so that a smaller run does not overwrite the full table. The same holds for
the reverse-validation table in <workdir>/reverse_<grid>_lr<lr>_ep<epochs>/.
"""
import concurrent.futures
import json
import multiprocessing
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from mmjax import tables  # noqa: E402
from mmjax.train import writers  # noqa: E402

NAMES = {"books": "B", "dvd": "D", "electronics": "E", "kitchen": "K"}
DOMAINS = {v: k for k, v in NAMES.items()}
# (DANN, NN) target accuracy per pair, Ganin et al. 2016, Table 1 (original features). A copy of
# experiments/amazon_table.PUBLISHED (a test checks they are equal): importing that module would
# bring mmjax.table_script's flags, whose names these scripts share.
PUBLISHED = {
    "B→D": (.784, .790), "B→E": (.733, .747), "B→K": (.779, .778), "D→B": (.723, .720),
    "D→E": (.754, .732), "D→K": (.783, .778), "E→B": (.713, .709), "E→D": (.738, .733),
    "E→K": (.854, .854), "K→B": (.709, .708), "K→D": (.740, .739), "K→E": (.843, .841),
}
ROWS = {"nn": "NN (source only)", "dann": "DANN"}
HIDDEN = 50
VALID_FRACTION = 0.1
MIN_EPOCHS = 30         # the authors' continue_until starts at 30 epochs
PATIENCE_FACTOR = 1.5   # and becomes max(itself, int(1.5 t)) at each new best epoch t

FLAGS = flags.FLAGS


def _define_flags():
  """Defined when run as a script only: tests import this module beside mmjax.table_script, whose
  flags share some of these names."""
  flags.DEFINE_string("workdir", None, "where runs and the table go", required=True)
  flags.DEFINE_integer("seeds", 5, "seeds 0..n-1 per pair and method")
  flags.DEFINE_list("seed_list", [], "these seeds instead (12342: the authors' script's run)")
  flags.DEFINE_float("lam", 0.1, "DANN's constant lambda (the authors' script: 0.1)")
  flags.DEFINE_float("lr", 0.001, "SGD learning rate (the authors' script: 0.001 on these features)")
  flags.DEFINE_integer("max_epochs", 200, "the authors' maxiter")
  flags.DEFINE_list("pairs", list(PUBLISHED), "pairs to run, e.g. D→B,D→E (or dvd_books)")
  flags.DEFINE_list("methods", list(ROWS), "nn, dann")
  flags.DEFINE_list("reverse_lams", [], "a lambda grid (e.g. 0.01,0.0316,0.1,0.316,1): run DANN at "
                    "each with its reverse run, and tabulate lambda chosen by reverse validation")
  flags.DEFINE_integer("parallel", 1, "runs at once, one process each")
  flags.DEFINE_bool("quick", False, "2 pairs, 1 seed, at most 3 epochs: checks the script, not the paper")


def early_stopping(valid_errors, min_epochs=MIN_EPOCHS, factor=PATIENCE_FACTOR):
  """The authors' rule over a run's per-epoch validation errors: (best epoch, last epoch trained).

  A new best (error <= the best so far) at epoch t extends training to epoch max(until, int(factor t));
  training stops after the first epoch t > until that is not a new best. Pass the errors one epoch at
  a time through `EarlyStopping` to stop a run early; this function is the same rule over a list.
  """
  rule = EarlyStopping(min_epochs, factor)
  for t, error in enumerate(valid_errors):
    if rule.update(t, error):
      return rule.best_epoch, t
  return rule.best_epoch, len(valid_errors) - 1


class EarlyStopping:
  def __init__(self, min_epochs=MIN_EPOCHS, factor=PATIENCE_FACTOR):
    self.best_error, self.best_epoch, self.until, self.factor = 2.0, None, min_epochs, factor

  def update(self, epoch: int, error: float) -> bool:
    """Records epoch's validation error; True when training should stop now."""
    if error <= self.best_error:
      self.best_error, self.best_epoch = error, epoch
      self.until = max(self.until, int(self.factor * epoch))
      return False
    return epoch > self.until


def parse_pair(text: str) -> str:
  """"D→B", "D->B" or "dvd_books" -> "D→B"."""
  text = text.replace("->", "→")
  if "_" in text:
    s, t = text.split("_")
    text = f"{NAMES.get(s, s)}→{NAMES.get(t, t)}"
  if text not in PUBLISHED:
    raise ValueError(f"unknown pair {text!r}; use one of {', '.join(PUBLISHED)} or e.g. dvd_books")
  return text


def init_params(rng: np.random.RandomState, num_features: int, hidden: int = HIDDEN) -> dict:
  """The authors' random_init: uniform in +-sqrt(6 / (in + out)); biases and domain regressor 0."""
  def uniform(fan_in, fan_out):
    bound = np.sqrt(6.0 / (fan_in + fan_out))
    return bound * (2 * rng.rand(fan_out, fan_in) - 1.0)
  return {"W": uniform(num_features, hidden), "V": uniform(hidden, 2), "b": np.zeros(hidden),
          "c": np.zeros(2), "w": np.zeros(hidden), "d": np.zeros(())}


def make_step(lam: float, lr: float):
  """One SGD step of the authors' algorithm on (source x, label y, target x2), by jax.grad."""
  import jax

  def hidden(p, x):
    return jax.nn.sigmoid(p["W"] @ x + p["b"])

  def class_loss(p, x, y):
    return -jax.nn.log_softmax(p["V"] @ hidden(p, x) + p["c"])[y]

  def domain_loss(p, x, x2):
    """-log-likelihood of source = 1, target = 0 under the logistic domain regressor."""
    logit_s = p["w"] @ hidden(p, x) + p["d"]
    logit_t = p["w"] @ hidden(p, x2) + p["d"]
    return -jax.nn.log_sigmoid(logit_s) - jax.nn.log_sigmoid(-logit_t)

  def step(p, example):
    x, y, x2 = example
    grads = jax.grad(class_loss)(p, x, y)
    if lam:
      g_dom = jax.grad(domain_loss)(p, x, x2)
      feature = ("W", "b")
      grads = {k: grads[k] - lam * g_dom[k] if k in feature else grads[k] for k in grads}
      grads["w"], grads["d"] = lam * g_dom["w"], lam * g_dom["d"]
    return jax.tree.map(lambda a, g: a - lr * g, p, grads), None
  return step


def predict(p: dict, x: np.ndarray) -> np.ndarray:
  h = 1.0 / (1.0 + np.exp(-(x @ p["W"].T + p["b"])))
  return np.argmax(h @ p["V"].T + p["c"], axis=-1)


def train(xs, ys, xt, x_valid, y_valid, *, lam, lr, seed, max_epochs):
  """The authors' fit(): returns (best params, best epoch, last epoch, best validation error)."""
  import jax
  import jax.numpy as jnp

  with jax.enable_x64(True):  # the authors' numpy code computes in float64
    rng = np.random.RandomState(seed)
    params = jax.tree.map(jnp.asarray, init_params(rng, xs.shape[1]))
    step = make_step(lam, lr)
    xs_d, ys_d, xt_d = (jnp.asarray(a) for a in (xs, ys, xt))

    @jax.jit
    def epoch(p, target_index):
      return jax.lax.scan(step, p, (xs_d, ys_d, xt_d[target_index]))[0]

    rule = EarlyStopping()
    best = params
    for t in range(max_epochs):
      params = epoch(params, rng.randint(len(xt), size=len(xs)))
      error = float(np.mean(predict(jax.device_get(params), x_valid) != y_valid))
      stop = rule.update(t, error)
      if rule.best_epoch == t:
        best = params
      if stop:
        break
    return jax.device_get(best), rule.best_epoch, t, rule.best_error


def _load(domain: str, split: str):
  from mmjax import data as data_lib
  arrays = data_lib.load_split(f"amazon_{domain}", split)
  return arrays["features"].astype(np.float64), arrays["label"]


def _finished(path: pathlib.Path, job: dict):
  """The run's record if it is done (with its reverse-validation score when the job asks for one)."""
  if not path.exists():
    return None
  record = json.loads(path.read_text())
  if any(record.get(k) != job[k] for k in ("method", "seed", "lam", "lr", "max_epochs")):
    raise ValueError(f"{path} holds a run of another configuration; use another --workdir")
  return None if job.get("reverse") and "reverse_valid_accuracy" not in record else record


def run_one(job: dict) -> list:
  """One training run, tested on each of job["pairs"] (one pair for DANN; for NN, which never sees
  the target, every requested pair of its source); writes and returns one record per pair."""
  paths = [pathlib.Path(path) for _, path in job["pairs"]]
  done = [_finished(path, job) for path in paths]
  if all(r is not None for r in done):
    return done
  start = time.time()
  xs, ys = _load(job["source"], "train")
  xt, _ = _load(DOMAINS[job["pairs"][0][0].split("→")[1]], "train")
  n_valid = int(VALID_FRACTION * len(ys))
  best, best_epoch, last_epoch, valid_error = train(
      xs[:-n_valid], ys[:-n_valid], xt, xs[-n_valid:], ys[-n_valid:], lam=job["lam"],
      lr=job["lr"], seed=job["seed"], max_epochs=job["max_epochs"])
  wall = time.time() - start
  extra = {}
  if job.get("reverse"):  # the paper's reverse validation (§5.1.2), with the same algorithm
    pseudo = predict(best, xt)
    n_valid_t = int(VALID_FRACTION * len(xt))
    reverse, *_ = train(xt[:-n_valid_t], pseudo[:-n_valid_t], xs[:-n_valid], xt[-n_valid_t:],
                        pseudo[-n_valid_t:], lam=job["lam"], lr=job["lr"], seed=job["seed"],
                        max_epochs=job["max_epochs"])
    extra["reverse_valid_accuracy"] = float(np.mean(predict(reverse, xs[-n_valid:]) == ys[-n_valid:]))
    extra["reverse_wall_time_s"] = time.time() - start - wall
  records = []
  for (pair, _), path in zip(job["pairs"], paths):
    x_test, y_test = _load(DOMAINS[pair.split("→")[1]], "test")
    record = {**{k: job[k] for k in ("method", "seed", "lam", "lr", "max_epochs")}, "pair": pair,
              "target_test_accuracy": float(np.mean(predict(best, x_test) == y_test)),
              "source_valid_accuracy": 1.0 - valid_error, "best_epoch": best_epoch,
              "epochs_trained": last_epoch + 1, "wall_time_s": wall / len(paths), **extra}
    path.parent.mkdir(parents=True, exist_ok=True)
    writers.write_json_atomic(path, record)
    records.append(record)
  return records


def spec(lam: float, lr: float, max_epochs: int, columns, methods=tuple(ROWS)) -> tables.TableSpec:
  return tables.TableSpec(
      name="amazon_authors",
      title="Amazon reviews, the DANN authors' shallow algorithm: target test accuracy",
      metric="target_test/accuracy", rows=[ROWS[m] for m in ROWS if m in methods],
      columns=list(columns),
      protocol="early_stopping",
      published={**{(ROWS["dann"], c): PUBLISHED[c][0] for c in columns},
                 **{(ROWS["nn"], c): PUBLISHED[c][1] for c in columns}},
      published_source="Ganin et al., JMLR 2016, Table 1 (original features; hyperparameters "
                       "there chosen per pair by reverse validation)",
      mean_column=len(columns) > 1,
      notes=f"The authors' code (DANN.py) transcribed to JAX: one example per step, SGD lr {lr}, "
            f"constant lambda {lam} for every pair, the source's last 10% as the validation set of "
            f"their early-stopping rule, at most {max_epochs} epochs (experiments/amazon_authors.py).")


def _tag(lam: float, max_epochs: int) -> str:
  return f"lam{lam:g}_lr{FLAGS.lr:g}_ep{max_epochs}"


def table_dir(pairs, seeds) -> str:
  """"table" for the full table (12 pairs, seeds 0-4); else a name with the pairs and the seeds."""
  parts = ["table"]
  if sorted(pairs) != sorted(PUBLISHED):
    parts += [p.replace("→", "") for p in pairs]
  if list(seeds) != list(range(5)):
    parts.append("seeds" + "-".join(str(s) for s in seeds))
  return "_".join(parts)


def make_jobs(root, method, pairs, seeds, lam, max_epochs, reverse=False) -> list:
  tag = _tag(lam, max_epochs)
  jobs = []
  for seed in seeds:
    for pair in pairs:
      s, t = (DOMAINS[n] for n in pair.split("→"))
      entry = (pair, str(root / tag / f"{method}/{s}_{t}/seed_{seed}.json"))
      shared = [j for j in jobs if method == "nn" and j["seed"] == seed and j["source"] == s]
      if shared:  # NN never sees the target: one run per source serves all its pairs
        shared[0]["pairs"].append(entry)
        continue
      jobs.append({"method": method, "source": s, "seed": seed, "lam": lam, "lr": FLAGS.lr,
                   "max_epochs": max_epochs, "pairs": [entry], "reverse": reverse})
  return jobs


def run_jobs(jobs) -> list:
  if FLAGS.parallel > 1:
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(FLAGS.parallel, mp_context=context) as pool:
      return [r for rs in pool.map(run_one, jobs) for r in rs]
  return [r for job in jobs for r in run_one(job)]


def reverse_validation(root, pairs, seeds, lams, max_epochs):
  """DANN over a lambda grid, each run with its reverse run; per pair the lambda with the best mean
  reverse-validation score over seeds (ties: the first in the grid), and the target oracle's."""
  start = time.time()
  records = run_jobs([j for lam in lams
                      for j in make_jobs(root, "dann", pairs, seeds, lam, max_epochs, reverse=True)])
  by = {}
  for r in records:
    by.setdefault((r["pair"], r["lam"]), []).append(r)
  rows = {"reverse_val": "DANN, reverse validation", "oracle": "DANN, target oracle (upper bound)"}
  runs, choices = {}, {}
  for pair in pairs:
    mean = lambda lam, key: np.mean([r[key] for r in by[(pair, lam)]])
    for protocol, key in (("reverse_val", "reverse_valid_accuracy"),
                          ("oracle", "target_test_accuracy")):
      lam = max(lams, key=lambda l: (mean(l, key), -lams.index(l)))
      choices[(protocol, pair)] = lam
      runs[(rows[protocol], pair)] = [{"value": r["target_test_accuracy"],
                                       "wall_time_s": r["wall_time_s"]} for r in by[(pair, lam)]]
  grid = ", ".join(f"{l:g}" for l in lams)
  table_spec = tables.TableSpec(
      name="amazon_authors_selection",
      title="Amazon reviews, the DANN authors' shallow algorithm with lambda chosen per pair",
      metric="target_test/accuracy", rows=list(rows.values()), columns=list(pairs),
      protocol={rows[k]: k for k in rows},
      published={(rows["reverse_val"], c): PUBLISHED[c][0] for c in pairs},
      published_source="Ganin et al., JMLR 2016, Table 1 (original features, reverse validation)",
      mean_column=len(pairs) > 1,
      notes=f"lambda from {{{grid}}}; " + "; ".join(
          f"{c}: reverse validation {choices[('reverse_val', c)]:g}, oracle "
          f"{choices[('oracle', c)]:g}" for c in pairs) + f". Each run (and reverse run) is the "
          f"authors' algorithm, SGD lr {FLAGS.lr:g}, with their early stopping, at most "
          f"{max_epochs} epochs (experiments/amazon_authors.py).")
  out = root / ("reverse_" + "_".join(f"{l:g}" for l in lams) + f"_lr{FLAGS.lr:g}_ep{max_epochs}")
  paths = tables.write_all(out / table_dir(pairs, seeds), table_spec,
                           tables.records_from_runs(table_spec, runs),
                           len(seeds))
  logging.info("%d runs and their reverse runs in %.0f s; table: %s", len(records),
               time.time() - start, paths["md"])
  print(paths["md"].read_text())


def main(argv):
  del argv
  pairs = [parse_pair(p) for p in FLAGS.pairs]
  seeds = [int(x) for x in FLAGS.seed_list] or list(range(FLAGS.seeds))
  max_epochs = FLAGS.max_epochs
  if FLAGS.quick:
    pairs, seeds, max_epochs = pairs[:2], [0], 3
  unknown = set(FLAGS.methods) - set(ROWS)
  if unknown:
    raise app.UsageError(f"unknown methods {sorted(unknown)}; use nn, dann")
  root = pathlib.Path(FLAGS.workdir)
  if FLAGS.reverse_lams:
    return reverse_validation(root, pairs, seeds, [float(x) for x in FLAGS.reverse_lams], max_epochs)
  jobs = []
  for method in FLAGS.methods:
    jobs += make_jobs(root, method, pairs, seeds, 0.0 if method == "nn" else FLAGS.lam, max_epochs)
  start = time.time()
  records = run_jobs(jobs)
  runs = {}
  for r in records:
    runs.setdefault((ROWS[r["method"]], r["pair"]), []).append(
        {"value": r["target_test_accuracy"], "wall_time_s": r["wall_time_s"]})
  table_spec = spec(FLAGS.lam, FLAGS.lr, max_epochs, pairs, FLAGS.methods)
  records_ = tables.records_from_runs(table_spec, runs)
  paths = tables.write_all(root / _tag(FLAGS.lam, max_epochs) / table_dir(pairs, seeds), table_spec,
                           records_, len(seeds))
  logging.info("%d runs in %.0f s; table: %s", len(jobs), time.time() - start, paths["md"])
  epochs = [r["best_epoch"] for r in records]
  print(paths["md"].read_text())
  print(f"best epochs {min(epochs)}-{max(epochs)} (median {int(np.median(epochs))}); "
        f"{sum(r['wall_time_s'] for r in records):.0f} s of runs")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
