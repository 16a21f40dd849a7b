"""oneDNN convolutions and dense weight gradients (mmjax.models.onednn): values and derivatives of
every order against XLA's convolution and dot, vmap, platform lowering, meshes, the fallback when
they cannot be built, and the malloc settings of mmjax.runtime. The `_check_*` functions need a
process with one device and run in a subprocess (test_on_one_device_...)."""
import functools
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mmjax import runtime
from mmjax.models import Conv4, LeNet, fast_ops, onednn
from mmjax.models.transformer import Encoder

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import flops  # noqa: E402  (benchmarks/flops.py)
from conftest import xla_flags

# (batch, size, in channels, out channels, kernel, strides, padding, kernel dilation)
GEOMETRIES = [
    (4, 12, 3, 5, 5, (1, 1), "VALID", (1, 1)),          # LeNet's conv2, small
    (3, 9, 2, 4, 3, (2, 2), "SAME", (1, 1)),            # conv4's stride-2 SAME conv
    (2, 11, 3, 4, 3, (2, 1), ((2, 1), (0, 1)), (1, 1)),  # uneven strides and padding
    (2, 10, 1, 4, 3, (1, 1), "SAME", (2, 2)),           # one input channel, dilated kernel
]


def _xla(x, w, strides, padding, dilation):
  return lax.conv_general_dilated(x, w, strides, padding, rhs_dilation=dilation,
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                  precision=lax.Precision.HIGHEST)


def _close(got, want, rtol=2e-5):
  scale = float(jnp.max(jnp.abs(want)))
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=rtol * scale)


def _check_onednn_is_built_and_used():
  assert onednn.available(), onednn.unavailable_reason()
  text = jax.jit(lambda x, w: onednn.conv(x, w, (1, 1), "VALID")).lower(
      jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4))).as_text()
  assert "mmjax_onednn_conv_fwd" in text and "convolution" not in text


def _check_values_and_derivatives_of_every_order_match_xla(geometry):
  n, size, c, o, k, strides, padding, dilation = geometry
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(n, size, size, c)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(k, k, c, o)), jnp.float32)
  fast = functools.partial(onednn.conv, strides=strides, padding=padding, dilation=dilation)
  plain = functools.partial(_xla, strides=strides, padding=padding, dilation=dilation)
  loss = lambda conv: lambda x, w: jnp.sum(jnp.sin(conv(x, w)))  # noqa: E731
  # MAML-style second order: the gradient of a function of the first gradients.
  meta = lambda conv: lambda x, w: sum(  # noqa: E731
      jnp.sum(g ** 2) for g in jax.grad(loss(conv), (0, 1))(x, w))
  _close(jax.jit(fast)(x, w), plain(x, w))
  grads = jax.jit(jax.grad(loss(fast), (0, 1)))(x, w), jax.grad(loss(plain), (0, 1))(x, w)
  for got, want in zip(*grads):
    _close(got, want)
  metas = jax.jit(jax.grad(meta(fast), (0, 1)))(x, w), jax.grad(meta(plain), (0, 1))(x, w)
  for got, want in zip(*metas):
    _close(got, want, rtol=1e-4)
  # vmap: a batch of kernels over one input (per-task weights), and both batched.
  ws = jnp.stack([w, -2 * w, w + 0.5])
  xs = jnp.stack([x, 0.5 * x, x - 1])
  _close(jax.jit(jax.vmap(fast, (None, 0)))(x, ws), jax.vmap(plain, (None, 0))(x, ws))
  _close(jax.jit(jax.vmap(fast))(xs, ws), jax.vmap(plain)(xs, ws))
  for got, want in zip(jax.jit(jax.vmap(jax.grad(loss(fast), (0, 1)), (None, 0)))(x, ws),
                       jax.vmap(jax.grad(loss(plain), (0, 1)), (None, 0))(x, ws)):
    _close(got, want)


def _check_vmapped_batches_match_xla_in_parallel_and_in_sequence():
  """A vmapped batch of convolutions runs one convolution per OpenMP thread (the default) or each
  on all threads in turn (MmjaxSetParallelBatch(0)); per-task kernels, shared kernels and their
  gradients match XLA's either way. MAML's vmapped tasks run this way."""
  import ctypes
  lib = ctypes.CDLL(str(onednn._build()))
  lib.MmjaxParallelBatchCalls.restype = ctypes.c_int64
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.normal(size=(5, 6, 9, 9, 3)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(5, 3, 3, 3, 4)), jnp.float32)
  fast = functools.partial(onednn.conv, strides=(2, 2), padding="SAME")
  plain = functools.partial(_xla, strides=(2, 2), padding="SAME", dilation=(1, 1))
  loss = lambda conv: lambda x, w: jnp.sum(jnp.sin(conv(x, w)))  # noqa: E731
  # Nested vmaps where each operand is batched along one axis only: leading dims (5, 1) and (1, 5)
  # (a vmapped sweep of runs around MAML's vmapped tasks has this form).
  nested = lambda conv: jax.vmap(jax.vmap(conv, (None, 0)), (0, None))  # noqa: E731
  try:
    for parallel in (1, 0):
      lib.MmjaxSetParallelBatch(parallel)
      calls = lib.MmjaxParallelBatchCalls()
      for axes in ((0, 0), (0, None)):  # per-task kernels; one kernel shared by the batch
        wt = w if axes[1] == 0 else w[0]
        _close(jax.jit(jax.vmap(fast, axes))(x, wt), jax.vmap(plain, axes)(x, wt))
        for got, want in zip(jax.jit(jax.vmap(jax.grad(loss(fast), (0, 1)), axes))(x, wt),
                             jax.vmap(jax.grad(loss(plain), (0, 1)), axes)(x, wt)):
          _close(got, want)
      _close(jax.jit(nested(fast))(x, w), nested(plain)(x, w))
      for got, want in zip(jax.jit(nested(jax.grad(loss(fast), (0, 1))))(x, w),
                           nested(jax.grad(loss(plain), (0, 1)))(x, w)):
        _close(got, want)
      # The test process has 2 OpenMP threads (SINGLE_DEVICE), so batches of 5 take the parallel
      # path exactly when it is on.
      assert (lib.MmjaxParallelBatchCalls() > calls) == bool(parallel), parallel
  finally:
    lib.MmjaxSetParallelBatch(1)


def _check_other_platforms_lower_to_xla_where_the_cpu_uses_onednn():
  """One jitted function, custom calls on this CPU, XLA's conv and dot for GPU and TPU."""
  conv = jax.jit(lambda x, w: onednn.conv(x, w, (1, 1), "SAME"))
  conv_args = (jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32),
               jax.ShapeDtypeStruct((3, 3, 3, 4), jnp.float32))
  dense = jax.jit(jax.grad(lambda x, w: jnp.sum(fast_ops.dot_general(
      x, w, (((1,), (0,)), ((), ())))), 1))
  dense_args = (jax.ShapeDtypeStruct((6, 4), jnp.float32),
                jax.ShapeDtypeStruct((4, 3), jnp.float32))
  assert "mmjax_onednn_conv_fwd" in conv.lower(*conv_args).as_text()
  assert "mmjax_onednn_matmul_tn" in dense.lower(*dense_args).as_text()
  for platform in ("cuda", "tpu"):
    text = jax.export.export(conv, platforms=[platform])(*conv_args).mlir_module()
    assert "convolution" in text and "mmjax_onednn" not in text, platform
    text = jax.export.export(dense, platforms=[platform])(*dense_args).mlir_module()
    assert "dot_general" in text and "mmjax_onednn" not in text, platform


def _check_models_with_onednn_convs_match_their_xla_versions():
  """LeNet and conv4 keep their params and math: outputs and param gradients equal to the same
  models with XLA's convs (fast_ops.USE_ONEDNN off)."""
  rng = np.random.default_rng(1)
  for model, shape in ((LeNet(num_classes=10), (8, 28, 28, 1)),
                       (Conv4(num_classes=5), (5, 28, 28, 1))):
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    params = model.init(jax.random.PRNGKey(0), x)["params"]

    def loss(params):
      return jnp.sum(jax.nn.log_softmax(model.apply({"params": params}, x)["logits"])[:, 0])

    assert "mmjax_onednn" in jax.jit(loss).lower(params).as_text()
    fast_value, fast_grad = jax.jit(jax.value_and_grad(loss))(params)
    with fast_ops.onednn_calls(False):
      assert "mmjax_onednn" not in jax.jit(loss).lower(params).as_text()
      plain_value, plain_grad = jax.jit(jax.value_and_grad(loss))(params)
    # Leaving the block clears the trace caches again: the same function is back on oneDNN.
    assert "mmjax_onednn" in jax.jit(loss).lower(params).as_text()
    np.testing.assert_allclose(fast_value, plain_value, rtol=1e-5)
    # Tolerance on the largest gradient: conv4's conv biases, followed by batch norm, have
    # gradients that are zero up to rounding.
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(plain_grad))
    for got, want in zip(jax.tree.leaves(fast_grad), jax.tree.leaves(plain_grad)):
      np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * scale)


def _check_flop_count_includes_the_onednn_convolutions():
  """cost_analysis() counts a custom call as nothing; benchmarks/flops.cpu_flops counts the step
  with XLA's convs: the convolution's 2 * N * OH * OW * O * C * KH * KW plus the sum."""
  x, w = jnp.ones((4, 12, 12, 3)), jnp.ones((5, 5, 3, 8))
  fn = lambda x, w: jnp.sum(fast_ops.conv_general_dilated(  # noqa: E731
      x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")))
  conv_flops = 2 * 4 * 8 * 8 * 8 * 3 * 5 * 5
  cost = jax.jit(fn).lower(x, w).compile().cost_analysis()
  assert float((cost[0] if isinstance(cost, list) else cost)["flops"]) < conv_flops / 10
  assert conv_flops <= flops.cpu_flops(fn, x, w) <= conv_flops * 1.01
  assert "mmjax_onednn" in jax.jit(fn).lower(x, w).as_text()  # the caches were cleared after


def _check_matmul_tn_values_and_derivatives_of_every_order_match_xla():
  """a^T b on oneDNN's sgemm against float64 numpy, and its first and second derivatives and vmap
  against XLA's dot; a dense layer's FLOP count with it."""
  rng = np.random.default_rng(2)
  a = jnp.asarray(rng.normal(size=(37, 6)), jnp.float32)
  b = jnp.asarray(rng.normal(size=(37, 5)), jnp.float32)
  assert "mmjax_onednn_matmul_tn" in jax.jit(onednn.matmul_tn).lower(a, b).as_text()
  want = np.asarray(a, np.float64).T @ np.asarray(b, np.float64)
  np.testing.assert_allclose(jax.jit(onednn.matmul_tn)(a, b), want, rtol=0,
                             atol=1e-5 * abs(want).max())
  plain = lambda a, b: jnp.matmul(a.T, b, precision=lax.Precision.HIGHEST)  # noqa: E731
  loss = lambda tn: lambda a, b: jnp.sum(jnp.sin(tn(a, b)))  # noqa: E731
  meta = lambda tn: lambda a, b: sum(  # noqa: E731
      jnp.sum(g ** 2) for g in jax.grad(loss(tn), (0, 1))(a, b))
  for f in (loss, meta):
    for got, want in zip(jax.jit(jax.grad(f(onednn.matmul_tn), (0, 1)))(a, b),
                         jax.grad(f(plain), (0, 1))(a, b)):
      _close(got, want, rtol=1e-5)
  bs = jnp.stack([b, -2 * b, b + 0.5])
  _close(jax.jit(jax.vmap(onednn.matmul_tn, (None, 0)))(a, bs), jax.vmap(plain, (None, 0))(a, bs))
  # A dense layer's gradient: benchmarks/flops.cpu_flops counts its three products (forward, input
  # and weight gradients); cost_analysis() counts the custom call as nothing.
  grad = jax.grad(lambda x, w: jnp.sum(jnp.sin(fast_ops.dot_general(
      x, w, (((1,), (0,)), ((), ()))))), (0, 1))
  x, w = b, a[:5]  # [37, 5] x [5, 6]
  products = 3 * 2 * 37 * 5 * 6
  assert "mmjax_onednn_matmul_tn" in jax.jit(grad).lower(x, w).as_text()
  cost = jax.jit(grad).lower(x, w).compile().cost_analysis()
  assert float((cost[0] if isinstance(cost, list) else cost)["flops"]) < products
  assert products <= flops.cpu_flops(grad, x, w) <= products * 1.5


def _check_transformer_with_onednn_dense_grads_matches_its_xla_version():
  """A Transformer encoder keeps its params and math with its dense layers' weight gradients on
  oneDNN (fast_ops.dot_general): outputs and param gradients equal to onednn_calls(False)'s."""
  rng = np.random.default_rng(3)
  model = Encoder(depth=2, num_heads=2, mlp_dim=24)
  x = jnp.asarray(rng.normal(size=(3, 7, 8)), jnp.float32)
  params = model.init(jax.random.PRNGKey(0), x)["params"]

  def loss(params):
    return jnp.sum(jnp.sin(model.apply({"params": params}, x)))

  assert jax.jit(jax.grad(loss)).lower(params).as_text().count("mmjax_onednn_matmul_tn") == 2 * 6
  fast_value, fast_grad = jax.jit(jax.value_and_grad(loss))(params)
  with fast_ops.onednn_calls(False):
    assert "mmjax_onednn" not in jax.jit(jax.grad(loss)).lower(params).as_text()
    plain_value, plain_grad = jax.jit(jax.value_and_grad(loss))(params)
  np.testing.assert_allclose(fast_value, plain_value, rtol=1e-6)
  assert jax.tree.structure(fast_grad) == jax.tree.structure(plain_grad)
  for got, want in zip(jax.tree.leaves(fast_grad), jax.tree.leaves(plain_grad)):
    _close(got, want, rtol=1e-5)


SINGLE_DEVICE = {"XLA_FLAGS": xla_flags(1), "OMP_NUM_THREADS": "2"}


def test_on_one_device_values_derivatives_models_and_flops_match_xla():
  """The checks above, in a process with one CPU device (this one has 4, where `conv` keeps
  XLA's conv: see test_on_a_mesh_of_devices_convolutions_stay_xla_and_correct)."""
  code = """
      import sys
      sys.path.insert(0, "tests")
      import jax
      import test_onednn as t
      assert jax.device_count() == 1
      t._check_onednn_is_built_and_used()
      for geometry in t.GEOMETRIES:
        t._check_values_and_derivatives_of_every_order_match_xla(geometry)
      t._check_models_with_onednn_convs_match_their_xla_versions()
      t._check_flop_count_includes_the_onednn_convolutions()
      t._check_matmul_tn_values_and_derivatives_of_every_order_match_xla()
      t._check_transformer_with_onednn_dense_grads_matches_its_xla_version()
      t._check_other_platforms_lower_to_xla_where_the_cpu_uses_onednn()
      t._check_vmapped_batches_match_xla_in_parallel_and_in_sequence()
      print("CHECKED", 7 + len(t.GEOMETRIES))
  """
  out = _python(code, SINGLE_DEVICE)
  assert out.returncode == 0 and f"CHECKED {7 + len(GEOMETRIES)}" in out.stdout, (
      out.stdout[-2000:] + out.stderr[-4000:])


def test_on_a_mesh_of_devices_convolutions_stay_xla_and_correct():
  """Sharded over this process's 4 devices, the custom calls (no partitioning rule) gave wrong
  weight gradients; `conv` keeps XLA's conv there, with the reference's gradient."""
  assert jax.device_count() == 4
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  shard = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 12, 12, 3)), jnp.float32)
  w = jnp.asarray(np.random.default_rng(1).normal(size=(5, 5, 3, 4)), jnp.float32)
  grad = jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.sin(onednn.conv(x, w, (1, 1), "VALID"))), 1))
  text = grad.lower(jax.device_put(x, shard), w).as_text()
  assert "mmjax_onednn" not in text
  want = jax.grad(lambda x, w: jnp.sum(jnp.sin(_xla(x, w, (1, 1), "VALID", (1, 1)))), 1)(x, w)
  _close(grad(jax.device_put(x, shard), w), want)
  # The same for a dense layer's weight gradient (fast_ops.dot_general, as in the Transformer).
  x2 = x.reshape(8, -1)
  dense = jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.sin(fast_ops.dot_general(
      x, w, (((1,), (0,)), ((), ()))))), 1))
  w2 = jnp.asarray(np.random.default_rng(2).normal(size=(x2.shape[1], 3)), jnp.float32)
  assert "mmjax_onednn" not in dense.lower(jax.device_put(x2, shard), w2).as_text()
  want = jax.grad(lambda x, w: jnp.sum(jnp.sin(jnp.matmul(x, w, precision="highest"))), 1)(x2, w2)
  _close(dense(jax.device_put(x2, shard), w2), want)


def _python(code, env_update, timeout=300):
  env = {**os.environ, **env_update}
  return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                        text=True, env=env, cwd=REPO, timeout=timeout)


def test_independent_convolutions_in_one_program_neither_deadlock_nor_differ():
  """XLA:CPU runs independent convs (a sweep's runs, MAML's tasks) on several threads at once.
  With oneDNN's default library-managed scratchpad and no lock, a program of this kind hung in
  3 of 3 tries and 4 same-shape convs in 2 of 2 (a kernel spinning at its barrier); with the
  caller's scratchpads (onednn_conv.cc) 200 steps of it ran in 5 of 5 tries, in about 40 ms each.
  Two geometries, each three times, all three kinds of call."""
  code = """
      import jax, jax.numpy as jnp, numpy as np
      from jax import lax
      from mmjax.models import onednn
      assert jax.device_count() == 1 and onednn.usable(), onednn.unavailable_reason()
      rng = np.random.default_rng(0)
      shapes = [((64, 28, 28, 1), (5, 5, 1, 32)), ((64, 12, 12, 32), (5, 5, 32, 48))] * 3
      xs = [jnp.asarray(rng.normal(size=a), jnp.float32) for a, _ in shapes]
      ws = [jnp.asarray(0.1 * rng.normal(size=b), jnp.float32) for _, b in shapes]
      def loss(conv):
        return lambda ws, xs: sum(jnp.sum(jnp.tanh(conv(x, w))) for x, w in zip(xs, ws))
      fast = jax.jit(jax.grad(loss(lambda x, w: onednn.conv(x, w, (1, 1), "VALID")), (0, 1)))
      for _ in range(30):
        got = jax.block_until_ready(fast(ws, xs))
      want = jax.grad(loss(lambda x, w: lax.conv_general_dilated(
          x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))), (0, 1))(ws, xs)
      print("MAXERR", max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
                          for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want))))
  """
  try:
    out = _python(code, SINGLE_DEVICE, timeout=120)
  except subprocess.TimeoutExpired:
    raise AssertionError("6 independent oneDNN convs in one program did not finish in 120 s")
  assert out.returncode == 0, out.stderr[-3000:]
  assert float(out.stdout.split("MAXERR")[1]) < 1e-5


def test_without_onednn_the_convolutions_fall_back_to_xla(tmp_path):
  """A oneDNN that cannot be found (or MMJAX_ONEDNN=0) leaves XLA's conv in place, with the reason
  (one device, where oneDNN would otherwise be used)."""
  code = """
      import jax, jax.numpy as jnp
      from mmjax.models import LeNet, onednn
      x = jnp.ones((2, 28, 28, 1))
      model = LeNet(num_classes=10)
      params = model.init(jax.random.PRNGKey(0), x)
      text = jax.jit(model.apply).lower(params, x).as_text()
      print("AVAILABLE", onednn.available(), "CUSTOM", "mmjax_onednn" in text,
            "CONV", "convolution" in text)
      print("REASON", onednn.unavailable_reason())
  """
  missing = _python(code, {**SINGLE_DEVICE, "MMJAX_ONEDNN_ROOT": str(tmp_path / "nowhere"),
                           "MMJAX_EXT_CACHE": str(tmp_path / "ext")})
  assert missing.returncode == 0, missing.stderr[-2000:]
  assert "AVAILABLE False CUSTOM False CONV True" in missing.stdout
  assert "nowhere" in missing.stdout  # the reason names what was not found
  off = _python(code, {**SINGLE_DEVICE, "MMJAX_ONEDNN": "0"})
  assert off.returncode == 0, off.stderr[-2000:]
  assert "AVAILABLE False CUSTOM False CONV True" in off.stdout
  assert "REASON MMJAX_ONEDNN=0" in off.stdout


def test_two_processes_building_the_extension_at_once_both_get_it(tmp_path):
  code = """
      import os, time
      from mmjax.models import onednn
      while not os.path.exists(os.environ["GO"]):
        time.sleep(0.01)
      print("AVAILABLE", onednn.available(), onednn.unavailable_reason())
  """
  env = {"MMJAX_EXT_CACHE": str(tmp_path / "ext"), "GO": str(tmp_path / "go")}
  procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)],
                            env={**os.environ, **env}, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
           for _ in range(2)]
  (tmp_path / "go").touch()
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0 and "AVAILABLE True None" in out, err[-2000:]
  built = list((tmp_path / "ext").glob("*.so"))
  assert len(built) == 1
  # A corrupt cached library (a truncated file, say) is rebuilt: loading it would kill the process.
  built[0].write_bytes(built[0].read_bytes()[:1000])
  out = _python(code, env)  # (the "go" file exists by now)
  assert out.returncode == 0 and "AVAILABLE True None" in out.stdout, out.stderr[-2000:]
  assert built[0].stat().st_size > 1000


def test_malloc_settings_stop_per_step_page_faults():
  """XLA:CPU allocates an executable's temporary buffer at every run; without mmjax's malloc
  settings glibc maps it fresh each time and every page faults in again."""
  code = """
      import resource
      import mmjax, jax, jax.numpy as jnp
      from mmjax import runtime
      # two 32 MiB temporaries: above glibc's largest mmap threshold
      f = jax.jit(lambda x: jnp.sum(jnp.cumsum(x, axis=0) * jnp.cumsum(x[::-1], axis=1)))
      x = jnp.ones((4096, 2048))
      for _ in range(3):
        f(x).block_until_ready()
      windows = []  # the fewest faults per run over 5 windows of 4 runs
      for _ in range(5):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(4):
          f(x).block_until_ready()
        windows.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 4)
      print("FAULTS", min(windows), max(windows))
      print("APPLIED", sorted(runtime.configure_malloc()))
  """
  faults = {}
  for setting in ("1", "0"):
    # XLA's default backend optimization: at the tests' -O0 the cumsums take seconds a run.
    out = _python(code, {"MMJAX_MALLOC_DEFAULTS": setting, "XLA_FLAGS": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    faults[setting] = float(out.stdout.split("FAULTS")[1].split()[0])
    applied = out.stdout.split("APPLIED")[1].strip()
    assert applied == (str(sorted(runtime.MALLOC_SETTINGS)) if setting == "1" else "[]")
  pages = 32 * 2 ** 20 / 4096  # at least one 32 MiB temporary faulted in a run
  assert faults["0"] >= pages, faults
  # With the settings on, some windows still see faults (up to 12,800 a run once; no mmap, munmap
  # or brk between runs under strace): the kernel's, not malloc's. The quietest window (0 faults
  # a run in 3 of 3 full-file runs) shows what malloc does.
  assert faults["1"] < pages / 8, faults
