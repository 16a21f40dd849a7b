"""The multimodal tasks on the engine: VQA, fusion classification, retrieval, multimodal DANN.

Every AV digits config builds on the data's shapes; the unimodal baselines and the attention-based
fusions train a few steps through `train_and_evaluate` on 4 fake devices on the real AV digits data
(every fusion rule trains in test_fusion_models); the VQA and retrieval methods are checked against
hand-computed references.
"""
import json
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import config as config_lib
from mmjax import train
from mmjax.methods import retrieval, vqa

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = {"train.steps": 3, "train.log_every": 3, "checkpoint.every": 3, "data.global_batch": 16,
        "model.width": 16, "model.depth": 2, "model.mlp_dim": 32, "model.num_heads": 2}


def tiny_config(spec, **overrides):
  cfg = config_lib.load(str(REPO / spec))
  for key, value in {**TINY, **overrides}.items():
    config_lib.override(cfg, key, str(value))
  return cfg


def test_vqa_pairs_pick_the_indexed_questions_of_each_image():
  batch = {"image": jnp.arange(2.0).reshape(2, 1, 1, 1),
           "question": jnp.arange(2 * 3 * 2.0).reshape(2, 3, 2),
           "label": jnp.array([[0, 1, 2], [3, 4, 5]]), "relational": jnp.array([[0, 1, 1], [1, 0, 0]])}
  inputs, labels, relational = vqa.pairs(batch, jnp.array([[2, 0], [1, 2]]))
  np.testing.assert_array_equal(inputs["image"][:, 0, 0, 0], [0, 0, 1, 1])
  np.testing.assert_array_equal(inputs["question"], [[4, 5], [0, 1], [8, 9], [10, 11]])
  np.testing.assert_array_equal(labels, [2, 0, 4, 5])
  np.testing.assert_array_equal(relational, [1, 0, 0, 0])


def test_vqa_eval_reports_accuracy_per_question_type():
  class Echo(nn.Module):  # answers the argmax of the question vector
    @nn.compact
    def __call__(self, inputs, train=False):
      return {"logits": inputs["question"]}
  rng = np.random.default_rng(0)
  b, q, answers, names = 5, 4, 3, ("a", "b", "c")
  predicted, labels = rng.integers(0, answers, (b, q)), rng.integers(0, answers, (b, q))
  qtype, mask = rng.integers(0, len(names), (b, q)), np.array([1, 1, 1, 1, 0])
  batch = {"image": jnp.zeros((b, 2, 2, 1)), "question": jnp.asarray(np.eye(answers)[predicted]),
           "label": jnp.asarray(labels), "relational": jnp.asarray(qtype == 2, jnp.int32),
           "question_type": jnp.asarray(qtype), "mask": jnp.asarray(mask)}
  cfg = config_lib.base_config()
  cfg.data.input_key = "image,question"
  cfg.vqa.question_types = names
  got = vqa.summarize_eval(vqa.make_eval(cfg)(Echo(), {}, batch))
  real = np.repeat(mask, q).reshape(b, q) > 0
  right = (predicted == labels) & real
  for i, name in enumerate(names):
    assert got[f"{name}_accuracy"] == pytest.approx(right[qtype == i].sum() / real[qtype == i].sum())
  assert got["relational_accuracy"] == pytest.approx(got["c_accuracy"])
  assert got["accuracy"] == pytest.approx(right.sum() / real.sum()) and got["n"] == 16
  del batch["question_type"]
  with pytest.raises(ValueError, match="no 'question_type' entry"):
    vqa.make_eval(cfg)(Echo(), {}, batch)


def test_retrieval_recall_matches_a_brute_force_count():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(30, 4)), rng.normal(size=(30, 4))
  labels = rng.integers(0, 5, size=30)
  got = retrieval.summarize_eval({"a": a, "b": b, "label": labels})
  sim = a @ b.T
  for k in retrieval.KS:
    expected = np.mean([labels[i] in labels[np.argsort(-sim[i])[:k]] for i in range(30)])
    assert got[f"a_to_b_R@{k}"] == pytest.approx(expected)
    expected = np.mean([labels[j] in labels[np.argsort(-sim[:, j])[:k]] for j in range(30)])
    assert got[f"b_to_a_R@{k}"] == pytest.approx(expected)


AV_DIGITS_ARGS = ("image", "audio", "concat", "weighted_sum", "late", "early", "cross_attention",
                  "bottleneck")


def test_every_av_digits_config_builds_its_model_on_the_datasets_shapes():
  """Every configs/av_digits.py strategy builds, initialises and predicts 10 classes on av_digits'
  shapes (abstractly: nothing compiles). Each fusion rule trains in tests/test_fusion_models.py,
  and the unimodal baselines and the two attention-based fusions train through the engine on four
  devices below (the other four differ from those only in the fusion module)."""
  from mmjax import methods
  from mmjax.methods.inputs import example_inputs
  batch = {"image": np.zeros((2, 28, 28, 1), np.float32), "audio": np.zeros((2, 8000), np.float32),
           "label": np.zeros(2, np.int32), "speaker": np.zeros(2, np.int32)}
  counts = {}
  for arg in AV_DIGITS_ARGS:
    cfg = tiny_config(f"configs/av_digits.py:{arg}")
    assert cfg.model.fusion == ("early" if arg in ("image", "audio") else arg)  # its own rule
    method = methods.get_method(cfg.method)
    model = method.build_model(cfg)
    example = (method.example_inputs(cfg, batch) if hasattr(method, "example_inputs")
               else example_inputs(batch, cfg.data.input_key))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), example, train=False))
    out = jax.eval_shape(lambda v: model.apply(v, example, train=False), variables)
    logits = out["logits"] if isinstance(out, dict) else out
    assert logits.ndim == 2 and logits.shape[-1] == 10, (arg, logits.shape)
    counts[arg] = sum(np.prod(x.shape) for x in jax.tree.leaves(variables["params"]))
  # The fused models hold both encoders: more parameters than either unimodal one. The rules with
  # parameters of their own (fusion weights, cross-attention, bottleneck tokens) differ from concat.
  assert min(counts[a] for a in AV_DIGITS_ARGS[2:]) > max(counts["image"], counts["audio"]), counts
  for arg in ("weighted_sum", "cross_attention", "bottleneck"):
    assert counts[arg] != counts["concat"], counts


@pytest.mark.parametrize("arg", ["image", "audio", "cross_attention", "bottleneck"])
def test_fusion_strategies_train_on_four_devices(arg, tmp_path):
  assert jax.device_count() == 4
  results = train.train_and_evaluate(tiny_config(f"configs/av_digits.py:{arg}"), tmp_path)
  assert results["devices"] == 4 and results["step"] == 3
  assert results["eval"]["test"]["n"] == 300  # FSDD recordings 0-4 of 6 speakers x 10 digits
  assert np.isfinite(results["final_train"]["train/loss"])
  assert 0.0 <= results["eval"]["test"]["accuracy"] <= 1.0


def test_multimodal_dann_trains_the_fused_features(tmp_path):
  results = train.train_and_evaluate(tiny_config("configs/av_digits_adapt.py:dann"), tmp_path)
  assert {"source_test", "target_test"} <= set(results["eval"])
  assert "train/domain_loss" in results["final_train"]


def test_retrieval_trains_and_ranks_the_held_out_split(tmp_path):
  cfg = tiny_config("configs/retrieval.py:omniglot", **{"model.embed_dim": 8})
  results = train.train_and_evaluate(cfg, tmp_path)
  ev = results["eval"]["test"]
  assert ev["n"] > 0 and 0 <= ev["a_to_b_R@1"] <= ev["a_to_b_R@5"] <= ev["a_to_b_R@10"] <= 1


def test_launch_without_config_runs_the_sort_of_clevr_quickstart(tmp_path):
  out = subprocess.run(
      [sys.executable, str(REPO / "launch.py"), f"--workdir={tmp_path}",
       *[f"--config.{k}={v}" for k, v in TINY.items()], "--config.eval_batch=200"],
      cwd=tmp_path, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  cfg = json.loads((tmp_path / "config.json").read_text())
  assert cfg["data"]["train"] == "sort_of_clevr" and cfg["method"] == "vqa"
  assert "validation: accuracy" in out.stdout and "relational_accuracy" in out.stdout
  # The trained quickstart's attention maps: one PNG per (image, question) pair and relation.
  from mmjax import visualize
  paths = visualize.export(tmp_path, count=1)
  assert sorted(p.name for p in paths) == [
      "example0_0_image_to_question.png", "example0_1_question_to_image.png",
      "example1_0_image_to_question.png", "example1_1_question_to_image.png"]
  assert all(p.stat().st_size > 1000 for p in paths)


def test_attention_relations_slice_each_fusion_layout():
  """Which rows and columns of each sown map belong to which modality (module docstring layouts)."""
  from mmjax import visualize
  cfg = config_lib.load(str(REPO / "configs/av_digits.py:bottleneck")).model
  lengths = {"image": 17, "audio": 41}
  maps = {f"image_encoder/layer_0/self_attention": 0, "audio_encoder/layer_0/self_attention": 1,
          "bottleneck/layer_1/image/self_attention": 2, "bottleneck/layer_1/audio/self_attention": 3}
  rels = {r.title: r for r in visualize.relations(cfg, maps, lengths)}
  assert rels["bottleneck tokens over audio tokens"].layers == [3]
  assert rels["bottleneck tokens over audio tokens"].rows == slice(41, 45)  # 4 bottleneck tokens
  assert rels["image class token over its own tokens"].columns == slice(1, 17)
  cfg = config_lib.load(str(REPO / "configs/av_digits.py:early")).model
  rels = {r.title: r for r in visualize.relations(
      cfg, {f"fusion_encoder/layer_{i}/self_attention": i for i in range(2)}, lengths)}
  audio_to_image = rels["audio tokens over image tokens (early fusion)"]
  assert audio_to_image.layers == [0, 1]
  assert audio_to_image.rows == slice(17, 58) and audio_to_image.columns == slice(1, 17)
