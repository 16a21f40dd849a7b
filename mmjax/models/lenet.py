"""LeNet for 28x28 digits, as in the DANN and Transfer-Learning-Library digit setups."""
import functools

import flax.linen as nn
import jax.numpy as jnp

from mmjax.models import fast_ops as ops
from mmjax.models import inits, norms


# Whether the fast path adds each conv's bias after its max-pool (see LeNet.__call__).
BIAS_AFTER_POOL = True


class LeNet(nn.Module):
  """conv 32 5x5 -> pool -> conv 48 5x5 -> pool -> 100 -> 100 -> classes.

  Returns a dict with `features` (the output of the feature extractor, `features` wide, 100 by
  default) and `logits`, so that domain-adaptation losses can use the features. `fast_ops` computes
  the convs and pools with `mmjax.models.fast_ops` and adds each conv's bias after its max-pool
  (the same function and params, faster on XLA:CPU); False uses nn.Conv, relu and nn.max_pool,
  the plain reference the fast version is tested against.

  `channels`, `hidden`, `features` and `dropout` give the other LeNets of the domain-adaptation
  literature; Transfer-Learning-Library's digits LeNet is channels (20, 50), hidden 500, features
  256, dropout 0.5: channel dropout after conv2 and dropout after fc1, active when train=True.
  `bottleneck_norm` puts batch norm between fc2 and its ReLU (that library's bottleneck: Linear,
  BatchNorm1d, ReLU), with running averages (PyTorch's momentum 0.1, eps 1e-5) kept in the
  "batch_stats" collection and used when train=False. `center_inputs` maps [0, 1] inputs to
  [-1, 1] (its Normalize(mean=0.5, std=0.5)). `param_init`: "flax" (flax's default initialisers) or
  "torch" (PyTorch's nn.Conv2d / nn.Linear defaults; `mmjax.models.inits`).
  """
  num_classes: int = 10
  hidden: int = 100
  features: int = 0  # 0: the same as hidden
  channels: tuple = (32, 48)
  dropout: float = 0.0
  bottleneck_norm: bool = False
  center_inputs: bool = False
  fast_ops: bool = True
  param_init: str = "flax"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.fast_ops:
      conv = functools.partial(nn.Conv, conv_general_dilated=ops.conv_general_dilated)
      # ReLU after the 2x2 max-pool: the same values (max commutes with the monotone ReLU), on a
      # quarter of the elements forward and backward.
      pool_relu = lambda h: nn.relu(ops.max_pool(h, (2, 2)))
    else:
      conv = nn.Conv
      pool_relu = lambda h: nn.max_pool(nn.relu(h), (2, 2), strides=(2, 2))
    x = x.astype(self.dtype)
    if self.center_inputs:
      x = 2.0 * x - 1.0
    if self.fast_ops and BIAS_AFTER_POOL:
      # conv without its bias, max-pool, then the bias: max(x + b) = max(x) + b for a per-channel
      # b, exactly in floating point too (rounding is monotone), on a quarter of the elements,
      # and the pool's gradient reads the conv's output itself. Channel dropout (a per-channel
      # factor >= 0) and the ReLU commute with the pool as well.
      for i, width in enumerate(self.channels):
        kernel, bias = inits.ConvParams(width, (5, 5), self.param_init, name=f"conv{i + 1}")(x.shape[-1])
        x = ops.conv_general_dilated(x, kernel.astype(self.dtype), (1, 1), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
        x = ops.max_pool(x, (2, 2)) + bias.astype(self.dtype)
        if i == 1 and self.dropout:  # whole channels (Dropout2d)
          x = nn.Dropout(self.dropout, broadcast_dims=(1, 2), deterministic=not train)(x)
        x = nn.relu(x)
    else:
      x = conv(self.channels[0], (5, 5), padding="VALID", dtype=self.dtype, name="conv1",
               **inits.layer_inits(self.param_init, 25 * x.shape[-1]))(x)
      x = pool_relu(x)
      x = conv(self.channels[1], (5, 5), padding="VALID", dtype=self.dtype, name="conv2",
               **inits.layer_inits(self.param_init, 25 * x.shape[-1]))(x)
      if self.dropout:  # whole channels (Dropout2d); it commutes with the ReLU and the max-pool
        x = nn.Dropout(self.dropout, broadcast_dims=(1, 2), deterministic=not train)(x)
      x = pool_relu(x)
    x = x.reshape(x.shape[0], -1)
    dense = lambda width, name, h: nn.Dense(width, dtype=self.dtype, name=name,
                                            **inits.layer_inits(self.param_init, h.shape[-1]))(h)
    x = nn.relu(dense(self.hidden, "fc1", x))
    if self.dropout:
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    features = dense(self.features or self.hidden, "fc2", x)
    if self.bottleneck_norm:
      features = norms.batch_norm(train, dtype=self.dtype, name="fc2_norm")(features)
    features = nn.relu(features)
    logits = dense(self.num_classes, "head", features)
    return {"features": features, "logits": logits.astype(jnp.float32)}
