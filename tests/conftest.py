"""Test setup: 4 fake CPU devices, the shared data directory, a per-session tfds cache."""
import os
import pathlib

# Must happen before JAX starts: every test process sees 4 CPU devices.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = pathlib.Path(__file__).resolve().parents[1]
os.environ.setdefault("MMJAX_DATA_DIR", str((REPO / ".." / "shared" / "data").resolve()))
# Prepared tfds datasets are cached across test runs on this machine; the builder
# tests themselves prepare into fresh temporary directories.
os.environ.setdefault("MMJAX_TFDS_DIR", str(pathlib.Path.home() / ".cache" / "mmjax" / "tfds"))
