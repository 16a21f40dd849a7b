"""Figures for tables: learning curves across seeds with a std band, and a bar chart per table."""
import json
import pathlib

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mmjax import experiments  # noqa: E402


def _curve(workdir: pathlib.Path, metric: str):
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return {}
  rows = [json.loads(r) for r in path.read_text().splitlines() if r.strip()]
  return {r["step"]: r[metric] for r in rows if metric in r}


def learning_curves(root, cells, spec, metric: str, path_stem) -> list:
  """One panel per column, one line per row: mean over seeds of `metric`, shaded ± std."""
  fig, axes = plt.subplots(1, len(spec.columns), figsize=(4.5 * len(spec.columns), 3.4),
                           squeeze=False)
  for ax, column in zip(axes[0], spec.columns):
    for row in spec.rows:
      curves = [_curve(experiments.cell_dir(root, c), metric) for c in cells
                if c.row == row and c.column == column]
      curves = [c for c in curves if c]
      if not curves:
        continue
      steps = sorted(set.intersection(*(set(c) for c in curves)))
      values = np.array([[c[s] for s in steps] for c in curves])
      mean, std = values.mean(0), values.std(0)
      ax.plot(steps, mean, label=f"{row} (n={len(curves)})")
      ax.fill_between(steps, mean - std, mean + std, alpha=0.25)
    ax.set_title(column)
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=8)
  fig.tight_layout()
  return _save(fig, path_stem)


def bars(spec, records, path_stem) -> list:
  """Grouped bars (rows within columns) with ± std error bars; published numbers as black ticks."""
  width_in = min(12.0, 1.2 + 0.8 * len(spec.columns) * max(1, len(spec.rows)))
  fig, ax = plt.subplots(figsize=(width_in, 3.6))
  width = 0.8 / max(1, len(spec.rows))
  for i, row in enumerate(spec.rows):
    recs = [next(r for r in records if r["row"] == row and r["column"] == c) for c in spec.columns]
    x = np.arange(len(spec.columns)) + (i - (len(spec.rows) - 1) / 2) * width
    ax.bar(x, [100 * r["mean"] for r in recs], width, yerr=[100 * r["std"] for r in recs],
           capsize=3, label=row)
    for xi, r in zip(x, recs):
      if r["published"] is not None:
        ax.plot([xi - width / 2, xi + width / 2], [100 * r["published"]] * 2, "k-", lw=2)
  ax.set_xticks(np.arange(len(spec.columns)), spec.columns)
  ax.set_ylabel(f"{spec.metric} (%)")
  ax.set_ylim(0, 100)
  ax.legend(fontsize=8, loc="lower right")
  ax.set_title(f"{spec.title} (black: published)", fontsize=9)
  fig.tight_layout()
  return _save(fig, path_stem)


def _save(fig, path_stem) -> list:
  path_stem = pathlib.Path(path_stem)
  path_stem.parent.mkdir(parents=True, exist_ok=True)
  paths = [path_stem.with_suffix(".png"), path_stem.with_suffix(".pdf")]
  for p in paths:
    fig.savefig(p, dpi=120)
  plt.close(fig)
  return paths
