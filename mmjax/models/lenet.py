"""LeNet for 28x28 digits, as in the DANN and Transfer-Learning-Library digit setups."""
import functools

import flax.linen as nn
import jax.numpy as jnp

from mmjax.models import fast_ops as ops


class LeNet(nn.Module):
  """conv 32 5x5 -> pool -> conv 48 5x5 -> pool -> 100 -> 100 -> classes.

  Returns a dict with `features` (the output of the feature extractor, `features` wide, 100 by
  default) and `logits`, so that domain-adaptation losses can use the features. `fast_ops` computes
  the convs and pools with `mmjax.models.fast_ops` (the same function and params, faster on
  XLA:CPU); False uses XLA's own conv and reduce_window, the plain reference the fast version is
  tested against.

  `channels`, `hidden`, `features` and `dropout` give the other LeNets of the domain-adaptation
  literature; Transfer-Learning-Library's digits LeNet is channels (20, 50), hidden 500, features
  256, dropout 0.5: channel dropout after conv2 and dropout after fc1, active when train=True.
  """
  num_classes: int = 10
  hidden: int = 100
  features: int = 0  # 0: the same as hidden
  channels: tuple = (32, 48)
  dropout: float = 0.0
  fast_ops: bool = True
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.fast_ops:
      conv = functools.partial(nn.Conv, conv_general_dilated=ops.conv_general_dilated)
      pool = ops.max_pool
    else:
      conv, pool = nn.Conv, lambda h, window: nn.max_pool(h, window, strides=window)
    x = x.astype(self.dtype)
    x = conv(self.channels[0], (5, 5), padding="VALID", dtype=self.dtype, name="conv1")(x)
    x = pool(nn.relu(x), (2, 2))
    x = conv(self.channels[1], (5, 5), padding="VALID", dtype=self.dtype, name="conv2")(x)
    if self.dropout:  # whole channels (Dropout2d); it commutes with the ReLU and the max-pool
      x = nn.Dropout(self.dropout, broadcast_dims=(1, 2), deterministic=not train)(x)
    x = pool(nn.relu(x), (2, 2))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name="fc1")(x))
    if self.dropout:
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    features = nn.relu(nn.Dense(self.features or self.hidden, dtype=self.dtype, name="fc2")(x))
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(features)
    return {"features": features, "logits": logits.astype(jnp.float32)}
