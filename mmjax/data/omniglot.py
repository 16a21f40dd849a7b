"""Omniglot (Lake et al. 2015) as a tfds dataset: 28x28 images, the 1200/423 character split of MAML.

Built from images_background.npz and images_evaluation.npz in `<data dir>/omniglot/` (see
shared/data/omniglot/SOURCE.md). MAML's code (cbfinn/maml, data_generator.py) pools the characters
of both sets, shuffles them with a fixed seed and takes the first 1200 for meta-training; the
remaining 423 are the meta-test characters here (Vinyals et al. 2016 use the same 1200/423 sizes).
Their shuffle depends on os.listdir order and Python's `random`, so the exact character sets
cannot be reproduced; ours are the first 1200 of a fixed permutation of the character ids.
"""
import os
import pathlib

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from mmjax.data import paths
from mmjax.data import raw_files

_URL = "https://github.com/bitsandscraps/omniglot/raw/b0481240b7eb42393285a93ce7d2f266ff10c62b/"
# sha256 from shared/data/omniglot/SOURCE.md.
RAW_FILES = (
    raw_files.RawFile("images_background.npz", _URL + "images_background.npz",
                      "8bf84167413cd00beacdce3fe582f780ab538d8dbef043a6d688f2527bbce199"),
    raw_files.RawFile("images_evaluation.npz", _URL + "images_evaluation.npz",
                      "0b84c7ffd94c4841c0040e529c86a82eaaccb986d8eadad5673f7991b7475276"),
)
NUM_CHARACTERS = 1623
NUM_TRAIN_CHARACTERS = 1200
DRAWERS = 20
IMAGE_SIZE = 28
SPLIT_SEED = 1  # the permutation of character ids that defines the split

_CITATION = """\
@article{lake2015human,
  title={Human-level concept learning through probabilistic program induction},
  author={Lake, Brenden M. and Salakhutdinov, Ruslan and Tenenbaum, Joshua B.},
  journal={Science}, volume={350}, number={6266}, pages={1332--1338}, year={2015}
}
"""


def split_characters() -> dict[str, np.ndarray]:
  """Character indices (id - 1, 0..1622) of each split: 1200 train, 423 test, both sorted."""
  order = np.random.default_rng(SPLIT_SEED).permutation(NUM_CHARACTERS)
  return {"train": np.sort(order[:NUM_TRAIN_CHARACTERS]),
          "test": np.sort(order[NUM_TRAIN_CHARACTERS:])}


class MmjaxOmniglot(tfds.core.GeneratorBasedBuilder):
  """Omniglot drawings at 28x28 (255 ink, 0 background); label = character id - 1."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "1200/423 character split, 105x105 resized to 28x28 (antialiased)."}

  def __init__(self, *, raw_dir: str | os.PathLike | None = None, **kwargs):
    """`raw_dir` holds the two npz files (default `<resolve_data_dir()>/omniglot`)."""
    self._raw_dir = pathlib.Path(raw_dir) if raw_dir else paths.resolve_data_dir() / "omniglot"
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=("Omniglot: 1623 handwritten characters of 50 alphabets, 20 drawers each, "
                     "resized to 28x28 as in MAML. Train: 1200 characters, test: the other 423."),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 1)),
            "label": tfds.features.ClassLabel(num_classes=NUM_CHARACTERS),
        }),
        supervised_keys=("image", "label"),
        homepage="https://github.com/brendenlake/omniglot",
        citation=_CITATION,
        disable_shuffling=True,  # example order: character id, then drawer
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # The raw files come from the mmjax data directory.
    files = raw_files.fetch_raw_files("omniglot", self._raw_dir, RAW_FILES)
    images = read_images(files["images_background.npz"], files["images_evaluation.npz"])
    return {split: self._generate_examples(images, chars)
            for split, chars in split_characters().items()}

  def _generate_examples(self, images: np.ndarray, characters: np.ndarray):
    for c in characters:
      for k in range(DRAWERS):
        yield int(c) * DRAWERS + k, {"image": images[c, k], "label": int(c)}


def read_images(background: pathlib.Path, evaluation: pathlib.Path) -> np.ndarray:
  """All 1623 x 20 drawings as uint8 [1623, 20, 28, 28, 1], ink 255, in character-id order."""
  chunks = []
  for path in (background, evaluation):
    with np.load(path, allow_pickle=False) as npz:
      ink = ~npz["images"]  # the files store True for background
    if ink.shape[1:] != (DRAWERS, 105, 105):
      raise ValueError(f"{path}: expected images of shape [chars, 20, 105, 105], got {ink.shape}")
    chunks.append(resize_drawings(ink))
  images = np.concatenate(chunks)
  if len(images) != NUM_CHARACTERS:
    raise ValueError(f"expected {NUM_CHARACTERS} characters in the two npz files, got {len(images)}")
  return images


def resize_drawings(ink: np.ndarray) -> np.ndarray:
  """bool [C, 20, 105, 105] -> uint8 [C, 20, 28, 28, 1] (area-averaged ink, antialiased)."""
  flat = ink.reshape(-1, 105, 105, 1).astype(np.float32) * 255.0
  out = []
  for start in range(0, len(flat), 4096):
    small = tf.image.resize(flat[start:start + 4096], (IMAGE_SIZE, IMAGE_SIZE), method="area")
    out.append(np.clip(np.rint(small.numpy()), 0, 255).astype(np.uint8))
  return np.concatenate(out).reshape(ink.shape[:2] + (IMAGE_SIZE, IMAGE_SIZE, 1))
