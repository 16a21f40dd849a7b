"""TensorFlow is only mmjax's input pipeline: keep it on the CPU so that it never takes accelerator memory from JAX."""
import functools

import tensorflow as tf
from absl import logging


@functools.cache
def keep_tf_on_cpu() -> None:
  """Hides every GPU from TensorFlow; called before any TF work, effective once per process."""
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError as e:
    # TF was initialised elsewhere first; its devices can no longer change, so say so and go on.
    logging.warning("Could not hide GPUs from TensorFlow, it may take accelerator memory: %s", e)
