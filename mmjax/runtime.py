"""XLA:CPU settings that mmjax's steps rely on for speed, applied through XLA_FLAGS at import.

Since jaxlib 0.10, XLA:CPU hands many convolutions to YNNPACK (the `individual_convolution` fusion
type of `--xla_cpu_experimental_ynn_fusion_type`). On the LeNet convolutions of the digits steps
that path is far slower than XLA's Eigen convolutions (benchmarks/README.md, measured on a 2-core
AVX-512 CPU, jaxlib 0.10.2: conv2's forward 32.7 ms in YNNPACK against 3.5 ms in Eigen; the whole
DANN digits step 118 ms against 58 ms), while it changes nothing measurable for the Transformer and
MAML steps. So `configure()` takes convolutions, and only convolutions, away from YNNPACK (YNNPACK
keeps its reductions and elementwise fusions), before JAX creates its CPU backend.

Dots stay where XLA puts them. jaxlib 0.10 can run them in oneDNN (`--xla_cpu_use_onednn=true
--xla_cpu_experimental_onednn_fusion_type=individual_dot`); mmjax set that for a day, for a small
gain (the fusion Transformer step 1.08x PyTorch's speed against 1.03x, within noise in two of five
pairs), and removed it: XLA:CPU aborts the process when it frees a compiled program whose oneDNN
fusions are still checked out of their pool (`object_pool.h: Check failed: available_.size() ==
num_created_`, from `OneDnnFusionThunk::~OneDnnFusionThunk`), which happened at the end of
training runs and in the test suite. `tests/test_bench_tools.py` reproduces it in a few seconds.

`configure_malloc()` keeps glibc's malloc from returning large blocks to the kernel. XLA:CPU
allocates each executable's temporary buffer (67 MB for the DANN digits step) with posix_memalign
at every run and frees it after; glibc serves blocks that large with mmap and munmap, so every step
page-faults all of it in again (16,500 minor faults a step, about a third of the DANN step's time
on the 2-core VM, 2026-11-28; benchmarks/README.md). With one arena, no mmap and a 2 GiB trim
threshold (mallopt; MMJAX_MALLOC_DEFAULTS=0 turns it off) the block is reused from the heap. The
cost: freed memory up to 2 GiB stays with the process instead of going back to the kernel.

Each flag is left alone when the user already set it; none is added when MMJAX_XLA_CPU_DEFAULTS=0
or for a jaxlib outside the versions it was checked on (an unknown flag would abort XLA at start).
Flags only take effect when the backend is created, so import mmjax before running any JAX
computation; `configure()` logs a warning otherwise. The settings touch only XLA:CPU: GPU and TPU
compiles ignore them.
"""
import ctypes
import importlib.metadata
import logging
import os
import platform
import sys

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
NO_YNN_CONVOLUTIONS = f"{YNN_FLAG}=-individual_convolution"
CHECKED_JAXLIB = ("0.10.", "0.11.")  # versions whose XLA knows this flag and value


def _backend_started() -> bool:
  bridge = sys.modules.get("jax._src.xla_bridge")
  return bool(bridge is not None and getattr(bridge, "_backends", None))


def defaults(jaxlib_version: str) -> list:
  """The flags mmjax sets for this jaxlib version."""
  return [NO_YNN_CONVOLUTIONS] if jaxlib_version.startswith(CHECKED_JAXLIB) else []


def configure() -> list:
  """Adds each of `defaults()` whose flag XLA_FLAGS does not set yet; returns the flags added."""
  flags = os.environ.get("XLA_FLAGS", "")
  if os.environ.get("MMJAX_XLA_CPU_DEFAULTS", "1") == "0":
    return []
  try:
    jaxlib_version = importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    return []
  present = {f.split("=")[0] for f in flags.split()}
  added = [f for f in defaults(jaxlib_version)
           if f.split("=")[0] not in present]
  if not added:
    return []
  os.environ["XLA_FLAGS"] = " ".join([flags] + added).strip()
  if _backend_started():
    logging.getLogger(__name__).warning(
        "JAX's backends were created before mmjax was imported, so %s do not apply in this "
        "process: convolution steps on XLA:CPU may run ~2x slower (import mmjax first)",
        " ".join(added))
  return added


# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
MALLOC_SETTINGS = {"M_ARENA_MAX": (M_ARENA_MAX, 1), "M_MMAP_MAX": (M_MMAP_MAX, 0),
                   "M_TRIM_THRESHOLD": (M_TRIM_THRESHOLD, 2 ** 31 - 1)}
_malloc_applied: dict = {}


def configure_malloc() -> dict:
  """Applies MALLOC_SETTINGS with glibc's mallopt (once); returns {name: value} of those applied.

  Nothing on other C libraries, with MMJAX_MALLOC_DEFAULTS=0, or for a setting whose MALLOC_*_
  environment variable the user set. Call it before JAX starts its thread pools (import mmjax
  does), since M_ARENA_MAX only binds threads that have not allocated yet."""
  if _malloc_applied or os.environ.get("MMJAX_MALLOC_DEFAULTS", "1") == "0":
    return dict(_malloc_applied)
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return {}
  try:
    mallopt = ctypes.CDLL("libc.so.6").mallopt
  except (OSError, AttributeError):
    return {}
  for name, (param, value) in MALLOC_SETTINGS.items():
    if f"MALLOC_{name[2:]}_" in os.environ:
      continue
    if mallopt(param, value) == 1:
      _malloc_applied[name] = value
  return dict(_malloc_applied)
