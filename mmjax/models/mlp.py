"""A multilayer perceptron on feature vectors (Amazon reviews' 5000-d counts, SURF histograms)."""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


class MLP(nn.Module):
  """Dense layers with an activation; the last hidden layer is `features`, then a linear head.

  With hidden=(50,) and activation="sigmoid" this is the DANN paper's shallow network for the
  Amazon reviews (Ganin et al. 2016, §5.1.2).
  """
  num_classes: int = 2
  hidden: Sequence[int] = (50,)
  activation: str = "relu"
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    act = {"relu": nn.relu, "sigmoid": nn.sigmoid, "tanh": jnp.tanh}[self.activation]
    x = x.astype(self.dtype).reshape(x.shape[0], -1)
    for i, width in enumerate(self.hidden):
      x = act(nn.Dense(width, dtype=self.dtype, name=f"fc{i + 1}")(x))
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
    return {"features": x, "logits": logits.astype(jnp.float32)}
