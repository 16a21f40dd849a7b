"""The 4-layer convnet of few-shot learning (Vinyals et al. 2016; Finn et al. 2017, §5.2)."""

import flax.linen as nn
import jax.numpy as jnp

from mmjax.models import fast_ops as ops
from mmjax.models import inits
from mmjax.models.norms import BatchStatsNorm

# MAML's batch norm (Finn et al. 2017, §5.2; their code calls tf.contrib batch_norm in training mode
# at meta-test too): support and query batches are each normalised by themselves, epsilon 1e-3.
MAML_NORM_EPSILON = 1e-3


class Conv4(nn.Module):
  """4 x [3x3 conv `width`, batch-statistics norm, ReLU, downsample by 2], flatten, linear head.

  `pool="stride"` downsamples with stride-2 convs (MAML's Omniglot network: 28x28 -> 2x2x64 = 256
  features); `pool="max"` uses stride-1 convs and 2x2 max-pooling (MAML's MiniImagenet network and
  the Vinyals et al. one; 28x28 -> 1x1x64). Returns {"features", "logits"}. `fast_ops` runs the
  convs (and `pool="max"`'s pooling) through `mmjax.models.fast_ops` (oneDNN on CPU when available;
  the same params and math, derivatives of every order). `fast_variance`: the norms' variance as
  mean(x^2) - mean(x)^2 (fewer passes; `norms.BatchStatsNorm`), False: mean((x - mean)^2).
  """
  num_classes: int = 5
  width: int = 64
  pool: str = "stride"
  dtype: jnp.dtype = jnp.float32
  fast_ops: bool = True
  fast_variance: bool = True  # BatchStatsNorm's use_fast_variance (False: two-pass variance)

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # batch statistics are used in both modes
    if self.pool not in ("stride", "max"):
      raise ValueError(f"Conv4.pool={self.pool!r}; use 'stride' or 'max'")
    stride = 2 if self.pool == "stride" else 1
    x = x.astype(self.dtype)
    for i in range(4):
      if self.fast_ops:
        # nn.Conv's params without its bias's add: the batch-statistics norm below subtracts each
        # channel's batch mean, so a per-channel constant cancels exactly (its gradient is exactly
        # 0; nn.Conv's is 0 up to rounding). That saves a pass over the conv's output and the
        # reduction of the bias gradient (conv4's first layer in MAML: about 23 ms of a 430 ms
        # meta-step on the 2-core CPU). The convs run through fast_ops.
        kernel, _ = inits.ConvParams(self.width, (3, 3), name=f"conv{i + 1}")(x.shape[-1])
        x = ops.conv_general_dilated(x, kernel.astype(self.dtype), (stride, stride), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
      else:
        x = nn.Conv(self.width, (3, 3), strides=stride, padding="SAME", dtype=self.dtype,
                    name=f"conv{i + 1}")(x)
      x = BatchStatsNorm(epsilon=MAML_NORM_EPSILON, dtype=self.dtype, relu=True,
                         use_fast_variance=self.fast_variance,
                         name=f"norm{i + 1}")(x)
      if self.pool == "max":  # fast_ops: the same values and derivatives, cheaper on XLA:CPU
        x = (ops.max_pool(x, (2, 2)) if self.fast_ops
             else nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID"))
    features = x.reshape(x.shape[0], -1)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(features)
    return {"features": features, "logits": logits.astype(jnp.float32)}
