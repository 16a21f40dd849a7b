"""The model and the compiled update: shapes, jit-on-a-mesh vs a plain step, pmap vs jit, freezing."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmjax import methods
from mmjax.models import LeNet
from mmjax.train import optim, steps


def _batch(n, seed=0):
  rng = np.random.default_rng(seed)
  return {"image": rng.random((n, 28, 28, 1), dtype=np.float32),
          "label": rng.integers(0, 10, n).astype(np.int32)}


def _optim(**kw):
  c = ml_collections.ConfigDict(dict(name="sgd", lr=0.05, momentum=0.9, nesterov=False,
                                     weight_decay=0.0, schedule="constant", warmup_steps=0,
                                     grad_clip_norm=0.0))
  c.update(kw)
  return c


def test_lenet_shapes_and_parameter_count():
  model = LeNet()
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 28, 28, 1)))["params"]
  out = model.apply({"params": params}, jnp.zeros((5, 28, 28, 1)))
  assert out["logits"].shape == (5, 10) and out["features"].shape == (5, 100)
  # conv 32 5x5 -> pool -> conv 48 5x5 -> pool (4x4x48 = 768) -> 100 -> 100 -> 10
  expected = (25 * 32 + 32) + (25 * 32 * 48 + 48) + (768 * 100 + 100) + (100 * 100 + 100) + 1010
  assert sum(x.size for x in jax.tree.leaves(params)) == expected


def _init(model, tx):
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))["params"]
  return steps.new_state(params, tx)


def _reference_sgd(model, params, batches, lr, momentum):
  """Heavy-ball SGD written out by hand, on one device, no optax."""
  velocity = jax.tree.map(jnp.zeros_like, params)
  losses = []
  for b in batches:
    def loss(p):
      logits = model.apply({"params": p}, b["image"])["logits"]
      logp = jax.nn.log_softmax(logits)
      return -jnp.mean(jnp.take_along_axis(logp, b["label"][:, None], 1))
    value, g = jax.value_and_grad(loss)(params)
    velocity = jax.tree.map(lambda v, gi: momentum * v + gi, velocity, g)
    params = jax.tree.map(lambda p, v: p - lr * v, params, velocity)
    losses.append(float(value))
  return params, losses


@pytest.mark.parametrize("mode", ["jit", "pmap"])
def test_sharded_update_matches_hand_written_sgd(mode):
  assert jax.device_count() == 4
  model, method = LeNet(), methods.get_method("supervised")
  tx = optim.make_optimizer(_optim(), 10)
  part = steps.Partitioner(mode)
  update = part.compile_update(steps.make_update(method.loss_fn, model, tx, 10,
                                                 "batch" if mode == "pmap" else None))
  state = _init(model, tx)
  ref_params, ref_losses = _reference_sgd(model, state.params, [_batch(32, s) for s in range(3)],
                                          0.05, 0.9)
  state = jax.jit(lambda s: s, out_shardings=part.replicated)(state)
  if mode == "pmap":
    state = part.to_pmap_state(state)
  rng = jax.random.PRNGKey(1)
  losses = []
  for s in range(3):
    b = {"train": _batch(32, s)}
    if mode == "pmap":
      state, m = update(state, part.pmap_batch(b), rng)
      losses.append(float(m["loss"][0]))
    else:
      state, m = update(state, part.global_batch(b), rng)
      losses.append(float(m["loss"]))
  if mode == "pmap":
    state = part.from_pmap_state(state)
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
  assert int(jax.device_get(state.step)) == 3


def test_freeze_keeps_matching_params_fixed():
  model, method = LeNet(), methods.get_method("supervised")
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))["params"]
  tx = optim.make_optimizer(_optim(weight_decay=1e-3), 10, params=params, freeze="^(conv|fc)")
  state = steps.new_state(params, tx)
  update = jax.jit(steps.make_update(method.loss_fn, model, tx, 10))
  new, _ = update(state, {"train": _batch(16)}, jax.random.PRNGKey(0))
  new, _ = update(new, {"train": _batch(16, 1)}, jax.random.PRNGKey(0))
  before, after = optim.param_paths(params), optim.param_paths(new.params)
  for path in before:
    same = np.array_equal(np.asarray(before[path]), np.asarray(after[path]))
    assert same == (not path.startswith("head")), path


def test_freeze_regex_matching_nothing_is_an_error():
  params = LeNet().init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))["params"]
  with pytest.raises(ValueError, match="matches no parameter.*conv1/kernel"):
    optim.make_optimizer(_optim(), 10, params=params, freeze="^encoder")


def test_accumulate_records_first_non_finite_step():
  totals = steps.empty_totals({"loss": jax.ShapeDtypeStruct((), jnp.float32)})
  for step, loss in [(1, 1.0), (2, np.nan), (3, np.inf), (4, 2.0)]:
    totals = steps.accumulate(totals, {"loss": jnp.float32(loss)}, step)
  assert int(totals["first_bad_step"]) == 2 and int(totals["count"]) == 4


def test_supervised_eval_counts_only_unmasked_rows():
  model, method = LeNet(), methods.get_method("supervised")
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))["params"]
  b = _batch(8)
  logits = np.asarray(model.apply({"params": params}, b["image"])["logits"])
  mask = np.array([1, 1, 1, 0, 1, 0, 1, 1], np.float32)
  sums = method.eval_fn(model, params, {**b, "mask": mask})
  expected_correct = ((logits.argmax(-1) == b["label"]) * mask).sum()
  lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  expected_loss = ((lse - logits[np.arange(8), b["label"]]) * mask).sum()
  assert float(sums["count"]) == 6
  assert float(sums["correct"]) == expected_correct
  np.testing.assert_allclose(float(sums["loss"]), expected_loss, rtol=1e-5)


def _fc2_outputs(model, params, images):
  """LeNet's fc2 outputs before its batch norm, captured by flax (eval-mode forward)."""
  _, state = model.apply({"params": params, "batch_stats": jax.tree.map(
      jnp.zeros_like, model.init(jax.random.PRNGKey(0), images[:1])["batch_stats"])}, images,
      capture_intermediates=lambda mdl, _: mdl.name == "fc2", mutable=["intermediates"])
  return np.asarray(state["intermediates"]["fc2"]["__call__"][0], np.float64)


@pytest.mark.parametrize("mode", ["jit", "pmap"])
def test_batch_norm_running_averages_update_in_the_step_and_serve_eval(mode):
  """LeNet's bottleneck batch norm: the step returns running averages = 0.9 * old + 0.1 * the
  batch's (numpy, from fc2's captured outputs; pmap: the mean of the 4 devices' statistics), and
  the eval step normalises with them."""
  assert jax.device_count() == 4
  model, method = LeNet(bottleneck_norm=True), methods.get_method("supervised")
  tx = optim.make_optimizer(_optim(), 10)
  part = steps.Partitioner(mode)
  state, _ = steps.init_state(model, jnp.zeros((1, 28, 28, 1)), lambda p: tx, part, seed=0)
  assert set(state.model_state) == {"batch_stats"}
  np.testing.assert_array_equal(state.model_state["batch_stats"]["fc2_norm"]["var"], 1.0)
  params0 = jax.device_get(state.params)
  update = part.compile_update(steps.make_update(method.loss_fn, model, tx, 10,
                                                 "batch" if mode == "pmap" else None))
  b = _batch(32)
  if mode == "pmap":
    new, _ = update(part.to_pmap_state(state), part.pmap_batch({"train": b}),
                    jax.random.PRNGKey(1))
    new = part.from_pmap_state(new)
  else:
    new, _ = update(state, part.global_batch({"train": b}), jax.random.PRNGKey(1))
  h = _fc2_outputs(model, params0, b["image"])
  shares = h.reshape(4, 8, -1) if mode == "pmap" else h[None]
  mean = np.mean([s.mean(0) for s in shares], 0)
  var = np.mean([s.var(0) for s in shares], 0)
  stats = jax.device_get(new.model_state["batch_stats"]["fc2_norm"])
  np.testing.assert_allclose(stats["mean"], 0.1 * mean, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * var, rtol=1e-4, atol=1e-6)

  # Eval: (h - mean) / sqrt(var + eps) * scale + bias with the running averages, then ReLU, head.
  params = jax.device_get(new.params)
  eval_step = jax.jit(lambda p, batch, s: method.eval_fn(steps.with_state(model, s), p, batch))
  test = _batch(8, 5)
  got = eval_step(params, {**test, "mask": np.ones(8, np.float32)}, new.model_state)
  h = _fc2_outputs(model, params, test["image"])
  norm = params["fc2_norm"]
  f = np.maximum((h - stats["mean"]) / np.sqrt(stats["var"] + 1e-5) * norm["scale"] + norm["bias"], 0)
  logits = f @ np.asarray(params["head"]["kernel"], np.float64) + params["head"]["bias"]
  assert float(got["correct"]) == float((logits.argmax(-1) == test["label"]).sum())
  lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  np.testing.assert_allclose(float(got["loss"]), (lse - logits[np.arange(8), test["label"]]).sum(),
                             rtol=1e-4)
