"""MAML paper Appendix C / Figure 2: sinusoid regression, MAML against a pretrained baseline.

python experiments/sinusoid_table.py --workdir=runs/sinusoid [--budget=cpu|full] [--seeds=1] [--quick]

Runs configs/sinusoid.py (maml, pretrained; with _cpu for the CPU budget) through the experiment
runner, then writes sinusoid.md/.csv (MSE on the meta-test tasks after 1, 5 and 10 test-time steps,
beside Finn et al. 2017, Appendix C) and sinusoid_curves.png (adapted curves and the true sinusoid).
"""
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from mmjax import config as config_lib  # noqa: E402
from mmjax import experiments, logs, plots, tables  # noqa: E402
from mmjax import table_script  # noqa: E402,F401  (flags --workdir --seeds --quick --parallel --out)
from mmjax.data import sinusoid  # noqa: E402
from mmjax.methods import maml  # noqa: E402
from mmjax.train import checkpoint, meta_trainer  # noqa: E402

flags.DEFINE_enum("budget", "cpu", ["cpu", "full"], "cpu: 10,000 meta-iterations; full: 70,000")
FLAGS = flags.FLAGS

ROWS = {"maml": "MAML", "pretrained": "pretrained, fine-tuned"}
STEPS = (1, 5, 10)
# MSE after 1, 5, 10 test-time steps, K = 10 (Finn et al. 2017, Appendix C, Table 3).
PUBLISHED = {"MAML": (0.67, 0.38, 0.35), "pretrained, fine-tuned": (2.41, 2.23, 2.19)}
SPEC = tables.TableSpec(
    name="sinusoid", title="Sinusoid regression, K = 10: meta-test MSE",
    metric="meta_test/loss_step10", rows=list(ROWS.values()), columns=["K=10"],
    protocol="fixed", extra_metrics={**{f"MSE after {k}": f"meta_test/loss_step{k}" for k in STEPS},
                                     "CI95 after 10": "meta_test/loss_ci95"},
    published_source="Finn et al. 2017, Appendix C")


def to_markdown(records, cells, root, budget) -> str:
  """MSE is not a fraction, so this table is written here rather than by tables.to_markdown."""
  head = ["Method", "seeds"] + [f"MSE, {k} step{'s' * (k > 1)}" for k in STEPS] + [
      "95% CI over tasks, 10 steps"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in records:
    ours = [f"{r[f'MSE after {k}']:.2f}" if r["n"] else "not run" for k in STEPS]
    published = PUBLISHED[r["row"]]
    lines.append("| " + " | ".join([r["row"], str(r["n"])] + [
        f"{o} (paper {p:.2f})" for o, p in zip(ours, published)] + [
            f"± {r['CI95 after 10']:.2f}" if r["n"] else "–"]) + " |")
  run = json.loads((experiments.cell_dir(root, cells[0]) / "results.json").read_text())
  meta = run["config"]["meta"]
  return (f"**{SPEC.title}**\n\n" + "\n".join(lines) + "\n\n"
          f"Mean over {meta['test_tasks']} meta-test tasks (K = {meta['shots']} support points, "
          f"{meta['queries']} query points, test-time step {meta['inner_lr']}) and over seeds; "
          f"{run['config']['train']['steps']} meta-iterations ({budget} budget; the paper: "
          "70,000). "
          "Published: Finn et al. 2017, Appendix C. The pretrained baseline is MAML with 0 inner "
          "steps, fine-tuned with the same test-time step size.\n")


def plot(root, cells, path, tasks=3):
  """Adapted curves after 1 and 10 steps on K points of meta-test tasks, against the true curve."""
  plt = plots.plt
  fig, axes = plt.subplots(len(cells), tasks, figsize=(4 * tasks, 3 * len(cells)), squeeze=False)
  grid = np.linspace(*sinusoid.X_RANGE, 200, dtype=np.float32)[:, None]
  for row, cell in zip(axes, cells):
    cfg = config_lib.load_with_overrides(str(experiments.REPO / cell.config),
                                         {"seed": str(cell.seed)})
    model = maml.build_model(cfg)
    meta_params, _ = checkpoint.read_params(str(experiments.cell_dir(root, cell)))
    adapt, _ = maml.make_adapt(cfg, model)
    source = sinusoid.SinusoidTasks(shots=cfg.meta.shots, queries=cfg.meta.queries)
    for j, ax in enumerate(row):
      amplitude, phase, _ = source.parameters(cfg.meta.test_seed, meta_trainer.TEST_STEP, j)
      support = source.task(cfg.meta.test_seed, meta_trainer.TEST_STEP, j)["support"]
      ax.plot(grid, sinusoid.curve(grid, amplitude, phase), "k", label="true")
      ax.plot(support["x"], support["label"], "^", color="purple", label="K points")
      for steps, style in ((0, ":"), (1, "--"), (10, "-")):
        params = adapt(meta_params, meta_params["model"], support, steps)
        pred = model.apply({"params": params}, grid)["logits"]
        ax.plot(grid, pred, style, label=f"{steps} step{'s' * (steps != 1)}")
      ax.set_title(f"{cell.row}, task {j}")
  axes[0][0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def main(argv):
  del argv
  if not FLAGS.workdir:
    raise SystemExit("--workdir is required")
  logs.setup()
  suffix = "_cpu" if FLAGS.budget == "cpu" else ""
  settings = [{"row": row, "column": "K=10", "config": f"configs/sinusoid.py:{arg}{suffix}"}
              for arg, row in ROWS.items()]
  quick = (("train.steps", "200"), ("meta.test_tasks", "50")) if FLAGS.quick else ()
  cells = experiments.grid(settings, range(1 if FLAGS.quick else FLAGS.seeds), quick)
  root = pathlib.Path(FLAGS.workdir)
  status = experiments.Runner(root, FLAGS.parallel, sweep=FLAGS.sweep).run(cells)
  records = tables.collect(root, cells, SPEC)
  out = pathlib.Path(FLAGS.out or (root / "tables" if FLAGS.quick
                                   else experiments.REPO / "docs/results"))
  out.mkdir(parents=True, exist_ok=True)
  (out / "sinusoid.md").write_text(to_markdown(records, cells, root, FLAGS.budget))
  (out / "sinusoid.csv").write_text(tables.to_csv(SPEC, records))
  plot(root, [c for c in cells if c.seed == 0], out / "sinusoid_curves.png")
  print((out / "sinusoid.md").read_text())
  failed = {k: v for k, v in status.items() if v.startswith(("failed", "stopped"))}
  for key, why in failed.items():
    logging.error("cell %s: %s", key, why)
  return 1 if failed else 0


if __name__ == "__main__":
  app.run(main)
