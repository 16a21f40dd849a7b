"""2-D float32 convolutions on oneDNN for XLA:CPU, as XLA FFI custom calls (XLA's convs elsewhere).

XLA:CPU runs convolutions with Eigen (or YNNPACK, which mmjax.runtime turns off for convs), several
times slower than oneDNN for the small convs of LeNet and conv4 (benchmarks/README.md). This module
compiles `mmjax/ext/onednn_conv.cc` against the oneDNN of the `onednn-cpu-gomp` and
`onednn-devel-cpu-gomp` wheels (requirements.txt, x86-64 Linux) at first use, caches the shared
library under `$MMJAX_EXT_CACHE` (default `~/.cache/mmjax/ext`), and registers its custom calls:
the forward conv and its two gradients, and a matmul (below). `conv` composes the three with
`jax.custom_vjp` so that every order of derivative (second-order MAML included) stays on oneDNN:
the three maps are each other's adjoints, since the conv is bilinear in input and kernel. Calls
that XLA runs at once on several of its threads (a sweep's runs, MAML's tasks) run concurrently,
each with its own scratchpad.

A vmapped batch of convolutions (vmap is a loop inside the call) runs one convolution per OpenMP
thread when the batch has at least as many as there are threads (MAML's tasks: each is small, and
oneDNN splitting each over all cores cost a barrier per call); `MMJAX_ONEDNN_PARALLEL_BATCH=0` runs
them one after another, each on all threads, as before 2026-11-28.

`matmul_tn` (a^T b, a dense layer's weight gradient) runs on oneDNN's sgemm the same way.

`conv` lowers through `lax.platform_dependent`: on CPU the custom calls, on GPU and TPU XLA's conv,
so one jitted function runs on any backend. With more than one device (a mesh over fake CPU
devices, multi-process runs) it keeps XLA's conv: see `usable()`. Where the library cannot be
built (no compiler, no oneDNN wheel, another OS or architecture) or `MMJAX_ONEDNN=0`,
`available()` is False with the reason in `unavailable_reason()`, and XLA's conv is used.
"""
import ctypes
import fcntl
import functools
import hashlib
import importlib.metadata
import logging
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_SOURCE = pathlib.Path(__file__).resolve().parent.parent / "ext" / "onednn_conv.cc"
_TARGETS = {"fwd": "mmjax_onednn_conv_fwd", "bwd_data": "mmjax_onednn_conv_bwd_data",
            "bwd_weights": "mmjax_onednn_conv_bwd_weights", "matmul_tn": "mmjax_onednn_matmul_tn"}
_SYMBOLS = {"fwd": "MmjaxConvFwd", "bwd_data": "MmjaxConvBwdData",
            "bwd_weights": "MmjaxConvBwdWeights", "matmul_tn": "MmjaxMatmulTN"}
_reason = None


def enabled_by_env() -> bool:
  return os.environ.get("MMJAX_ONEDNN", "1").strip().lower() not in ("0", "false", "no", "off")


def _onednn_paths():
  """(include dir, lib dir) of the installed oneDNN wheels, or of $MMJAX_ONEDNN_ROOT."""
  root = os.environ.get("MMJAX_ONEDNN_ROOT")
  if root:
    return pathlib.Path(root) / "include", pathlib.Path(root) / "lib"
  found = {}
  for dist, name, key in (("onednn-devel-cpu-gomp", "dnnl.hpp", "include"),
                          ("onednn-cpu-gomp", "libdnnl.so.3", "lib")):
    try:
      files = importlib.metadata.distribution(dist).files or []
    except importlib.metadata.PackageNotFoundError:
      raise RuntimeError(f"the {dist} wheel is not installed (pip install -r requirements.txt)")
    for f in files:
      if f.name == name and (key == "lib" or f.parent.name == "dnnl"):
        path = pathlib.Path(f.locate()).resolve()
        found[key] = path.parents[2] if key == "include" else path.parent  # <include>/oneapi/dnnl
        break
    if key not in found:
      raise RuntimeError(f"the {dist} wheel has no {name}")
  return found["include"], found["lib"]


def _build() -> pathlib.Path:
  """Compiles the custom calls once per source, jaxlib and oneDNN; returns the .so path."""
  if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
    raise RuntimeError(f"oneDNN convolutions are built for x86-64 Linux, not "
                       f"{platform.system()} {platform.machine()}")
  include, lib = _onednn_paths()
  compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
  if not compiler:
    raise RuntimeError("no C++ compiler (g++) to build the oneDNN convolutions")
  digest = hashlib.sha256()
  for part in (_SOURCE.read_bytes(), jax.__version__.encode(), str(lib).encode(),
               compiler.encode()):
    digest.update(part)
  cache = pathlib.Path(os.environ.get("MMJAX_EXT_CACHE",
                                      pathlib.Path.home() / ".cache" / "mmjax" / "ext"))
  cache.mkdir(parents=True, exist_ok=True)
  target = cache / f"onednn_conv_{digest.hexdigest()[:16]}.so"
  if _intact(target):
    return target
  with open(cache / ".build.lock", "w") as lock:  # one process builds, the others wait for it
    fcntl.flock(lock, fcntl.LOCK_EX)
    if _intact(target):
      return target
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
      out = pathlib.Path(tmp) / target.name
      # oneDNN's wheel runs on GNU OpenMP; the library's own parallel loops must share it.
      openmp = "-fopenmp=libgomp" if "clang" in pathlib.Path(compiler).name else "-fopenmp"
      cmd = [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", openmp, "-w",
             f"-I{jax.ffi.include_dir()}", f"-I{include}", str(_SOURCE), f"-L{lib}",
             "-l:libdnnl.so.3", f"-Wl,-rpath,{lib}", "-o", str(out)]
      proc = subprocess.run(cmd, capture_output=True, text=True)
      if proc.returncode:
        raise RuntimeError(f"building the oneDNN convolutions failed:\n{' '.join(cmd)}\n"
                           f"{proc.stderr[-3000:]}")
      checksum = pathlib.Path(tmp) / "checksum"
      checksum.write_text(hashlib.sha256(out.read_bytes()).hexdigest())
      os.replace(out, target)
      os.replace(checksum, _checksum_path(target))
  return target


def _checksum_path(library: pathlib.Path) -> pathlib.Path:
  return library.with_name(library.name + ".sha256")


def _intact(library: pathlib.Path) -> bool:
  """Whether a cached build exists and matches the checksum written with it. Loading a truncated
  or overwritten library can kill the process (SIGBUS), so a mismatch means: build again."""
  try:
    return (hashlib.sha256(library.read_bytes()).hexdigest()
            == _checksum_path(library).read_text().strip())
  except OSError:
    return False


def available() -> bool:
  """Whether the oneDNN custom calls can be used: `MMJAX_ONEDNN` is not 0 and they are built and
  registered (at the first call of the process)."""
  return enabled_by_env() and _load()


@functools.cache
def _load() -> bool:
  global _reason
  try:
    library = ctypes.cdll.LoadLibrary(str(_build()))
    for kind, target in _TARGETS.items():
      jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, _SYMBOLS[kind])),
                                  platform="cpu")
    if os.environ.get("MMJAX_ONEDNN_PARALLEL_BATCH", "1") == "0":
      library.MmjaxSetParallelBatch(0)
  except Exception as e:  # noqa: BLE001 (any failure means: keep XLA's convolutions)
    _reason = str(e)
    logging.warning("mmjax: XLA's convolutions are used on CPU, not oneDNN's: %s", e)
    return False
  return True


def unavailable_reason():
  """None when `available()`, else why not."""
  if not enabled_by_env():
    return "MMJAX_ONEDNN=0"
  return None if _load() else _reason


def usable() -> bool:
  """available() and JAX sees one device. The custom calls have no partitioning rule: jit over a
  multi-device mesh (fake CPU devices, or one device in each of several processes) hands them a
  shard where they expect the whole array, and gives wrong gradients. So convs on more than one
  device stay XLA's (as they are on GPU and TPU)."""
  return jax.device_count() == 1 and available()


def supports(lhs, rhs, preferred_element_type=None) -> bool:
  """Whether `conv` runs a 2-D NHWC x HWIO conv of these operands on oneDNN: float32, usable()."""
  return (lhs.ndim == 4 and rhs.ndim == 4 and lhs.dtype == jnp.float32
          and rhs.dtype == jnp.float32 and preferred_element_type in (None, jnp.float32)
          and usable())


def _output_shape(x_shape, w_shape, geometry):
  (sh, sw), (pt, pb, pl, pr), (dh, dw) = geometry
  n, h, w, _ = x_shape
  kh, kw, _, o = w_shape
  oh = (h + pt + pb - (kh - 1) * dh - 1) // sh + 1
  ow = (w + pl + pr - (kw - 1) * dw - 1) // sw + 1
  return (n, oh, ow, o)


def _call(kind, shape, a, b, geometry):
  (sh, sw), (pt, pb, pl, pr), (dh, dw) = geometry
  attrs = dict(sh=sh, sw=sw, pt=pt, pb=pb, pl=pl, pr=pr, dh=dh, dw=dw)
  return jax.ffi.ffi_call(_TARGETS[kind], jax.ShapeDtypeStruct(shape, jnp.float32),
                          vmap_method="expand_dims")(
                              a, b, **{k: np.int64(v) for k, v in attrs.items()})


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv(x, w, geometry):
  return _call("fwd", _output_shape(x.shape, w.shape, geometry), x, w, geometry)


def _conv_fwd(x, w, geometry):
  return _conv(x, w, geometry), (x, w)


def _conv_bwd(geometry, residuals, g):
  x, w = residuals
  return _bwd_data(g, w, geometry, x.shape), _bwd_weights(x, g, geometry, w.shape)


_conv.defvjp(_conv_fwd, _conv_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _bwd_data(dy, w, geometry, x_shape):
  return _call("bwd_data", x_shape, dy, w, geometry)


def _bwd_data_fwd(dy, w, geometry, x_shape):
  return _bwd_data(dy, w, geometry, x_shape), (dy, w)


def _bwd_data_bwd(geometry, x_shape, residuals, g):
  # <g, bwd_data(dy, w)> = <conv(g, w), dy> = <w, bwd_weights(g, dy)>
  dy, w = residuals
  return _conv(g, w, geometry), _bwd_weights(g, dy, geometry, w.shape)


_bwd_data.defvjp(_bwd_data_fwd, _bwd_data_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _bwd_weights(x, dy, geometry, w_shape):
  return _call("bwd_weights", w_shape, x, dy, geometry)


def _bwd_weights_fwd(x, dy, geometry, w_shape):
  return _bwd_weights(x, dy, geometry, w_shape), (x, dy)


def _bwd_weights_bwd(geometry, w_shape, residuals, g):
  # <g, bwd_weights(x, dy)> = <conv(x, g), dy> = <x, bwd_data(dy, g)>
  x, dy = residuals
  return _bwd_data(dy, g, geometry, x.shape), _conv(x, g, geometry)


_bwd_weights.defvjp(_bwd_weights_fwd, _bwd_weights_bwd)


def conv(x, w, strides, padding, dilation=(1, 1), precision=None):
  """`lax.conv_general_dilated(x, w, strides, padding, rhs_dilation=dilation,
  dimension_numbers=("NHWC", "HWIO", "NHWC"))`: for float32 operands and `usable()`, on oneDNN
  when lowered for CPU; otherwise, and on other platforms, XLA's conv (with `precision`).
  `padding` is a string or ((top, bottom), (left, right))."""
  if isinstance(padding, str):
    dilated = [(k - 1) * d + 1 for k, d in zip(w.shape[:2], dilation)]
    padding = lax.padtype_to_pads(x.shape[1:3], dilated, strides, padding)
  (pt, pb), (pl, pr) = padding
  if min(pt, pb, pl, pr) < 0:
    raise ValueError(f"negative conv padding {padding} is not supported")
  geometry = (tuple(int(s) for s in strides), (int(pt), int(pb), int(pl), int(pr)),
              tuple(int(d) for d in dilation))

  def xla(x, w):
    return lax.conv_general_dilated(x, w, strides, padding, rhs_dilation=dilation,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    precision=precision)

  if not (x.dtype == w.dtype == jnp.float32 and usable()):
    return xla(x, w)
  return lax.platform_dependent(x, w, cpu=lambda x, w: _conv(x, w, geometry), default=xla)


def _tn_xla(a, b):
  return lax.dot_general(a, b, (((a.ndim - 2,), (b.ndim - 2,)), ((), ())))


def _tn_onednn(a, b):
  return jax.ffi.ffi_call(_TARGETS["matmul_tn"],
                          jax.ShapeDtypeStruct(a.shape[:-2] + (a.shape[-1], b.shape[-1]),
                                               jnp.float32),
                          vmap_method="broadcast_all")(a, b)


@jax.custom_vjp
def _tn(a, b):
  return lax.platform_dependent(a, b, cpu=_tn_onednn, default=_tn_xla)


def _tn_fwd(a, b):
  return _tn(a, b), (a, b)


def _tn_bwd(residuals, g):
  # <g, a^T b> = <b g^T, a> = <a g, b>
  a, b = residuals
  return jnp.matmul(b, g.T), jnp.matmul(a, g)


_tn.defvjp(_tn_fwd, _tn_bwd)


def matmul_tn(a, b):
  """a^T b for a [M, K] and b [M, N] (a dense layer's weight gradient, x^T dy): for float32
  operands and `usable()`, oneDNN's sgemm when lowered for CPU, which reads a transposed in place;
  otherwise, and on other platforms, XLA's dot. Differentiable to any order (reverse mode)."""
  if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
    raise ValueError(f"matmul_tn: a [M, K] and b [M, N] expected, got {a.shape} and {b.shape}")
  if not (a.dtype == b.dtype == jnp.float32 and usable()):
    return _tn_xla(a, b)
  return _tn(a, b)
