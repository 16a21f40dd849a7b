"""Multimodal few-shot: image + strokes episodes of omniglot_strokes, configs, the quick table."""
import csv
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from mmjax import config as config_lib
from mmjax import data
from mmjax.data import episodes
from mmjax.methods import maml
from mmjax.methods.inputs import model_inputs
from conftest import xla_flags

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs/omniglot_mm_maml.py")
EXAMPLE = {"image": np.zeros((1, 28, 28, 1), np.float32),
           "strokes": np.zeros((1, 64, 3), np.float32)}


def stored_by_drawing(split: str):
  """The builder's own examples of a split (105x105 images) sorted by drawing id, and the ids."""
  builder = data.get_builder("omniglot_strokes")
  stored = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
  order = np.argsort(stored["drawing"])
  return {k: v[order] for k, v in stored.items()}, stored["drawing"][order]


def test_tasks_have_distinct_characters_disjoint_sets_and_each_image_with_its_own_strokes():
  cfg = config_lib.load(f"{CONFIG}:image_strokes_cpu")
  source = episodes.make_task_source(cfg, cfg.meta.train_split)
  stored, drawings = stored_by_drawing(cfg.meta.train_split)
  for step, index in ((0, 0), (3, 5), (11, 2)):
    task = source.task(cfg.seed, step, index)
    ids = {part: task[part]["drawing"] for part in task}
    assert not set(ids["support"]) & set(ids["query"])
    rows = {part: np.searchsorted(drawings, ids[part]) for part in task}
    for part, count in (("support", cfg.meta.shots), ("query", cfg.meta.queries)):
      np.testing.assert_array_equal(drawings[rows[part]], ids[part])
      characters = stored["character"][rows[part]].reshape(cfg.meta.ways, count)
      assert (characters == characters[:, :1]).all() and len(set(characters[:, 0])) == 5
      np.testing.assert_array_equal(task[part]["strokes"], stored["strokes"][rows[part]])
      # The images, shrunk here with Pillow (bilinear resizing agrees up to rounding).
      small = [np.asarray(Image.fromarray(image[..., 0]).resize((28, 28), Image.BILINEAR))
               for image in stored["image"][rows[part]]]
      assert np.abs(task[part]["image"][..., 0] * 255 - np.stack(small)).max() <= 1.01
    support_characters = stored["character"][rows["support"]]
    np.testing.assert_array_equal(stored["character"][rows["query"]][::cfg.meta.queries],
                                  support_characters)
    inputs = model_inputs(task["support"], cfg.data.input_key)
    assert sorted(inputs) == ["image", "strokes"]
  test_characters = set(stored_by_drawing(cfg.meta.test_split)[0]["character"])
  assert not test_characters & set(stored["character"])  # meta-test alphabets are unseen
  with pytest.raises(ValueError, match="rotate_classes"):
    episodes.EpisodeSampler(data.load_split("omniglot_strokes", "test"), ways=5, shots=1,
                            queries=1, rotate_classes=True)


def _param_shapes(cfg):
  model = maml.build_model(cfg)
  example = model_inputs(EXAMPLE, cfg.data.input_key)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), example))["params"]
  logits = jax.eval_shape(lambda p: model.apply({"params": p}, example)["logits"], shapes)
  assert logits.shape == (1, cfg.meta.ways)
  return shapes


def test_every_config_builds_and_image_only_is_the_same_image_encoder():
  module = config_lib.load_module(REPO / "configs/omniglot_mm_maml.py")
  shapes = {}
  for arg in module.ARGS:
    cfg = config_lib.load(f"{CONFIG}:{arg}")
    assert cfg.trainer == "meta" and cfg.meta.dataset == "omniglot_strokes"
    assert not cfg.meta.rotate_classes
    shapes[arg] = _param_shapes(cfg)
    maml.check_config(cfg, shapes[arg])
    assert cfg.meta.test_tasks >= 600  # the meta-test size, at every budget
  same = lambda a, b: jax.tree.map(lambda x, y: x.shape == y.shape, a, b)
  for m in ("image", "strokes"):
    for part in (f"{m}_tokenizer", f"{m}_encoder"):
      assert all(jax.tree.leaves(same(shapes[m][part], shapes["image_strokes"][part])))
  assert "strokes_encoder" not in shapes["image"]


def test_quick_table_runs_the_fused_row_on_four_devices(tmp_path):
  # The 4 tasks of a quick meta-step, one per device.
  env = {**os.environ, "XLA_FLAGS": xla_flags(4)}
  out = subprocess.run([sys.executable, str(REPO / "experiments/maml_multimodal_table.py"),
                        f"--workdir={tmp_path}", "--quick", "--rows=image_strokes"], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = list(csv.DictReader((tmp_path / "tables/maml_multimodal.csv").open()))
  assert [(r["column"], r["row"], r["n"]) for r in rows] == [
      ("5-way 1-shot", "image + strokes (concat)", "1")]
  assert 0.0 <= float(rows[0]["mean"]) <= 1.0
  assert "QUICK CHECK" in (tmp_path / "tables/maml_multimodal.md").read_text()
