"""Training methods: config.method -> a loss of (params, batch, rng) that the engine differentiates."""
from mmjax.methods import supervised

METHODS = {"supervised": supervised}


def get_method(name: str):
  if name not in METHODS:
    raise ValueError(f"unknown method {name!r}; known methods: {', '.join(sorted(METHODS))}")
  return METHODS[name]
