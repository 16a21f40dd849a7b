"""What a model reads from a batch: one entry (`"image"`) or several (`"image,question"`).

`config.data.input_key` names them. One name gives the model that array; several, comma-separated,
give it a dict {name: array}, which is how multimodal models take their modalities.
"""
import jax
import jax.numpy as jnp


def input_names(input_key: str) -> list[str]:
  names = [name.strip() for name in input_key.split(",") if name.strip()]
  if not names:
    raise ValueError(f"config.data.input_key={input_key!r} names no batch entry")
  return names


def model_inputs(batch, input_key: str):
  """The model's input from a batch: an array, or a dict of arrays for several names."""
  names = input_names(input_key)
  missing = [name for name in names if name not in batch]
  if missing:
    raise ValueError(f"config.data.input_key={input_key!r}: the batch has no {missing}; "
                     f"it has {sorted(batch)}")
  if len(names) == 1:
    return batch[names[0]]
  return {name: batch[name] for name in names}


def example_inputs(arrays, input_key: str):
  """Zeros shaped like one example's model input (float32, as the pipeline delivers uint8 data)."""
  def zeros(value):
    dtype = jnp.float32 if value.dtype.kind in "uf" else value.dtype
    return jnp.zeros((1,) + value.shape[1:], dtype)
  return jax.tree.map(zeros, model_inputs(arrays, input_key))


def concat_inputs(first, second):
  """Source and target inputs stacked along the batch axis, for a single forward pass."""
  return jax.tree.map(lambda a, b: jnp.concatenate([a, b]), first, second)


def batch_size(inputs) -> int:
  return jax.tree.leaves(inputs)[0].shape[0]
