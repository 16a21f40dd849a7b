"""Meta-learning: MAML's gradients against references, episodes, the meta trainer, the meta configs."""
import functools
import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from mmjax import config as config_lib
from mmjax import models
from mmjax.data import episodes, load_split, sinusoid
from mmjax.methods import maml, supervised
from mmjax.train import meta_trainer

REPO = pathlib.Path(__file__).resolve().parents[1]


class TinyNet(nn.Module):
  """2 inputs -> 4 tanh -> 3 logits, in the input's dtype (float64 for finite differences)."""

  @nn.compact
  def __call__(self, x, train=False):
    del train
    h = jnp.tanh(nn.Dense(4, dtype=x.dtype, param_dtype=x.dtype, name="fc1")(x))
    return {"logits": nn.Dense(3, dtype=x.dtype, param_dtype=x.dtype, name="head")(h)}


def tiny_config(algorithm="maml", inner_steps=2, inner_lr=0.3):
  cfg = config_lib.load(str(REPO / "configs/sinusoid.py:maml"))
  with cfg.unlocked():
    cfg.meta.loss = "cross_entropy"
    cfg.meta.algorithm = algorithm
    cfg.meta.inner_steps = inner_steps
    cfg.meta.inner_lr = inner_lr
  return cfg


def tiny_setup(cfg, tasks=3, dtype=np.float32):
  """TinyNet, its meta params and a meta-batch of random 3-way tasks."""
  model = TinyNet()
  rng = np.random.default_rng(0)
  batch = lambda n: {"x": rng.normal(size=(tasks, n, 2)).astype(dtype),
                     "label": rng.integers(0, 3, size=(tasks, n)).astype(np.int32)}
  data = {"support": batch(6), "query": batch(5)}
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 2), dtype))["params"]
  return model, maml.init_meta_params(cfg, params), data


def _meta_objective(cfg, model, meta_params, data):
  """Mean over tasks of the query loss after adaptation, written out without make_meta_grad."""
  loss_fn = functools.partial(maml.batch_loss, model, loss="cross_entropy", input_key="x")
  lr = meta_params.get("inner_lr", cfg.meta.inner_lr)
  total = 0.0
  for t in range(data["support"]["x"].shape[0]):
    task = jax.tree.map(lambda v: v[t], data)
    adapted = maml.inner_adapt(loss_fn, meta_params["model"], task["support"], cfg.meta.inner_steps,
                               lr)
    total += loss_fn(adapted, task["query"])[0]
  return total / data["support"]["x"].shape[0]


@pytest.mark.parametrize("algorithm", ["maml", "metasgd"])
def test_second_order_meta_gradient_matches_central_differences(algorithm):
  with jax.enable_x64(True):
    cfg = tiny_config(algorithm)
    model, meta_params, data = tiny_setup(cfg, dtype=np.float64)
    grads, _ = jax.jit(maml.make_meta_grad(cfg, model))(meta_params, data)
    leaves, tree = jax.tree.flatten(meta_params)
    rng = np.random.default_rng(1)
    objective = jax.jit(lambda mp: _meta_objective(cfg, model, mp, data))
    for _ in range(3):
      direction = jax.tree.unflatten(tree, [rng.normal(size=l.shape) for l in leaves])
      eps = 1e-5
      plus = objective(jax.tree.map(lambda p, d: p + eps * d, meta_params, direction))
      minus = objective(jax.tree.map(lambda p, d: p - eps * d, meta_params, direction))
      numeric = (plus - minus) / (2 * eps)
      analytic = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grads),
                                                    jax.tree.leaves(direction)))
      np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-9)
    # The first-order gradient must differ, or this test could not tell the two apart.
    fo, _ = maml.make_meta_grad(tiny_config("fomaml"), model)({"model": meta_params["model"]},
                                                              data)
    diff = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(fo["model"]),
                                                          jax.tree.leaves(grads["model"])))
    assert diff > 1e-4


def test_first_order_meta_gradient_is_the_query_gradient_at_the_adapted_params():
  cfg = tiny_config("fomaml")
  model, meta_params, data = tiny_setup(cfg)
  grads, metrics = jax.jit(maml.make_meta_grad(cfg, model))(meta_params, data)
  loss_fn = functools.partial(maml.batch_loss, model, loss="cross_entropy", input_key="x")

  @jax.jit
  def by_hand(task):
    params = meta_params["model"]
    for _ in range(cfg.meta.inner_steps):  # plain SGD written out
      g = jax.grad(lambda p: loss_fn(p, task["support"])[0])(params)
      params = jax.tree.map(lambda p, g: p - 0.3 * g, params, g)
    return (jax.grad(lambda p: loss_fn(p, task["query"])[0])(params),
            loss_fn(params, task["query"])[0])

  expected, losses = zip(*[by_hand(jax.tree.map(lambda v: v[t], data)) for t in range(3)])
  expected = jax.tree.map(lambda *g: sum(g) / 3, *expected)
  for a, b in zip(jax.tree.leaves(grads["model"]), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(metrics["loss"], np.mean(losses), rtol=1e-5)


def test_zero_inner_steps_is_ordinary_training_on_the_query_set():
  cfg = tiny_config("maml", inner_steps=0)
  model, meta_params, data = tiny_setup(cfg)
  grads, _ = maml.make_meta_grad(cfg, model)(meta_params, data)
  flat = {"train": jax.tree.map(lambda v: v.reshape((-1,) + v.shape[2:]), data["query"])}
  expected, _ = jax.grad(supervised.loss_fn, argnums=1, has_aux=True)(
      model, meta_params["model"], flat, jax.random.PRNGKey(0), 0.0, input_key="x")
  for a, b in zip(jax.tree.leaves(grads["model"]), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_anil_adapts_only_the_head_and_reptile_steps_toward_the_adapted_params():
  cfg = tiny_config("anil", inner_steps=1)
  model, meta_params, data = tiny_setup(cfg)
  adapt, _ = maml.make_adapt(cfg, model)
  task = jax.tree.map(lambda v: v[0], data)
  adapted = adapt(meta_params, meta_params["model"], task["support"], 1)
  np.testing.assert_array_equal(adapted["fc1"]["kernel"], meta_params["model"]["fc1"]["kernel"])
  assert not np.allclose(adapted["head"]["kernel"], meta_params["model"]["head"]["kernel"])

  cfg = tiny_config("reptile", inner_steps=2)
  grads, _ = maml.make_meta_grad(cfg, model)(meta_params, data)
  adapt, _ = maml.make_adapt(cfg, model)
  mean_adapted = jax.tree.map(lambda *p: sum(p) / 3, *[
      adapt(meta_params, meta_params["model"], jax.tree.map(lambda v: v[t], data)["support"], 2)
      for t in range(3)])
  for g, p, a in zip(*(jax.tree.leaves(x) for x in (grads["model"], meta_params["model"],
                                                      mean_adapted))):
    np.testing.assert_allclose(g, p - a, rtol=1e-5, atol=1e-7)


def test_vmap_lax_map_and_unrolled_tasks_agree():
  cfg = tiny_config("maml")
  model, meta_params, data = tiny_setup(cfg)
  by_vmap = maml.make_meta_grad(cfg, model)(meta_params, data)
  for how in ("map", "unroll"):
    with cfg.unlocked():
      cfg.meta.task_map = how
    other = maml.make_meta_grad(cfg, model)(meta_params, data)
    for a, b in zip(jax.tree.leaves(by_vmap), jax.tree.leaves(other)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_conv4_shapes_and_batch_statistics_norm():
  x = np.random.default_rng(0).random((6, 28, 28, 1)).astype(np.float32)
  for pool, features in (("stride", 2 * 2 * 8), ("max", 1 * 1 * 8)):
    model = models.build_model(config_lib.base_config().model.__class__(
        {"name": "conv4", "num_classes": 5, "pool": pool, "width": 8}))
    params = model.init(jax.random.PRNGKey(0), x)["params"]
    out = model.apply({"params": params}, x)
    assert out["features"].shape == (6, features) and out["logits"].shape == (6, 5)
  norm = models.norms.BatchStatsNorm(epsilon=models.conv4.MAML_NORM_EPSILON)  # conv4's
  y = norm.apply(norm.init(jax.random.PRNGKey(0), x), x * 3 + 1)
  z = (x * 3 + 1 - (x * 3 + 1).mean((0, 1, 2))) / np.sqrt((x * 3 + 1).var((0, 1, 2)) + 1e-3)
  np.testing.assert_allclose(y, z, rtol=1e-4, atol=1e-4)


def test_summarize_eval_mean_and_confidence_interval():
  acc = np.array([[0.2, 0.8], [0.4, 1.0], [0.0, 0.6]])
  out = maml.summarize_eval({"accuracy": acc})
  assert out["accuracy"] == pytest.approx(0.8) and out["accuracy_step0"] == pytest.approx(0.2)
  assert out["accuracy_ci95"] == pytest.approx(1.96 * 0.2 / np.sqrt(3))
  assert out["n"] == 3


def test_sampler_tasks_have_distinct_classes_disjoint_sets_and_are_deterministic():
  # Example i of class c is a constant image of value i, so every example is identifiable.
  labels = np.repeat(np.arange(12), 7)
  images = np.broadcast_to(np.arange(84, dtype=np.uint8)[:, None, None, None], (84, 3, 3, 1))
  sampler = episodes.EpisodeSampler({"image": images.copy(), "label": labels}, ways=5, shots=2,
                                    queries=3, rotate_classes=False)
  seen = set()
  for step in range(4):
    for index in range(3):
      task = sampler.task(seed=7, step=step, index=index)
      ids = {p: np.rint(task[p]["image"][:, 0, 0, 0] * 255).astype(int) for p in task}
      assert not set(ids["support"]) & set(ids["query"])
      classes = {p: labels[ids[p]] for p in ids}
      assert len(set(classes["support"])) == 5
      for p, per_class in (("support", 2), ("query", 3)):
        np.testing.assert_array_equal(task[p]["label"], np.repeat(np.arange(5), per_class))
        # Task label j is one dataset class throughout support and query.
        assert all(len(set(classes[p][task[p]["label"] == j])) == 1 for j in range(5))
      assert classes["support"][0] == classes["query"][0]
      seen.add(tuple(classes["support"][::2]))
      again = sampler.task(seed=7, step=step, index=index)
      np.testing.assert_array_equal(again["query"]["image"], task["query"]["image"])
  assert len(seen) == 12  # fresh classes and order per task
  with pytest.raises(ValueError, match="meta.shots"):
    episodes.EpisodeSampler({"image": images, "label": labels}, ways=5, shots=4, queries=4)


def test_omniglot_split_and_rotated_classes():
  train = load_split("omniglot", "train")
  test = load_split("omniglot", "test")
  assert train["image"].shape == (24000, 28, 28, 1) and test["image"].shape == (8460, 28, 28, 1)
  assert not set(train["label"]) & set(test["label"])
  assert len(set(train["label"])) == 1200 and len(set(test["label"])) == 423
  ink = train["image"].mean() / 255
  assert 0.03 < ink < 0.3  # strokes are ink (255) on a 0 background
  sampler = episodes.EpisodeSampler(train, ways=5, shots=1, queries=2, rotate_classes=True)
  assert sampler.num_classes == 4800
  chosen = sampler.task_indices(0, 3, 1)
  task = sampler.task(0, 3, 1)
  for j, (_, rotation, idx) in enumerate(chosen):
    expected = np.rot90(train["image"][idx[0]], rotation, axes=(0, 1)).astype(np.float32) / 255
    np.testing.assert_array_equal(task["support"]["image"][j], expected)
  assert {r for step in range(5) for _, r, _ in sampler.task_indices(0, step, 0)} == {0, 1, 2, 3}


def test_sinusoid_tasks_follow_the_paper_ranges():
  source = sinusoid.SinusoidTasks(shots=10, queries=10)
  for index in range(20):
    amplitude, phase, _ = source.parameters(0, 5, index)
    task = source.task(0, 5, index)
    assert 0.1 <= amplitude <= 5.0 and 0 <= phase <= np.pi
    for part in task.values():
      assert part["x"].shape == (10, 1) and np.all(np.abs(part["x"]) <= 5)
      np.testing.assert_allclose(part["label"], amplitude * np.sin(part["x"] - phase), rtol=1e-5,
                                 atol=1e-5)


def _sinusoid_run_config(steps=6):
  return config_lib.load_with_overrides(str(REPO / "configs/sinusoid.py:maml_cpu"), {
      "train.steps": str(steps), "train.log_every": "3", "checkpoint.every": "3",
      "meta.meta_batch": "8", "meta.test_tasks": "10", "meta.test_inner_steps": "2",
      "eval_every": "3"})


def test_meta_trainer_resumes_exactly_on_four_devices(tmp_path):
  assert jax.device_count() == 4
  full = meta_trainer.train_and_evaluate(_sinusoid_run_config(), tmp_path / "full")
  resumed_dir = tmp_path / "resumed"
  meta_trainer.train_and_evaluate(_sinusoid_run_config(), resumed_dir)
  # Forget everything after step 3, as if the run had been killed then.
  shutil.rmtree(resumed_dir / "checkpoints" / "6")
  (resumed_dir / "results.json").unlink()
  resumed = meta_trainer.train_and_evaluate(_sinusoid_run_config(), resumed_dir)
  assert resumed["eval"] == full["eval"]
  rows = lambda d: [json.loads(r) for r in (d / "metrics.jsonl").read_text().splitlines()]
  assert rows(resumed_dir) == rows(tmp_path / "full")
  assert full["eval"]["meta_test"]["n"] == 10
  # A finished workdir returns its results without running.
  assert meta_trainer.train_and_evaluate(_sinusoid_run_config(), resumed_dir) == resumed


def test_meta_trainer_omniglot_smoke(tmp_path):
  cfg = config_lib.load_with_overrides(str(REPO / "configs/omniglot_maml.py:5w1s_anil_cpu"), {
      "train.steps": "2", "train.log_every": "1", "meta.meta_batch": "4", "meta.queries": "2",
      "meta.test_tasks": "6", "model.width": "8"})
  results = meta_trainer.train_and_evaluate(cfg, tmp_path)
  test = results["eval"]["meta_test"]
  assert test["n"] == 6 and 0 <= test["accuracy"] <= 1
  assert set(test) >= {"accuracy_step0", "accuracy_step3", "accuracy_ci95", "loss"}


def test_unknown_meta_key_and_bad_algorithm_are_named():
  cfg = config_lib.load(str(REPO / "configs/omniglot_maml.py:5w1s"))
  with pytest.raises(config_lib.ConfigError, match="meta.ways"):
    config_lib.override(cfg, "meta.wayz", "5")
  with cfg.unlocked():
    cfg.meta.algorithm = "mamll"
  with pytest.raises(ValueError, match="fomaml"):
    maml.check_config(cfg, {"head": {}})


@pytest.mark.parametrize("name", ["omniglot_maml", "sinusoid"])
def test_every_meta_config_builds_its_meta_params(name):
  module = config_lib.load_module(REPO / f"configs/{name}.py")
  for arg in module.ARGS:
    cfg = config_lib.load(f"{REPO / 'configs' / name}.py:{arg}")
    assert cfg.trainer == "meta" and cfg.method == "maml"
    assert cfg.meta.test_tasks >= 600  # the meta-test size, at every budget
    model = maml.build_model(cfg)
    shape = (1, 28, 28, 1) if cfg.meta.dataset == "omniglot" else (1, 1)
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(shape)))["params"]
    maml.check_config(cfg, params)
    meta_params = jax.eval_shape(functools.partial(maml.init_meta_params, cfg), params)
    assert ("inner_lr" in meta_params) == (cfg.meta.algorithm == "metasgd")
