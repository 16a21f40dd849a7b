"""The datasets mmjax knows, as prepared tfds datasets, loaded in one common form.

The common form makes MNIST and USPS two domains of one task: uint8 images [N, 28, 28, 1]
(0 background, 255 full ink) and int32 labels [N].
"""
import os
import tempfile
import time

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from mmjax.data import mnist
from mmjax.data import paths
from mmjax.data import tf_runtime
from mmjax.data import usps

IMAGE_SIZE = 28
BUILDERS = {"mnist": mnist.MmjaxMnist, "usps": usps.MmjaxUsps}
SPLITS = ("train", "test")


def get_builder(name: str, *, data_dir: str | os.PathLike | None = None,
                tfds_dir: str | os.PathLike | None = None) -> tfds.core.DatasetBuilder:
  """Returns the tfds builder of dataset `name`, prepared in the tfds directory.

  Preparing (once per tfds directory) reads the raw files from `<data dir>/<name>/`, downloading
  missing ones; it raises MissingDataError when they cannot be had.
  """
  tf_runtime.keep_tf_on_cpu()
  builder_cls = BUILDERS.get(name)
  if builder_cls is None:
    raise ValueError(f"Unknown dataset {name!r}; valid names are {sorted(BUILDERS)}.")
  builder = builder_cls(raw_dir=paths.resolve_data_dir(data_dir) / name,
                        data_dir=os.fspath(paths.resolve_tfds_dir(tfds_dir)))
  if not builder.is_prepared():
    _prepare(builder)
  return builder


def _prepare(builder: tfds.core.DatasetBuilder) -> None:
  logging.info("Preparing %s into %s", builder.name, builder.data_dir)
  start = time.perf_counter()
  # Scratch files (decompressed IDX) are only needed while preparing; the raw .gz files stay the source.
  with tempfile.TemporaryDirectory(prefix=f"{builder.name}_download_") as scratch:
    builder.download_and_prepare(download_dir=scratch)
  logging.info("Prepared %s in %.1f s", builder.name, time.perf_counter() - start)


def load_split(name: str, split: str, *, data_dir: str | os.PathLike | None = None,
               tfds_dir: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
  """Reads a whole split into memory in the common form, in the raw files' order.

  Returns {"image": uint8 [N, 28, 28, 1], "label": int32 [N]}.
  """
  if split not in SPLITS:
    raise ValueError(f"Unknown split {split!r} of dataset {name!r}; valid splits are {list(SPLITS)}.")
  builder = get_builder(name, data_dir=data_dir, tfds_dir=tfds_dir)
  start = time.perf_counter()
  arrays = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
  logging.info("Read %s/%s (%d examples) in %.1f s", name, split, len(arrays["label"]),
               time.perf_counter() - start)
  return {"image": resize_images(arrays["image"], IMAGE_SIZE),
          "label": arrays["label"].astype(np.int32)}


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
  """Resizes uint8 images [N, H, W, C] to [N, size, size, C] (bilinear, antialiased), still uint8."""
  if images.shape[1:3] == (size, size):
    return images
  resized = tf.image.resize(tf.cast(images, tf.float32), (size, size), method="bilinear",
                            antialias=True)
  return np.clip(np.rint(resized.numpy()), 0, 255).astype(np.uint8)
