"""USPS handwritten digits as a tfds dataset, built from the ESL `zip.*.gz` files in the mmjax data directory."""
import gzip
import os
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from mmjax.data import paths
from mmjax.data import raw_files

_URL = "https://hastie.su.domains/ElemStatLearn/datasets/"
# sha256 from shared/data/usps/SOURCE.md.
RAW_FILES = (
    raw_files.RawFile("zip.train.gz", _URL + "zip.train.gz",
                      "66ebf231ab51f2cf6ac1a892d0f98ccffee1079d7a5db638c1f11f366046ca16"),
    raw_files.RawFile("zip.test.gz", _URL + "zip.test.gz",
                      "8dacc3c6e136af6c3488de9e5113a7daf140c8c2f1f0b61c54ee02f03f1a962f"),
)
IMAGE_SIZE = 16
_PIXELS = IMAGE_SIZE * IMAGE_SIZE

_CITATION = """\
@article{hull1994database,
  title={A database for handwritten text recognition research},
  author={Hull, Jonathan J.},
  journal={IEEE Transactions on Pattern Analysis and Machine Intelligence},
  volume={16}, number={5}, pages={550--554}, year={1994}
}
"""


class MmjaxUsps(tfds.core.GeneratorBasedBuilder):
  """USPS digits: 16x16 grey images, 7291 train / 2007 test, stored as in the raw files."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "ESL zip.train/zip.test, [-1, 1] grey values stored as uint8 [0, 255]."}

  def __init__(self, *, raw_dir: str | os.PathLike | None = None, **kwargs):
    """`raw_dir` holds zip.train.gz and zip.test.gz (default `<resolve_data_dir()>/usps`); kwargs go to tfds."""
    self._raw_dir = pathlib.Path(raw_dir) if raw_dir else paths.resolve_data_dir() / "usps"
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=("USPS handwritten digits (US Postal Service envelopes), 16x16 grey images, "
                     "in the version of Hastie, Tibshirani & Friedman's Elements of Statistical "
                     "Learning. 0 is background and 255 full ink."),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 1)),
            "label": tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=("image", "label"),
        homepage="https://hastie.su.domains/ElemStatLearn/data.html",
        citation=_CITATION,
        # Example i of a split is line i of its raw file.
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # The raw files come from the mmjax data directory.
    files = raw_files.fetch_raw_files("usps", self._raw_dir, RAW_FILES)
    return {
        tfds.Split.TRAIN: self._generate_examples(files["zip.train.gz"]),
        tfds.Split.TEST: self._generate_examples(files["zip.test.gz"]),
    }

  def _generate_examples(self, path: pathlib.Path):
    labels, grey = read_raw_file(path)
    images = grey_to_uint8(grey).reshape(-1, IMAGE_SIZE, IMAGE_SIZE, 1)
    for index, (image, label) in enumerate(zip(images, labels)):
      yield index, {"image": image, "label": label}


def read_raw_file(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
  """Parses an ESL zip.*.gz file into int labels [N] and float grey values [N, 256] in [-1, 1]."""
  with gzip.open(path, "rt") as f:
    rows = np.loadtxt(f, dtype=np.float64, ndmin=2)
  if rows.shape[1] != 1 + _PIXELS:
    raise ValueError(f"{path}: expected {1 + _PIXELS} fields per line (label, 16x16 pixels), "
                     f"got {rows.shape[1]}; the file is not in the ESL zip-code format.")
  return rows[:, 0].astype(np.int64), rows[:, 1:]


def grey_to_uint8(grey: np.ndarray) -> np.ndarray:
  """Maps USPS grey values in [-1, 1] (-1 background, 1 ink) to uint8 [0, 255] (0 background)."""
  return np.clip(np.rint((grey + 1.0) * 127.5), 0, 255).astype(np.uint8)
