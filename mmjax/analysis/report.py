"""PAD and t-SNE of a trained run's source and target data: raw inputs, a baseline run's features
and the run's own features (before and after adaptation), as pad.json and tsne.png."""
import json
import pathlib

import matplotlib
import numpy as np
from absl import logging

from mmjax.analysis import pad, runs, tsne

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402


def domains(config, target: str | None, max_points: int, seed: int):
  """The run's source and target examples, each subsampled to at most max_points."""
  target = target or config.data.target
  if not target:
    raise ValueError("the run's config has no data.target; pass --target=DATASET")
  rng = np.random.default_rng(seed)
  out = []
  for dataset, split in ((config.data.train, config.data.train_split),
                         (target, config.data.target_split)):
    arrays = runs.load_data(config, dataset, split)
    n = len(arrays["label"])
    keep = np.sort(rng.permutation(n)[:max_points])
    out.append(({k: v[keep] for k, v in arrays.items()}, f"{dataset}/{split}"))
  return out


def representations(workdir, baseline, target, max_points, seed):
  """{label: (source vectors, target vectors)} in the order they are shown, and the domain names."""
  config, model, params = runs.load_run(workdir)
  (source, source_name), (target, target_name) = domains(config, target, max_points, seed)
  reps = {"inputs": tuple(runs.flat_inputs(config, d) for d in (source, target))}
  for label, run in ((f"features of {baseline}", baseline), (f"features of {workdir}", workdir)):
    if run:
      run_config, run_model, run_params = runs.load_run(run) if run != workdir else (config, model, params)
      reps[label] = tuple(runs.apply_model(run_config, run_model, run_params, d)["features"]
                          for d in (source, target))
  return reps, (source_name, target_name)


def plot(maps, names, path):
  fig, axes = plt.subplots(1, len(maps), figsize=(4.2 * len(maps), 4.4), squeeze=False)
  for ax, (label, (y, n_source, pad_text)) in zip(axes[0], maps.items()):
    ax.scatter(*y[:n_source].T, s=4, c="tab:blue", label=f"source {names[0]}")
    ax.scatter(*y[n_source:].T, s=4, c="tab:red", label=f"target {names[1]}")
    ax.set_title(f"{label}\n{pad_text}", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
  axes[0][0].legend(fontsize=7, markerscale=3, loc="best")
  fig.tight_layout()
  fig.savefig(path, dpi=130)
  plt.close(fig)


def analyse(workdir, out, *, baseline=None, target=None, max_points=1000, perplexity=30.0,
            seed=0, pad_repeats=5) -> dict:
  """Writes out/pad.json and out/tsne.png for the run in `workdir`; returns pad.json's contents."""
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  reps, names = representations(workdir, baseline, target, max_points, seed)
  results, maps = {"source": names[0], "target": names[1]}, {}
  for label, (source, target_vectors) in reps.items():
    r = results[label] = pad.repeated_proxy_a_distance(source, target_vectors,
                                                        repeats=pad_repeats, seed=seed)
    y, kls = tsne.tsne(np.concatenate([source, target_vectors]), perplexity=perplexity, seed=seed)
    r["tsne_kl"] = float(kls[-1])
    text = f"PAD {r['pad']:.2f} ± {r['pad_std']:.2f} ({pad_repeats} halvings)"
    maps[label] = (y, len(source), text)
    logging.info("%s: PAD %.3f ± %.3f, t-SNE KL %.3f", label, r["pad"], r["pad_std"], kls[-1])
  (out / "pad.json").write_text(json.dumps(results, indent=2) + "\n")
  plot(maps, names, out / "tsne.png")
  logging.info("wrote %s and %s", out / "pad.json", out / "tsne.png")
  return results
