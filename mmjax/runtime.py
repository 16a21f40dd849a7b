"""XLA:CPU settings that mmjax's steps rely on for speed, applied through XLA_FLAGS at import.

Since jaxlib 0.10, XLA:CPU hands many convolutions to YNNPACK (the `individual_convolution` fusion
type of `--xla_cpu_experimental_ynn_fusion_type`). On the LeNet convolutions of the digits steps
that path is far slower than XLA's Eigen convolutions (benchmarks/README.md, measured on a 2-core
AVX-512 CPU, jaxlib 0.10.2: conv2's forward 32.7 ms in YNNPACK against 3.5 ms in Eigen; the whole
DANN digits step 118 ms against 58 ms), while it changes nothing measurable for the Transformer and
MAML steps. So `configure()` takes convolutions, and only convolutions, away from YNNPACK (YNNPACK
keeps its dots, reductions and elementwise fusions), before JAX creates its CPU backend.

It leaves XLA_FLAGS alone when the user already set that flag, when MMJAX_XLA_CPU_DEFAULTS=0, or
for a jaxlib outside the versions it was checked on (an unknown flag would abort XLA at start).
Flags only take effect when the backend is created, so import mmjax before running any JAX
computation; `configure()` logs a warning otherwise. The setting touches only XLA:CPU: GPU and TPU
compiles ignore it.
"""
import importlib.metadata
import logging
import os
import sys

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
NO_YNN_CONVOLUTIONS = f"{YNN_FLAG}=-individual_convolution"
CHECKED_JAXLIB = ("0.10.", "0.11.")  # versions whose XLA knows this flag and value


def _backend_started() -> bool:
  bridge = sys.modules.get("jax._src.xla_bridge")
  return bool(bridge is not None and getattr(bridge, "_backends", None))


def configure() -> bool:
  """Adds NO_YNN_CONVOLUTIONS to XLA_FLAGS where safe; returns whether XLA_FLAGS now holds it."""
  flags = os.environ.get("XLA_FLAGS", "")
  if YNN_FLAG in flags:
    return NO_YNN_CONVOLUTIONS in flags.split()
  if os.environ.get("MMJAX_XLA_CPU_DEFAULTS", "1") == "0":
    return False
  try:
    jaxlib_version = importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    return False
  if not jaxlib_version.startswith(CHECKED_JAXLIB):
    return False
  os.environ["XLA_FLAGS"] = f"{flags} {NO_YNN_CONVOLUTIONS}".strip()
  if _backend_started():
    logging.getLogger(__name__).warning(
        "JAX's backends were created before mmjax was imported, so %s does not apply in this "
        "process: convolution steps on XLA:CPU may run ~2x slower (import mmjax first)",
        NO_YNN_CONVOLUTIONS)
  return True
