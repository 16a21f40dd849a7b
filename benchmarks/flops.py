"""FLOP counts for MFU: the model FLOPs of a Transformer train step, and XLA:CPU's count of a step.

Why both: on a GPU, `cost_analysis()` of a compiled step leaves out most of what runs inside cuBLAS
and cuDNN custom calls (measured on an H200, jax 0.11.2: 3.7 TFLOP reported for a step whose
matmuls alone are 12.9 TFLOP, 1.6 GFLOP for a MAML step XLA:CPU counts as 40.7), so MFU from it is
meaningless there. XLA:CPU lowers the same program to plain HLO dots and convolutions and counts
them all; `cpu_flops` compiles a step for the host CPU from abstract arguments (nothing runs) and
returns that count, whatever backend the step is meant for.

Custom calls count zero there too, and on CPU mmjax's convolutions and dense weight gradients
are oneDNN custom calls (mmjax.models.onednn). So the step is traced again with
`fast_ops.onednn_calls(False)`, XLA's convolutions and dots in their place: the same math. It
clears JAX's trace caches around that trace (a cached trace would keep the custom calls), so the
caller's next call traces and compiles afresh.
"""
import jax

from mmjax.models import fast_ops


def cpu_flops(fn, *args) -> float:
  """XLA:CPU's cost_analysis() FLOPs of jit(fn)(*args) compiled with XLA's convolutions and dots;
  args may live on any device."""
  cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=cpu), args)
  with fast_ops.onednn_calls(False):
    cost = jax.jit(fn).lower(*abstract).compile().cost_analysis()
  return float((cost[0] if isinstance(cost, list) else cost)["flops"])


def early_fusion_train_flops(batch: int, patches: int, patch_pixels: int, question_len: int,
                             width: int, depth: int, mlp_dim: int) -> float:
  """Model FLOPs of one train step of an early-fusion FusionTransformer (image patches + question
  tokens, a class token per modality): 2 FLOPs per multiply-add of every matmul, backward = 2x
  forward (input and weight gradients) except for the patch embedding, whose input is data. Norms,
  softmax, GELU and the optimizer are left out, as MFU conventionally does."""
  tokens = patches + 1 + question_len + 1
  per_layer = (2 * tokens * width * 4 * width            # q, k, v and output projections
               + 2 * 2 * tokens * tokens * width          # QK^T and the weighted sum of V
               + 2 * 2 * tokens * width * mlp_dim)        # the MLP's two dense layers
  forward = depth * per_layer + 2 * width * 10            # + the 10-way head on the pooled token
  patch_embedding = 2 * patches * patch_pixels * width
  return float(batch * (3 * forward + 2 * patch_embedding))
