"""Test setup: 4 fake CPU devices, the shared data directory, a per-session tfds cache."""
import os
import pathlib
import shutil
import tempfile

# Tests compile much more than they run: XLA:CPU's backend at -O0 compiles the suite's steps 2-3x
# faster (the 8 AV-digits fusion strategies: 218 s -> 108 s; the whole suite 860 s -> 700 s), and
# every test's numbers are compared within one setting. Benchmarks and users keep the default.
FAST_COMPILE = "--xla_backend_optimization_level=0"


def xla_flags(devices: int) -> str:
  """XLA_FLAGS for a test process (or a subprocess a test starts) with `devices` CPU devices."""
  return f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}"


# Must happen before JAX starts: every test process sees 4 CPU devices.
os.environ.setdefault("XLA_FLAGS", xla_flags(4))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = pathlib.Path(__file__).resolve().parents[1]
os.environ.setdefault("MMJAX_DATA_DIR", str((REPO / ".." / "shared" / "data").resolve()))
# Prepared tfds datasets are cached across test runs on this machine; the builder
# tests themselves prepare into fresh temporary directories.
os.environ.setdefault("MMJAX_TFDS_DIR", str(pathlib.Path.home() / ".cache" / "mmjax" / "tfds"))

# One persistent XLA compilation cache for the test session, its `-n` workers and every subprocess
# they start: the subprocess tests (kill -9, 2 and 4 processes, sweeps, tables) compile the same
# steps again and again. Made here in the controller (workers and subprocesses inherit the
# environment), in the temp directory, and removed when the session ends; a
# JAX_COMPILATION_CACHE_DIR set by the user is used as it is and kept.
_OWN_XLA_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _OWN_XLA_CACHE = tempfile.mkdtemp(prefix="mmjax_test_xla_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_XLA_CACHE
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def pytest_unconfigure(config):
  if _OWN_XLA_CACHE and not hasattr(config, "workerinput"):  # the controller, not an -n worker
    shutil.rmtree(_OWN_XLA_CACHE, ignore_errors=True)
