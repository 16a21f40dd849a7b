"""Office config, the held-out source validation split, npz datasets, and model selection
(source validation, reverse validation, oracle) on a tiny case whose right choice is known."""
import json
import pathlib

import numpy as np
import pytest

from mmjax import config as config_lib
from mmjax import data, experiments, selection, train
from mmjax.analysis.report import analyse

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_train_fit_and_train_val_split_train_the_same_way_every_time():
  train_arrays = data.load_split("office_dslr", "train")
  fit, val = data.load_split("office_dslr", "train_fit"), data.load_split("office_dslr", "train_val")
  assert len(val["label"]) == round(0.2 * 157) and len(fit["label"]) + len(val["label"]) == 157
  # Every example is in exactly one part: match rows of the whole split (they are distinct).
  whole = {row.tobytes(): label for row, label in zip(train_arrays["features"], train_arrays["label"])}
  assert len(whole) == 157
  rows = [r.tobytes() for part in (fit, val) for r in part["features"]]
  assert sorted(rows) == sorted(whole)
  labels = np.concatenate([fit["label"], val["label"]])
  assert [whole[r] for r in rows] == labels.tolist()
  again = data.load_split("office_dslr", "train_val")
  np.testing.assert_array_equal(again["features"], val["features"])


def _blobs(path, shift, seed, shuffle_labels=False, n=240):
  """Two Gaussian classes in 10-d at -2 and +2 on the first axis, moved by `shift`."""
  rng = np.random.default_rng(seed)
  label = rng.integers(0, 2, n).astype(np.int32)
  features = rng.normal(size=(n, 10)).astype(np.float32)
  features[:, 0] += 4.0 * label - 2.0
  features += np.float32(shift)
  if shuffle_labels:
    label = rng.permutation(label)
  np.savez(path, features=features, label=label)
  return f"npz:{path}"


def test_npz_dataset_reads_the_file(tmp_path):
  name = _blobs(tmp_path / "d.npz", 0.0, 0)
  arrays = data.load_split(name, "train")
  with np.load(tmp_path / "d.npz") as raw:
    np.testing.assert_array_equal(arrays["features"], raw["features"])
  assert arrays["label"].dtype == np.int32
  with pytest.raises(ValueError, match="no such file"):
    data.load_split(f"npz:{tmp_path}/missing.npz", "train")


def _train(root, cell):
  overrides = dict(cell.overrides) | {"seed": str(cell.seed)}
  cfg = config_lib.load_with_overrides(str(REPO / cell.config), overrides)
  return train.train_and_evaluate(cfg, experiments.cell_dir(root, cell))


def test_every_criterion_chooses_the_clean_source_over_shuffled_labels(tmp_path):
  """Candidates: DANN on the true source labels or on shuffled ones. The shuffled candidate is at
  chance on the source validation set, and its pseudo-labels are noise, so its reverse model is at
  chance too; the clean one is right on all three scores."""
  source = _blobs(tmp_path / "s.npz", 0.0, 1)
  target = _blobs(tmp_path / "t.npz", 0.5, 2)
  base = experiments.Cell("DANN", "S→T", 0, "configs/office.py:dann/amazon_webcam", (
      ("data.target", target), ("evals.target_test.dataset", target),
      ("evals.source_val.dataset", source), ("model.num_classes", "2"), ("model.hidden", "(16,)"),
      ("model.dropout", "0.0"), ("adapt.domain_hidden", "16"), ("train.steps", "80"),
      ("train.log_every", "40"), ("checkpoint.every", "80"), ("optim.lr", "0.05")))
  grid = {"clean": (("data.train", source),),
          "shuffled": (("data.train", _blobs(tmp_path / "noisy.npz", 0.0, 1, True)),)}
  cells = selection.candidate_cells([base], grid)
  assert [c.key for c in cells] == ["dann/s_to_t/clean/seed_0", "dann/s_to_t/shuffled/seed_0"]
  root = tmp_path / "runs"
  for cell in cells:
    _train(root, cell)
  reverse = {c: selection.reverse_cell(root, c) for c in cells}
  for cell in reverse.values():
    _train(root, cell)

  clean = reverse[cells[0]]
  assert clean.key == "dann/s_to_t/clean_reverse/seed_0"
  reverse_config = json.loads((experiments.cell_dir(root, clean) / "config.json").read_text())
  assert reverse_config["data"]["target"] == source
  assert reverse_config["data"]["target_split"] == "train_fit"
  pseudo = np.load(experiments.cell_dir(root, cells[0]) / selection.PSEUDO_LABELS)
  assert np.mean(pseudo["label"] == np.load(tmp_path / "t.npz")["label"]) > 0.9

  for criterion in selection.CRITERIA:
    scores = selection.scores(root, cells, criterion, reverse)
    assert scores[cells[0]] > 0.9 and scores[cells[1]] < 0.75, (criterion, scores)
    chosen, choices = selection.select(scores)
    assert chosen == [cells[0]] and choices[("DANN", "S→T")][0] == "clean"

  # The analysis command on the clean run: PAD and t-SNE of inputs and features.
  workdir = experiments.cell_dir(root, cells[0])
  analyse(workdir, workdir, max_points=100, perplexity=10.0)
  pads = json.loads((workdir / "pad.json").read_text())
  assert pads["source"] == f"{source}/train_fit" and pads["target"] == f"{target}/train"
  assert {"inputs", f"features of {workdir}"} <= set(pads)
  assert all(0.0 <= pads[k]["pad"] <= 2.0 for k in pads if k.startswith(("inputs", "features")))
  assert (workdir / "tsne.png").stat().st_size > 10_000


def test_select_breaks_ties_by_grid_order_and_averages_seeds():
  cells = [experiments.Cell("r", "c", s, "x", tag=t) for s in (0, 1) for t in ("a", "b")]
  scores = dict(zip(cells, [0.5, 0.6, 0.7, 0.6]))  # a: mean 0.6, b: mean 0.6
  chosen, choices = selection.select(scores)
  assert choices[("r", "c")] == ("a", pytest.approx(0.6)) and [c.tag for c in chosen] == ["a", "a"]
  chosen, _ = selection.select(dict(zip(cells, [0.5, 0.6, 0.6, 0.6])))
  assert {c.tag for c in chosen} == {"b"}
