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


def env_without_tensorflow(**extra) -> dict[str, str]:
  """Environment entries (to lay over os.environ) for a subprocess that cannot import tensorflow,
  tensorflow_datasets or clu, as on a machine without them: tests/no_tensorflow's sitecustomize
  put first on PYTHONPATH (it also hides the packages named in $MMJAX_TEST_HIDE)."""
  path = os.pathsep.join(p for p in (str(REPO / "tests" / "no_tensorflow"),
                                     os.environ.get("PYTHONPATH")) if p)
  return {"PYTHONPATH": path, **extra}


def tensorboard_scalars(workdir, skip=("steps_per_sec",)) -> dict[str, list[tuple[int, float]]]:
  """{tag: [(step, value), ...]} of every scalar in a workdir's event files but the `skip` tags,
  as TensorBoard's own reader (its plugin event accumulator, restarts purged) sees them."""
  from tensorboard.backend.event_processing import plugin_event_accumulator as acc  # noqa: PLC0415
  from tensorboard.util import tensor_util  # noqa: PLC0415
  events = acc.EventAccumulator(str(workdir), size_guidance={acc.TENSORS: 0})
  events.Reload()
  value = lambda e: float(tensor_util.make_ndarray(e.tensor_proto))
  return {tag: [(e.step, value(e)) for e in events.Tensors(tag)]
          for tag in events.Tags()["tensors"] if tag not in skip}


def pytest_unconfigure(config):
  if _OWN_XLA_CACHE and not hasattr(config, "workerinput"):  # the controller, not an -n worker
    shutil.rmtree(_OWN_XLA_CACHE, ignore_errors=True)
