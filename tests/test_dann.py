"""Gradient reversal, DANN's schedules and loss, and a DANN run on real digits."""
import json
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmjax import config as config_lib
from mmjax import methods, train
from mmjax.models import LeNet
from mmjax.models.adversarial import DomainAdversarialNet, reverse_gradient
from mmjax.train import optim

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_reverse_gradient_is_identity_forward_and_minus_coeff_backward():
  x = jnp.array([0.3, -1.2, 2.0])
  f = lambda v: jnp.sum(jnp.sin(v) * v)  # noqa: E731
  np.testing.assert_array_equal(reverse_gradient(x, 0.7), x)
  got = jax.grad(lambda v: f(reverse_gradient(v, 0.7)))(x)
  eps = 1e-3
  numeric = np.array([(f(x + eps * e) - f(x - eps * e)) / (2 * eps) for e in np.eye(3)])
  np.testing.assert_allclose(got, -0.7 * numeric, rtol=1e-3)


def test_reversal_strength_and_learning_rate_follow_the_paper():
  dann = methods.get_method("dann")
  for p in (0.0, 0.1, 0.5, 1.0):
    np.testing.assert_allclose(dann.reversal_strength(p), 2 / (1 + np.exp(-10 * p)) - 1, rtol=1e-6)
  opt = ml_collections.ConfigDict(dict(lr=0.01, schedule="dann", decay_alpha=10.0,
                                       decay_per_step=0.0, decay_beta=0.75, warmup_steps=0))
  sched = optim.schedule(opt, 1000)
  for step in (0, 250, 1000):
    np.testing.assert_allclose(sched(step), 0.01 / (1 + 10 * step / 1000) ** 0.75, rtol=1e-6)


def test_dann_gradients_are_class_minus_lambda_times_domain():
  cfg = config_lib.load(str(REPO / "configs/digits_adapt.py:dann/mnist_usps"))
  dann = methods.get_method("dann")
  model = dann.build_model(cfg)
  rng = np.random.default_rng(0)
  batch = {k: {"image": rng.random((8, 28, 28, 1), dtype=np.float32),
               "label": rng.integers(0, 10, 8).astype(np.int32)} for k in ("source", "target")}
  params = model.init(jax.random.PRNGKey(0), batch["source"]["image"])["params"]
  loss = dann.make_loss(cfg)
  progress = 0.3
  lam = float(dann.reversal_strength(progress))
  key = jax.random.PRNGKey(1)
  total = jax.grad(lambda p: loss(model, p, batch, key, progress)[1]["loss"])(params)
  # The same two losses without any reversal (coefficient -1 makes the layer a plain identity).
  images = jnp.concatenate([batch["source"]["image"], batch["target"]["image"]])

  def parts(p):
    out = model.apply({"params": p}, images, reversal=-1.0)
    ce = -jnp.mean(jax.nn.log_softmax(out["logits"][:8])[jnp.arange(8), batch["source"]["label"]])
    d = jnp.concatenate([jnp.zeros(8), jnp.ones(8)])
    z = out["domain_logits"]
    bce = jnp.mean(jnp.maximum(z, 0) - z * d + jnp.log1p(jnp.exp(-jnp.abs(z))))
    return ce, bce

  g_class = jax.grad(lambda p: parts(p)[0])(params)
  g_domain = jax.grad(lambda p: parts(p)[1])(params)
  for path in ("backbone", "domain_fc1", "domain_head"):
    want = jax.tree.map(
        lambda c, d: c - lam * d if path == "backbone" else c + d, g_class[path], g_domain[path])
    for a, b in zip(jax.tree.leaves(total[path]), jax.tree.leaves(want)):
      np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)


def test_domain_adversarial_net_wraps_any_backbone():
  model = DomainAdversarialNet(backbone=LeNet(num_classes=7), domain_hidden=16, domain_layers=1)
  x = jnp.zeros((3, 28, 28, 1))
  params = model.init(jax.random.PRNGKey(0), x)["params"]
  out = model.apply({"params": params}, x)
  assert out["logits"].shape == (3, 7) and out["domain_logits"].shape == (3,)
  assert set(params) == {"backbone", "domain_fc1", "domain_head"}


def _small(spec, **kw):
  cfg = config_lib.load(str(REPO / spec))
  for k, v in {"train.steps": "20", "train.log_every": "5", "checkpoint.every": "10",
               "data.global_batch": "32", "eval_batch": "1024", **kw}.items():
    config_lib.override(cfg, k, v)
  return cfg


def test_dann_digits_run_preempted_and_resumed_matches_straight_run(tmp_path):
  """Two streams (source, target) resume at their own positions: SIGTERM mid-run, then restart.

  The tll recipe's batch norm (bottleneck and domain classifier) is in it: its running averages
  are checkpointed and restored with the params (else the resumed evaluation would differ), and
  read back for analysis."""
  from mmjax.train import checkpoint
  spec = "configs/digits_adapt.py:dann/usps_mnist/tll"
  overrides = {"train.steps": "40", "train.log_every": "5", "checkpoint.every": "10",
               "data.global_batch": "32", "eval_batch": "1024",
               "adapt.gamma_per_step": "0.25"}  # TLL's warm-up shape, over 40 steps instead of 10,000
  cfg = _small(spec, **overrides)
  assert cfg.model.bottleneck_norm and cfg.adapt.domain_norm
  straight = train.train_and_evaluate(cfg, tmp_path / "a")
  args = [sys.executable, str(REPO / "launch.py"), f"--config={spec}",
          f"--workdir={tmp_path / 'b'}"] + [f"--config.{k}={v}" for k, v in overrides.items()]
  proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
  start = time.time()
  while not (tmp_path / "b/checkpoints/10").is_dir():
    assert proc.poll() is None and time.time() - start < 300
    time.sleep(0.01)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0 and "preempted: saved step" in out, out[-3000:]
  assert not (tmp_path / "b/results.json").exists()
  out = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  resumed = json.loads((tmp_path / "b/results.json").read_text())
  assert resumed["eval"] == straight["eval"]
  final = straight["final_train"]
  assert {"train/domain_loss", "train/class_loss", "train/lambda"} <= set(final)
  gamma = cfg.adapt.gamma + cfg.adapt.gamma_per_step * cfg.train.steps  # 0 + 0.25 * 40 = 10
  np.testing.assert_allclose(final["train/lambda"], np.mean(
      [2 / (1 + np.exp(-gamma * s / 40)) - 1 for s in range(35, 40)]), rtol=1e-6)
  _, model_state, step = checkpoint.read_variables(str(tmp_path / "b"))
  stats = model_state["batch_stats"]
  assert step == 40 and set(stats) == {"backbone", "domain_norm1", "domain_norm2"}
  # 40 updates of 0.9 * old + 0.1 * batch statistics moved the averages off their start (0, 1).
  assert np.abs(stats["backbone"]["fc2_norm"]["mean"]).max() > 1e-3
  assert np.abs(stats["domain_norm1"]["var"] - 1).max() > 1e-3


def test_tll_baselines_share_the_adaptation_rows_recipe():
  """configs/digits.py:<arg>/tll (source only, train on target) trains the same model with the same
  optimizer and schedule as the /tll adaptation rows; only those add the domain classifier's parts."""
  for pair in ("mnist_usps", "usps_mnist"):
    base = config_lib.load(str(REPO / f"configs/digits.py:{pair}/tll"))
    oracle = config_lib.load(str(REPO / f"configs/digits.py:{pair}_oracle/tll"))
    adapt = config_lib.load(str(REPO / f"configs/digits_adapt.py:dann/{pair}/tll"))
    for cfg in (base, oracle):
      assert cfg.model.to_dict() == adapt.model.to_dict() and cfg.optim.to_dict() == adapt.optim.to_dict()
      assert cfg.train.steps == adapt.train.steps == 10000 and cfg.method == "supervised"
    assert oracle.data.train == adapt.data.target != base.data.train
    # Both schedules are TLL's per step, also when the run is longer (TLL trains 50,000 steps).
    longer = config_lib.load_with_overrides(
        str(REPO / f"configs/digits_adapt.py:dann/{pair}/tll"), {"train.steps": "50000"})
    for cfg in (adapt, longer):
      # lr 0.01 (1 + 0.001 i)^-0.75 (TLL's scheduler) at step i, through the engine's "dann" schedule.
      sched = optim.schedule(cfg.optim, cfg.train.steps)
      for i in (0, 1000, 9999, 40000):
        np.testing.assert_allclose(sched(i), 0.01 * (1 + 0.001 * i) ** -0.75, rtol=1e-6)
      # lambda on TLL's WarmStartGradientReverseLayer(alpha=1, lo=0, hi=1, max_iters=1000), which
      # its DomainAdversarialLoss builds: 2 / (1 + exp(-i / 1000)) - 1 at step i. The loss reads it
      # from the logged train/lambda; here its formula with the config's effective gamma.
      gamma = cfg.adapt.gamma + cfg.adapt.gamma_per_step * cfg.train.steps
      for i in (0, 300, 1000, 5000):
        np.testing.assert_allclose(methods.get_method("dann").reversal_strength(
            i / cfg.train.steps, gamma), 2 / (1 + np.exp(-i / 1000)) - 1, rtol=1e-6)
  with pytest.raises(ValueError, match="unknown digits arg"):
    config_lib.load(str(REPO / "configs/digits.py:mnist_usps/ttl"))


def test_dann_without_target_is_a_clear_error():
  cfg = _small("configs/digits.py:mnist_usps", method="dann")
  with pytest.raises(ValueError, match="config.data.target"):
    methods.get_method("dann").streams(cfg)


def test_amazon_nn_and_dann_train_on_count_features(tmp_path):
  """The shallow network of the DANN paper on real reviews (books -> dvd), a few hundred steps."""
  for method in ("nn", "dann"):
    cfg = config_lib.load(str(REPO / f"configs/amazon.py:{method}/books_dvd"))
    for k, v in {"train.steps": "300", "train.log_every": "100", "checkpoint.every": "300",
                 "data.global_batch": "32"}.items():
      config_lib.override(cfg, k, v)
    res = train.train_and_evaluate(cfg, tmp_path / method)
    assert res["eval"]["target_test"]["n"] == 3586
    # Sentiment from counts is well above chance after 300 steps (published NN: 79.0).
    assert res["eval"]["target_test"]["accuracy"] > 0.6
    if method == "dann":
      assert res["final_train"]["train/lambda"] < 0.1
