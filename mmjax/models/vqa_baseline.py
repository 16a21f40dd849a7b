"""The CNN+MLP baseline for Sort-of-CLEVR of the Relation Network paper (Santoro et al. 2017, §5).

Four 3x3 stride-2 convolutions with 24 kernels, batch norm and ReLU (75x75 -> 5x5x24), flattened and
concatenated with the question vector, then an MLP: two 256-unit ReLU layers, dropout and a linear
output, as in the public reference (kimhc6028/relational-networks, `CNN_MLP`).

Batch norm here normalises with the statistics of the batch it sees, in training and evaluation,
and keeps no running averages: the trainer carries params only. Evaluate with large batches.
"""
import flax.linen as nn
import jax.numpy as jnp

from mmjax.models.norms import BatchStatsNorm


class CnnMlpVqa(nn.Module):
  """Image + question vector -> answer logits, with the last hidden layer as `features`."""
  image_key: str = "image"
  question_key: str = "question"
  num_classes: int = 10
  channels: int = 24
  hidden: int = 256
  dropout: float = 0.5
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs, train: bool = False):
    for key in (self.image_key, self.question_key):
      if not isinstance(inputs, dict) or key not in inputs:
        raise ValueError(f"cnn_mlp_vqa needs inputs {self.image_key!r} and {self.question_key!r} "
                         f"(config.data.input_key='{self.image_key},{self.question_key}')")
    question = inputs[self.question_key]
    if question.ndim != 2:
      raise ValueError(f"the question must be one vector per example [B, D], got {question.shape}")
    x = inputs[self.image_key].astype(self.dtype)
    for i in range(4):
      x = nn.Conv(self.channels, (3, 3), strides=(2, 2), dtype=self.dtype, name=f"conv{i}")(x)
      x = BatchStatsNorm(dtype=self.dtype, relu=True, name=f"norm{i}")(x)
    x = jnp.concatenate([x.reshape(x.shape[0], -1), question.astype(self.dtype)], axis=-1)
    x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name="fc1")(x))
    features = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name="fc2")(x))
    x = nn.Dropout(self.dropout, deterministic=not train)(features)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
    return {"logits": logits.astype(jnp.float32), "features": features}
