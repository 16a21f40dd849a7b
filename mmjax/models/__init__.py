"""Model registry: config.model.name -> flax.linen module; the other config.model fields are its fields."""
import dataclasses

import jax.numpy as jnp

from mmjax.models.conv4 import Conv4  # noqa: F401 (re-exported)
from mmjax.models.dual_encoder import DualEncoder  # noqa: F401 (re-exported)
from mmjax.models.fusion import FusionTransformer  # noqa: F401 (re-exported)
from mmjax.models.lenet import LeNet  # noqa: F401 (re-exported)
from mmjax.models.mlp import MLP  # noqa: F401 (re-exported)
from mmjax.models.vqa_baseline import CnnMlpVqa  # noqa: F401 (re-exported)

MODELS = {"lenet": LeNet, "mlp": MLP, "conv4": Conv4, "fusion_transformer": FusionTransformer,
          "cnn_mlp_vqa": CnnMlpVqa, "dual_encoder": DualEncoder}


def build_model(model_config, dtype: str = "float32"):
  """Builds the module that `model_config.name` names, with the remaining fields as hyperparameters."""
  kwargs = dict(model_config)
  name = kwargs.pop("name")
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
  cls = MODELS[name]
  fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
  unknown = sorted(set(kwargs) - fields)
  if unknown:
    raise ValueError(f"model {name!r} has no field(s) {unknown}; its fields are {sorted(fields)}")
  for key, value in kwargs.items():  # ConfigDict stores sequences as lists; modules want tuples
    if isinstance(value, list):
      kwargs[key] = tuple(value)
  if "dtype" in fields:
    kwargs["dtype"] = jnp.dtype(dtype)
  return cls(**kwargs)
