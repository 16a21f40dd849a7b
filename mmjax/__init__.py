"""mmjax: transfer learning across modalities and domains in JAX/Flax."""
from mmjax import runtime as _runtime

__version__ = "0.1.0"
_runtime.configure()  # XLA:CPU flags, before JAX creates its backends (mmjax/runtime.py)
_runtime.configure_malloc()  # no mmap/munmap of XLA:CPU's per-step buffers (mmjax/runtime.py)
