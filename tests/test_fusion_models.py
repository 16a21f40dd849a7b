"""The fusion Transformer's strategies (forward, attention maps, a few optax steps), MBT's bottleneck
isolation by exact zero gradients, every tokenizer, the dual encoder, InfoNCE and Recall@K against
hand-made references, and the CNN+MLP VQA baseline."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from mmjax import models
from mmjax.losses.contrastive import recall_at_k, symmetric_info_nce, two_way_recall
from mmjax.models.dual_encoder import MAX_LOGIT_SCALE
from mmjax.models.fusion import FUSIONS, FusionTransformer
from mmjax.models.tokenizers import CnnTokenizer
from mmjax.models.norms import BatchStatsNorm

TINY = dict(width=16, depth=1, num_heads=2, mlp_dim=32, patch_size=7)


def _image_question_batch(batch=8, seed=0):
  rng = np.random.default_rng(seed)
  inputs = {"image": jnp.asarray(rng.uniform(size=(batch, 14, 14, 1)), jnp.float32),
            "question": jnp.asarray(rng.integers(0, 2, size=(batch, 11)), jnp.float32)}
  return inputs, jnp.asarray(rng.integers(0, 4, size=batch))


def _train_steps(model, params, inputs, labels, steps=6, lr=3e-3):
  """Softmax cross-entropy losses before each of `steps` Adam steps (no dropout: deterministic)."""
  tx = optax.adam(lr)

  def loss_fn(params):
    logits = model.apply({"params": params}, inputs, train=True)["logits"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  @jax.jit
  def step(params, opt_state):
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state = tx.init(params)
  losses = []
  for _ in range(steps):
    params, opt_state, loss = step(params, opt_state)
    losses.append(float(loss))
  return losses


# Attention maps per strategy for 14x14 images in 7x7 patches (4 tokens + CLS) and the question
# vector (1 token + CLS); depth 1, but 2 with fusion_layer=1 and 3 tokens for the bottleneck:
# name -> [q_len, k_len] of the weights [B, heads, q_len, k_len].
EXPECTED_MAPS = {
    "concat": {"image_encoder/layer_0/self_attention": (5, 5),
               "question_encoder/layer_0/self_attention": (2, 2)},
    "early": {"fusion_encoder/layer_0/self_attention": (7, 7)},
    "cross_attention": {"image_to_question/layer_0/cross_attention": (5, 2),
                        "question_to_image/layer_0/cross_attention": (2, 5)},
    "bottleneck": {"image_encoder/layer_0/self_attention": (5, 5),
                   "question_encoder/layer_0/self_attention": (2, 2),
                   "bottleneck/layer_1/image/self_attention": (8, 8),
                   "bottleneck/layer_1/question/self_attention": (5, 5)},
}
EXPECTED_MAPS["weighted_sum"] = EXPECTED_MAPS["late"] = EXPECTED_MAPS["concat"]


@pytest.mark.parametrize("fusion", FUSIONS)
def test_every_fusion_strategy_runs_sows_named_attention_maps_and_trains(fusion):
  inputs, labels = _image_question_batch()
  depth = 2 if fusion == "bottleneck" else 1
  model = FusionTransformer(modalities=("image", "question"), tokenizers=("patch", "vector"),
                            fusion=fusion, num_classes=4, fusion_layer=1,
                            bottleneck_tokens=3, **{**TINY, "depth": depth})
  variables = jax.jit(model.init)(jax.random.key(0), inputs)
  out, state = jax.jit(functools.partial(model.apply, train=False, mutable=["intermediates"]))(
      variables, inputs)
  assert out["logits"].shape == (8, 4) and out["features"].shape == (8, 16)
  assert out["logits"].dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out["logits"])))
  maps = {"/".join(str(k.key) for k in path[:-2]): weights
          for path, weights in jax.tree_util.tree_flatten_with_path(state["intermediates"])[0]}
  assert {name: w.shape[2:] for name, w in maps.items()} == EXPECTED_MAPS[fusion]
  for weights in maps.values():
    assert weights.shape[:2] == (8, 2)
    np.testing.assert_allclose(jnp.sum(weights, -1), 1.0, atol=1e-5)  # no padding here
  losses = _train_steps(model, variables["params"], inputs, labels)
  assert losses[-1] < 0.9 * losses[0], losses


def _gelu(x):  # flax's nn.gelu (approximate=True)
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def _layer_norm(x, scale, bias, eps=1e-6):
  mean = x.mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps) * scale + bias


@pytest.mark.parametrize("fusion", FUSIONS)
def test_each_fusion_rule_matches_a_numpy_reference(fusion):
  """The features and logits recomputed in float64 numpy from the encoders' outputs and the
  fusion's own params, by each strategy's formula (README's fusion table)."""
  inputs, _ = _image_question_batch()
  depth = 2 if fusion == "bottleneck" else 1
  model = FusionTransformer(modalities=("image", "question"), tokenizers=("patch", "vector"),
                            fusion=fusion, num_classes=4, fusion_layer=1,
                            bottleneck_tokens=3, **{**TINY, "depth": depth})
  params = jax.tree.map(np.asarray, model.init(jax.random.key(1), inputs)["params"])
  if fusion == "weighted_sum":  # away from the uniform init, so the weights matter
    params["modality_weights"] = np.asarray([0.7, -0.4], np.float32)
  out = model.apply({"params": params}, inputs)
  layer = {k: np.asarray(v, np.float64) for k, v in
           _layer_outputs(model, {"params": params}, inputs).items()}
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  dense = lambda x, name: x @ p[name]["kernel"] + p[name]["bias"]
  mlp = lambda x: dense(_gelu(dense(x, "fusion_fc1")), "fusion_fc2")
  cls = lambda name: layer[f"{name}/__call__/0"][:, 0]
  logits = None
  if fusion == "concat":
    features = mlp(np.concatenate([cls("image_encoder"), cls("question_encoder")], -1))
  elif fusion == "weighted_sum":
    w = np.exp([0.7, -0.4]) / np.exp([0.7, -0.4]).sum()
    features = w[0] * cls("image_encoder") + w[1] * cls("question_encoder")
  elif fusion == "late":
    features = (cls("image_encoder") + cls("question_encoder")) / 2
    logits = (dense(cls("image_encoder"), "image_head")
              + dense(cls("question_encoder"), "question_head")) / 2
  elif fusion == "early":  # CLS of the image at 0, of the question after the image's 5 tokens
    tokens = layer["fusion_encoder/__call__/0"]
    assert tokens.shape[1] == 7
    features = (tokens[:, 0] + tokens[:, 5]) / 2
  elif fusion == "cross_attention":
    features = mlp(np.concatenate([cls("image_to_question"), cls("question_to_image")], -1))
  elif fusion == "bottleneck":  # each modality's CLS after the fusion layers, layer-normed, averaged
    features = np.mean([_layer_norm(layer[f"bottleneck/__call__/0/{m}"][:, 0],
                                    p[f"{m}_encoder_norm"]["scale"], p[f"{m}_encoder_norm"]["bias"])
                        for m in ("image", "question")], axis=0)
  else:
    raise AssertionError(f"no reference for fusion {fusion!r}: add its rule here")
  if logits is None:
    logits = dense(features, "head")
  np.testing.assert_allclose(out["features"], features, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out["logits"], logits, rtol=1e-4, atol=1e-5)


def _layer_outputs(model, variables, inputs):
  """Every module's output, from flax's capture_intermediates, by its '/'-joined path."""
  _, state = model.apply(variables, inputs, capture_intermediates=True, mutable=["intermediates"])
  flat = jax.tree_util.tree_flatten_with_path(state["intermediates"])[0]
  return {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): value
          for path, value in flat}


def test_bottleneck_modalities_are_independent_before_the_fusion_layer():
  inputs, _ = _image_question_batch(batch=2)
  model = FusionTransformer(fusion="bottleneck", fusion_layer=1, bottleneck_tokens=3,
                            **{**TINY, "depth": 3})
  variables = model.init(jax.random.key(1), inputs)

  def tokens_per_layer(image, question):
    """{modality: [its tokens after layer 0, 1, 2]}."""
    layers = _layer_outputs(model, variables, {"image": image, "question": question})
    # Per-modality layers return m's tokens; fusion layers return ({m: tokens}, bottleneck).
    return {m: [layers[f"{m}_encoder/layer_0/__call__/0"]] +
               [layers[f"bottleneck/layer_{i}/__call__/0/0/{m}"] for i in (1, 2)]
            for m in ("image", "question")}

  # jacrev of the jitted function; jax.jit(jax.jacrev(...)) of these six outputs gave wrong,
  # non-zero cross terms on CPU (jax 0.10.2), where forward perturbations change nothing.
  jacobians = jax.jacrev(jax.jit(tokens_per_layer), argnums=(0, 1))(inputs["image"],
                                                                    inputs["question"])
  for of, wrt in (("image", 1), ("question", 0)):
    across = [np.asarray(layer[wrt]) for layer in jacobians[of]]
    for i in (0, 1):  # layer 1 = L_f sees only the initial (learned) bottleneck tokens
      assert np.all(across[i] == 0.0), (of, i)
    assert np.abs(across[2]).max() > 1e-6, of  # after one exchange, information flows
    assert np.abs(np.asarray(jacobians[of][0][1 - wrt])).max() > 1e-3  # its own input matters
  # The same check catches early fusion, where modalities mix from the first layer.
  early = FusionTransformer(fusion="early", **TINY)
  early_vars = early.init(jax.random.key(1), inputs)
  image_tokens = lambda q: _layer_outputs(early, early_vars, {**inputs, "question": q})[
      "fusion_encoder/layer_0/__call__/0"][:, :5]
  assert np.abs(np.asarray(jax.jacrev(jax.jit(image_tokens))(inputs["question"]))).max() > 1e-6


@pytest.mark.parametrize("kind,inputs,num_tokens", [
    ("cnn", np.random.default_rng(0).uniform(size=(3, 20, 20, 3)), 9),
    ("cnn16", np.random.default_rng(0).uniform(size=(3, 75, 75, 3)), 25),
    ("patch", np.random.default_rng(0).uniform(size=(3, 20, 20, 3)), 9),
    ("audio", np.random.default_rng(0).normal(size=(3, 8000)) * 0.1, 32),
    ("strokes", np.concatenate([np.random.default_rng(0).normal(size=(3, 10, 3)),
                                np.zeros((3, 6, 3))], axis=1), 16),
    ("tokens", np.array([[5, 3, 9, 0, 0], [1, 2, 0, 0, 0], [7, 7, 7, 7, 7]]), 5),
    ("bow", np.random.default_rng(0).poisson(1.0, size=(3, 50)), 1),
    ("vector", np.random.default_rng(0).uniform(size=(3, 11)), 1),
])
def test_every_tokenizer_feeds_the_fusion_transformer(kind, inputs, num_tokens):
  batch = {"x": jnp.asarray(inputs, jnp.int32 if kind == "tokens" else jnp.float32),
           "vector": jnp.ones((3, 4))}
  model = FusionTransformer(modalities=("x", "vector"), tokenizers=(kind, "vector"), fusion="early",
                            vocab_size=10, **{**TINY, "patch_size": 8})
  variables = jax.jit(model.init)(jax.random.key(0), batch)
  out, state = jax.jit(functools.partial(model.apply, mutable=["intermediates"]))(variables, batch)
  assert out["logits"].shape == (3, 10) and bool(jnp.all(jnp.isfinite(out["logits"])))
  weights = state["intermediates"]["fusion_encoder"]["layer_0"]["self_attention"][
      "attention_weights"][0]
  assert weights.shape == (3, 2, num_tokens + 3, num_tokens + 3)
  if kind in ("strokes", "tokens"):  # padded points and ids get no attention
    padded = {"strokes": np.zeros((3, 16), bool), "tokens": np.asarray(inputs) == 0}[kind]
    if kind == "strokes":
      padded[:, 10:] = True
    key_is_padding = np.concatenate([np.zeros((3, 1), bool), padded, np.zeros((3, 2), bool)], 1)
    assert np.all(np.asarray(weights)[np.broadcast_to(key_is_padding[:, None, None, :],
                                                       weights.shape)] == 0)


@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_cnn_tokenizer_norm_matches_a_numpy_reference(norm):
  """The first hidden conv's output, normalised as `norm` says and passed through ReLU, feeds conv1."""
  image = jnp.asarray(np.random.default_rng(0).uniform(size=(4, 20, 20, 3)), jnp.float32)
  model = CnnTokenizer(width=8, layers=3, norm=norm)
  variables = model.init(jax.random.key(0), image)
  params = variables["params"]
  params = {**params, "norm0": jax.tree.map(
      lambda p: p + jnp.asarray(np.random.default_rng(1).normal(size=p.shape), jnp.float32),
      params["norm0"])}  # scale and bias away from 1 and 0 so that both are exercised
  _, state = model.apply({"params": params}, image, capture_intermediates=True)
  conv0 = np.asarray(state["intermediates"]["conv0"]["__call__"][0], np.float64)
  axes = (0, 1, 2) if norm == "batch" else (3,)
  mean, var = conv0.mean(axes, keepdims=True), conv0.var(axes, keepdims=True)
  expected = np.maximum((conv0 - mean) / np.sqrt(var + (1e-5 if norm == "batch" else 1e-6))
                        * np.asarray(params["norm0"]["scale"]) + np.asarray(params["norm0"]["bias"]),
                        0.0)
  conv1_input = {}
  def capture(next_fun, args, kwargs, context):
    if context.module.name == "conv1" and context.method_name == "__call__":
      conv1_input["x"] = args[0]
    return next_fun(*args, **kwargs)
  with nn.intercept_methods(capture):
    model.apply({"params": params}, image)
  np.testing.assert_allclose(np.asarray(conv1_input["x"]), expected, rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="unknown cnn_norm 'group'"):
    CnnTokenizer(width=8, norm="group").init(jax.random.key(0), image)


def test_condition_on_adds_the_projected_question_to_every_image_token():
  """`concat` keeps the image encoder blind to the question unless condition_on feeds it in; then
  its input is the image tokens plus condition_image(question token), computed here by hand."""
  inputs, _ = _image_question_batch(batch=3)
  plain = FusionTransformer(fusion="concat", **TINY)
  variables = plain.init(jax.random.key(0), inputs)
  conditioned = plain.clone(condition_on="question")
  cond_vars = conditioned.init(jax.random.key(0), inputs)
  captured = {}

  def capture(next_fun, args, kwargs, context):
    name = context.module.name if context.method_name == "__call__" else None
    if name == "image_encoder":
      captured[name] = args[0]
    out = next_fun(*args, **kwargs)
    if name in ("image_tokenizer", "question_tokenizer"):
      captured[name] = out[0]
    return out
  with nn.intercept_methods(capture):
    conditioned.apply(cond_vars, inputs)
  dense = cond_vars["params"]["condition_image"]
  question_token = np.asarray(captured["question_tokenizer"])[:, 1]  # its one non-class token
  expected = (np.asarray(captured["image_tokenizer"])
              + (question_token @ np.asarray(dense["kernel"]) + np.asarray(dense["bias"]))[:, None])
  np.testing.assert_allclose(np.asarray(captured["image_encoder"]), expected, rtol=1e-5, atol=1e-5)
  # Without conditioning the concat image encoder's CLS ignores the question; with it, it does not.
  cls = lambda m, v: lambda q: _layer_outputs(m, v, {**inputs, "question": q})[  # noqa: E731
      "image_encoder/__call__/0"][:, 0]
  assert np.abs(np.asarray(jax.jacrev(cls(plain, variables))(inputs["question"]))).max() == 0.0
  assert np.abs(np.asarray(jax.jacrev(cls(conditioned, cond_vars))(inputs["question"]))).max() > 1e-6
  with pytest.raises(ValueError, match="condition_on='audio'"):
    plain.clone(condition_on="audio").init(jax.random.key(0), inputs)


def test_models_build_from_flat_config_fields_and_reject_bad_ones():
  config = ml_collections.ConfigDict(dict(
      name="fusion_transformer", modalities=["image", "question"], tokenizers=["patch", "vector"],
      fusion="weighted_sum", num_classes=3, dropout=0.5, **TINY))
  model = models.build_model(config, "bfloat16")
  inputs, _ = _image_question_batch(batch=2)
  variables = model.init(jax.random.key(0), inputs)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  logits = model.apply(variables, inputs)["logits"]
  assert logits.dtype == jnp.float32
  np.testing.assert_array_equal(model.apply(variables, inputs)["logits"], logits)
  dropped = [model.apply(variables, inputs, train=True, rngs={"dropout": jax.random.key(i)})[
      "logits"] for i in range(2)]
  assert np.abs(np.asarray(dropped[0] - dropped[1])).max() > 1e-3  # dropout is on in training
  with pytest.raises(ValueError, match="have no \\['question'\\]"):
    model.apply(variables, {"image": inputs["image"]})
  with pytest.raises(ValueError, match="unknown fusion 'mean'"):
    FusionTransformer(fusion="mean", **TINY).init(jax.random.key(0), inputs)
  with pytest.raises(ValueError, match="unknown tokenizer 'pixels'"):
    FusionTransformer(tokenizers=("pixels", "vector"), **TINY).init(jax.random.key(0), inputs)
  with pytest.raises(ValueError, match="fusion_layer=5"):
    FusionTransformer(fusion="bottleneck", fusion_layer=5, **TINY).init(jax.random.key(0), inputs)


# --- contrastive loss and retrieval ------------------------------------------------------------

def test_symmetric_info_nce_on_hand_made_inputs():
  # Orthonormal pairs with scale 1: each row's logits are (1, 0), so each cross-entropy is
  # -log(e / (e + 1)) = log(1 + 1/e).
  eye = jnp.eye(2)
  np.testing.assert_allclose(symmetric_info_nce(eye, eye, 0.0), np.log1p(np.exp(-1)), rtol=1e-6)
  a = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
  b = np.array([[0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
  scale = 2.0
  s = np.exp(scale) * a @ b.T
  rows = [-np.log(np.exp(s[i, i]) / np.exp(s[i]).sum()) for i in range(3)]
  cols = [-np.log(np.exp(s[i, i]) / np.exp(s[:, i]).sum()) for i in range(3)]
  expected = (np.mean(rows) + np.mean(cols)) / 2
  np.testing.assert_allclose(symmetric_info_nce(jnp.asarray(a), jnp.asarray(b), scale), expected,
                             rtol=1e-5)
  assert not np.isclose(np.mean(rows), np.mean(cols))  # the two directions differ here


def test_recall_at_k_on_a_hand_made_similarity():
  similarity = jnp.asarray([[0.9, 0.1, 0.5, 0.3],    # ranks gallery 0, 2, 3, 1
                            [0.2, 0.8, 0.7, 0.1],    # ranks 1, 2, 0, 3
                            [0.0, 0.3, 0.2, 0.9]])   # ranks 3, 1, 2, 0
  gallery_labels = jnp.asarray([0, 1, 2, 3])
  query_labels = jnp.asarray([0, 2, 0])  # true item at rank 1, 2 and 4
  got = recall_at_k(similarity, query_labels, gallery_labels, ks=(1, 2, 3, 10))
  np.testing.assert_allclose([got[k] for k in (1, 2, 3, 10)], [1 / 3, 2 / 3, 2 / 3, 1.0])
  # Class-level: several gallery items share a label.
  got = recall_at_k(similarity, jnp.asarray([1, 1, 0]), jnp.asarray([0, 1, 1, 1]), ks=(1, 2))
  np.testing.assert_allclose([got[1], got[2]], [1 / 3, 2 / 3])

  emb = jnp.eye(3)
  both = two_way_recall(emb, emb[::-1], jnp.arange(3), jnp.asarray([2, 1, 0]), ("image", "audio"),
                        ks=(1,))
  assert both == {"image_to_audio_R@1": 1.0, "audio_to_image_R@1": 1.0}


def test_dual_encoder_embeddings_temperature_and_training():
  rng = np.random.default_rng(0)
  inputs = {"image": jnp.asarray(rng.uniform(size=(6, 28, 28, 1)), jnp.float32),
            "strokes": jnp.asarray(rng.normal(size=(6, 12, 3)), jnp.float32)}
  config = ml_collections.ConfigDict(dict(
      name="dual_encoder", modalities=["image", "strokes"], tokenizers=["patch", "strokes"],
      embed_dim=8, **TINY))
  model = models.build_model(config)
  params = model.init(jax.random.key(0), inputs)["params"]
  out = model.apply({"params": params}, inputs)
  for m in ("image", "strokes"):
    assert out["embeddings"][m].shape == (6, 8)
    np.testing.assert_allclose(jnp.linalg.norm(out["embeddings"][m], axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(out["logit_scale"], np.log(1 / 0.07), rtol=1e-6)
  clipped = model.apply({"params": {**params, "logit_scale": jnp.asarray(9.0)}}, inputs)
  np.testing.assert_allclose(clipped["logit_scale"], np.log(100.0), rtol=1e-6)
  assert MAX_LOGIT_SCALE == pytest.approx(np.log(100.0))

  def loss_fn(params):
    out = model.apply({"params": params}, inputs, train=True)
    return symmetric_info_nce(out["embeddings"]["image"], out["embeddings"]["strokes"],
                              out["logit_scale"])

  tx = optax.adam(3e-3)

  @jax.jit
  def step(params, opt_state):
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state = tx.init(params)
  losses = []
  for _ in range(6):
    params, opt_state, loss = step(params, opt_state)
    losses.append(float(loss))
  assert losses[-1] < 0.9 * losses[0], losses


# --- the CNN+MLP VQA baseline --------------------------------------------------------------------

def test_batch_stat_norm_normalises_each_channel_over_the_batch():
  x = np.random.default_rng(0).normal(3.0, 2.0, size=(4, 5, 5, 6)).astype(np.float32)
  module = BatchStatsNorm()
  variables = module.init(jax.random.key(0), jnp.asarray(x))
  y = np.asarray(module.apply(variables, jnp.asarray(x)))
  flat = x.reshape(-1, 6).astype(np.float64)
  expected = (flat - flat.mean(0)) / np.sqrt(flat.var(0) + 1e-5)
  np.testing.assert_allclose(y.reshape(-1, 6), expected, rtol=1e-4, atol=1e-4)


def test_cnn_mlp_vqa_matches_the_relation_network_baseline_shapes_and_trains():
  rng = np.random.default_rng(0)
  inputs = {"image": jnp.asarray(rng.uniform(size=(8, 75, 75, 3)), jnp.float32),
            "question": jnp.asarray(rng.integers(0, 2, size=(8, 11)), jnp.float32)}
  model = models.build_model(ml_collections.ConfigDict(dict(name="cnn_mlp_vqa", num_classes=10)))
  params = model.init(jax.random.key(0), inputs)["params"]
  # 75 -> 38 -> 19 -> 10 -> 5 with 24 channels, then the 11-bit question (Santoro et al. 2017).
  assert params["fc1"]["kernel"].shape == (5 * 5 * 24 + 11, 256)
  assert [params[f"conv{i}"]["kernel"].shape[-1] for i in range(4)] == [24] * 4
  out = model.apply({"params": params}, inputs)
  assert out["logits"].shape == (8, 10) and out["features"].shape == (8, 256)
  model = model.clone(dropout=0.0)  # deterministic losses
  losses = _train_steps(model, params, inputs, jnp.asarray(rng.integers(0, 10, size=8)), steps=4,
                        lr=1e-3)
  assert losses[-1] < 0.9 * losses[0], losses
  with pytest.raises(ValueError, match="input_key='image,question'"):
    model.apply({"params": params}, inputs["image"])

