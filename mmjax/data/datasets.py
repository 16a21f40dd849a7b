"""The datasets mmjax knows, as prepared tfds datasets, loaded in one common form.

The common form makes MNIST and USPS two domains of one task: uint8 images [N, 28, 28, 1]
(0 background, 255 full ink) and int32 labels [N]. The domains of a feature-vector family (Amazon
reviews, Office-Caltech10) share float32 "features" [N, D] instead of images. The multimodal
datasets (Sort-of-CLEVR, audio-visual digits, Omniglot image + strokes) add their other modalities
as float32 arrays beside uint8 images.
"""
import contextlib
import dataclasses
import fcntl
import functools
import os
import tempfile
import time
from collections.abc import Callable

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from mmjax.data import amazon
from mmjax.data import arrays as arrays_lib
from mmjax.data import av_digits
from mmjax.data import mnist
from mmjax.data import office_caltech
from mmjax.data import omniglot
from mmjax.data import omniglot_strokes
from mmjax.data import paths
from mmjax.data import sort_of_clevr
from mmjax.data import split_cache
from mmjax.data import tf_runtime
from mmjax.data import usps
from mmjax.data.arrays import NPZ_PREFIX, SPLITS

IMAGE_SIZE = 28


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """Where a dataset name comes from and how it becomes the common form.

  A family of domains shares one tfds builder, one config per domain, and one raw folder.
  `train_only`: the builder has only split "train", the whole domain, which load_split also returns
  for "test" (Office-Caltech10: domain adaptation uses each domain whole).
  `reads_datasets`: the builder pairs its examples with those of other datasets, which it reads
  through a `load_split` argument (audio-visual digits: FSDD recordings with MNIST or USPS images).
  """
  builder_cls: type[tfds.core.DatasetBuilder]
  raw_folder: str  # under the data directory
  common_form: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
  config: str | None = None
  train_only: bool = False
  splits: tuple[str, ...] = SPLITS
  reads_datasets: bool = False


def _images_and_labels(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {"image": resize_images(arrays["image"], IMAGE_SIZE), "label": arrays["label"].astype(np.int32)}


def _omniglot_strokes_form(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {**omniglot_strokes.common_form(arrays), "image": resize_images(arrays["image"], IMAGE_SIZE)}


BUILDERS = {
    "mnist": DatasetSpec(mnist.MmjaxMnist, "mnist", _images_and_labels),
    "usps": DatasetSpec(usps.MmjaxUsps, "usps", _images_and_labels),
    "omniglot": DatasetSpec(omniglot.MmjaxOmniglot, "omniglot", _images_and_labels),
    **{f"amazon_{domain}": DatasetSpec(amazon.MmjaxAmazonReviews, amazon.RAW_FOLDER,
                                       amazon.features_and_labels, config=domain)
       for domain in amazon.DOMAINS},
    **{f"office_{domain}": DatasetSpec(office_caltech.MmjaxOfficeCaltech10, office_caltech.RAW_FOLDER,
                                       office_caltech.features_and_labels, config=domain,
                                       train_only=True)
       for domain in office_caltech.DOMAINS},
    "sort_of_clevr": DatasetSpec(sort_of_clevr.MmjaxSortOfClevr, "sort_of_clevr",
                                 sort_of_clevr.common_form, splits=tuple(sort_of_clevr.SPLIT_SIZES)),
    **{name: DatasetSpec(av_digits.MmjaxAvDigits, av_digits.RAW_FOLDER, av_digits.common_form,
                         config=config, reads_datasets=True)
       for name, config in (("av_digits", "mnist"), ("av_digits_da_source", "mnist_source"),
                            ("av_digits_da_target", "usps_target"))},
    "omniglot_strokes": DatasetSpec(omniglot_strokes.MmjaxOmniglotStrokes, omniglot_strokes.RAW_FOLDER,
                                    _omniglot_strokes_form),
}


def _spec(name: str) -> DatasetSpec:
  spec = BUILDERS.get(name)
  if spec is None:
    raise ValueError(f"Unknown dataset {name!r}; valid names are {list(BUILDERS)}.")
  return spec


def get_builder(name: str, *, data_dir: str | os.PathLike | None = None,
                tfds_dir: str | os.PathLike | None = None) -> tfds.core.DatasetBuilder:
  """Returns the tfds builder of dataset `name`, prepared in the tfds directory.

  Preparing (once per tfds directory) reads the raw files from `<data dir>/<raw folder>/` (the dataset
  name, or its family's folder, e.g. amazon_reviews_dann/), downloading missing ones; it raises
  MissingDataError when they cannot be had. Sort-of-CLEVR has no raw files: it is generated.
  """
  tf_runtime.keep_tf_on_cpu()
  spec = _spec(name)
  extra = {}
  if spec.reads_datasets:
    extra["load_split"] = functools.partial(load_split, data_dir=data_dir, tfds_dir=tfds_dir)
  tfds_root = paths.resolve_tfds_dir(tfds_dir)
  make = lambda: spec.builder_cls(raw_dir=paths.resolve_data_dir(data_dir) / spec.raw_folder,
                                  data_dir=os.fspath(tfds_root), config=spec.config, **extra)
  builder = make()
  if not builder.is_prepared():
    with _preparing(tfds_root, f"{builder.name}_{spec.config or 'default'}"):
      builder = make()  # another process may have prepared it while this one waited
      if not builder.is_prepared():
        _prepare(builder)
  return builder


@contextlib.contextmanager
def _preparing(tfds_root, name: str):
  """Holds an exclusive lock on `<tfds dir>/.prepare_<name>.lock`: processes that need the same
  unprepared dataset at once (the runs or sweeps of a table started in parallel) prepare it one at
  a time, instead of racing to rename tfds's incomplete directory into place."""
  os.makedirs(tfds_root, exist_ok=True)
  with open(os.path.join(tfds_root, f".prepare_{name}.lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


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

  Returns {"image": uint8 [N, 28, 28, 1], "label": int32 [N]} for the digit datasets, and
  {"features": float32 [N, D], "label": int32 [N]} for the feature-vector ones: amazon_* the term
  counts (D = 5000, label 1 positive), office_* the GFK-normalised SURF histograms (D = 800), whose
  "train" and "test" are both the whole domain. "train_fit" and "train_val" are the two parts of
  any dataset's "train" (see `arrays.holdout_indices`); "npz:<path>" names the arrays of a .npz file.
  The multimodal ones (their modules say more):
  sort_of_clevr, splits "train" and "validation", one example per image: "image" uint8
    [N, 75, 75, 3], "question" float32 [N, 20, 11], "label" int32 [N, 20] (sort_of_clevr.ANSWERS
    indices), "relational" int32 [N, 20], "question_type" int32 [N, 20] (sort_of_clevr.QUESTION_TYPES);
  av_digits, av_digits_da_source, av_digits_da_target: "image" uint8 [N, 28, 28, 1], "audio"
    float32 [N, 8000] (1 s at 8 kHz in [-1, 1]), "label" int32 [N] digit, "speaker" int32 [N];
  omniglot_strokes: "image" uint8 [N, 28, 28, 1], "strokes" float32 [N, 64, 3] (dx, dy, pen_lift),
    "label" int32 [N] character index within the split, "drawing" int32 [N] unique drawing id.
  """
  if name.startswith(NPZ_PREFIX):
    return arrays_lib.load_npz(name[len(NPZ_PREFIX):], f"dataset {name}")
  spec = _spec(name)
  if split in arrays_lib.HOLDOUT_SPLITS and "train" in spec.splits:
    return arrays_lib.cut_holdout(load_split(name, "train", data_dir=data_dir, tfds_dir=tfds_dir),
                                  split)
  if split not in spec.splits:
    raise ValueError(f"Unknown split {split!r} of dataset {name!r}; valid splits are {list(spec.splits)}.")
  builder = get_builder(name, data_dir=data_dir, tfds_dir=tfds_dir)
  files_read = split_cache.prepared_files(str(builder.data_dir))  # the cache's key: before the read
  start = time.perf_counter()
  arrays = tfds.as_numpy(builder.as_dataset(split="train" if spec.train_only else split, batch_size=-1))
  logging.info("Read %s/%s (%d examples) in %.1f s", name, split, len(arrays["label"]),
               time.perf_counter() - start)
  common = spec.common_form(arrays)
  split_cache.write(name, split, common, str(builder.data_dir), tfds_dir,  # the next read skips TF
                    files_read=files_read)
  return common


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
  """Resizes uint8 images [N, H, W, C] to [N, size, size, C] (bilinear, antialiased), still uint8."""
  if images.shape[1:3] == (size, size):
    return images
  resized = tf.image.resize(tf.cast(images, tf.float32), (size, size), method="bilinear",
                            antialias=True)
  return np.clip(np.rint(resized.numpy()), 0, 255).astype(np.uint8)
