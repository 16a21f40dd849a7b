"""Omniglot drawings as image + pen strokes (Lake et al. 2015): an instance-level cross-modal set.

Each drawing of images_background_small1/2 comes with its online pen trajectory (the strokes_* zips,
same relative paths), so image and strokes are two views of one drawing. The two zips share Greek
and Latin (1000 identical drawings), kept once. Split by alphabet, so by character:
  train: small1's alphabets, Balinese, Early_Aramaic, Greek, Korean, Latin (136 characters, 2720);
  test:  the alphabets only small2 has, Japanese_(katakana), Sanskrit, Tagalog (106 characters, 2120).

Strokes are resampled to STROKE_POINTS points evenly spaced in arc length along each stroke, points
shared among the strokes in proportion to their lengths (at least 2 per stroke of positive length,
1 per dot), and stored as rows (dx, dy, pen_lift), a stroke-3 format (Graves 2013; Ha & Eck 2018):
(dx, dy) is the move from the previous point (from the image's top-left corner for the first), in
units of the 105-pixel image side, x right and y down, so that the cumulative sum is the point's
position in [0, 1]^2 (a few strokes leave the canvas slightly). pen_lift is 1 on each stroke's first
point: the move to it is made with the pen lifted (sketch-rnn marks the point before instead; this
way no real row is all zero, even where a stroke starts at the previous one's end). A drawing with a
line fills all STROKE_POINTS rows; a drawing of dots only (one in the set) has one row per dot, then
zero rows, which are padding. An all-zero row moves nowhere and draws nothing, so every zero row may
be taken as padding (2 real rows in the set are zero: strokes that come back to a sampled point).
"""
import io
import os
import pathlib
import re
import zipfile

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from mmjax.data import paths
from mmjax.data import raw_files

RAW_FOLDER = "omniglot"
_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/057f034baf2ecb8530bc5710e5a23584d2a519cc/python/"
# sha256 from shared/data/omniglot/SOURCE.md.
RAW_FILES = tuple(raw_files.RawFile(name, _URL + name, sha256) for name, sha256 in (
    ("images_background_small1.zip", "f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4"),
    ("images_background_small2.zip", "3ccaa407515a8778e5d0861875af38b17e418f301ad5bb3b5a6b65d901a41c7f"),
    ("strokes_background_small1.zip", "8cb3960fb6cf4ccf5f064ad83169f828c36c36782a0f6e7faacb7ecfae4468a2"),
    ("strokes_background_small2.zip", "345bf2141efbea062833dbb2828abbc23d9e07825e46f2afdd4daecddfed6e78"),
))
SPLIT_ALPHABETS = {
    "train": ("Balinese", "Early_Aramaic", "Greek", "Korean", "Latin"),
    "test": ("Japanese_(katakana)", "Sanskrit", "Tagalog"),
}
RAW_IMAGE_SIZE = 105
STROKE_POINTS = 64
DRAWERS = 20  # drawings per character
# <alphabet>/characterNN/<character id>_<drawer>, the path of a drawing inside both zips.
_DRAWING_PATH = re.compile(r"[^/]+/([^/]+)/character\d+/(\d{4})_(\d{2})\.(png|txt)")

_CITATION = """\
@article{lake2015human,
  title={Human-level concept learning through probabilistic program induction},
  author={Lake, Brenden M. and Salakhutdinov, Ruslan and Tenenbaum, Joshua B.},
  journal={Science}, volume={350}, number={6266}, pages={1332--1338}, year={2015}
}
"""


class MmjaxOmniglotStrokes(tfds.core.GeneratorBasedBuilder):
  """Omniglot small1/small2 drawings: 105x105 image and resampled strokes, ordered by drawing id."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": f"Split by alphabet; strokes resampled to {STROKE_POINTS} stroke-3 rows."}

  def __init__(self, *, raw_dir: str | os.PathLike | None = None, **kwargs):
    """`raw_dir` holds the 4 *_background_small*.zip files (default `<resolve_data_dir()>/omniglot`);
    kwargs go to tfds."""
    self._raw_dir = pathlib.Path(raw_dir) if raw_dir else paths.resolve_data_dir() / RAW_FOLDER
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=("Omniglot drawings (Lake et al. 2015) of images_background_small1/2: the 105x105 "
                     "image (255 ink) and the pen strokes as stroke-3 rows. label is the character's "
                     "index within the split, character the Omniglot character id, drawing = "
                     "(character - 1) * 20 + drawer - 1, unique over all of Omniglot."),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(RAW_IMAGE_SIZE, RAW_IMAGE_SIZE, 1)),
            "strokes": tfds.features.Tensor(shape=(STROKE_POINTS, 3), dtype=np.float32),
            "label": tfds.features.Scalar(dtype=np.int32),
            "character": tfds.features.Scalar(dtype=np.int32),
            "drawing": tfds.features.Scalar(dtype=np.int32),
        }),
        homepage="https://github.com/brendenlake/omniglot",
        citation=_CITATION,
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # The raw files come from the mmjax data directory.
    files = raw_files.fetch_raw_files(RAW_FOLDER, self._raw_dir, RAW_FILES)
    drawings = read_drawings(files)
    return {split: self._generate_examples(drawings, alphabets)
            for split, alphabets in SPLIT_ALPHABETS.items()}

  def _generate_examples(self, drawings: dict, alphabets: tuple[str, ...]):
    keys = sorted((key for key in drawings if key[0] in alphabets), key=lambda key: key[1:])
    characters = sorted({character for _, character, _ in keys})
    for alphabet, character, drawer in keys:
      png, strokes = drawings[alphabet, character, drawer]
      drawing = (character - 1) * DRAWERS + drawer - 1
      yield drawing, {"image": read_image(png), "strokes": resample_strokes(strokes, STROKE_POINTS),
                      "label": characters.index(character), "character": character,
                      "drawing": drawing}


def read_drawings(files: dict[str, pathlib.Path]) -> dict[tuple[str, int, int], tuple[bytes, list]]:
  """{(alphabet, character id, drawer): (png bytes, strokes)} of both small sets.

  A drawing in both sets must be the same in both; each image must have its stroke file.
  """
  images, strokes = {}, {}
  for name, path in files.items():
    with zipfile.ZipFile(path) as archive:
      for member in archive.namelist():
        match = _DRAWING_PATH.fullmatch(member)
        if not match:
          continue  # folders and __MACOSX/.DS_Store junk
        key = (match[1], int(match[2]), int(match[3]))
        found = images if name.startswith("images") else strokes
        contents = archive.read(member)
        if found.setdefault(key, contents) != contents:
          raise ValueError(f"{path}: {member} differs from the same drawing in the other small set.")
  if images.keys() != strokes.keys():
    raise ValueError(f"{len(images.keys() ^ strokes.keys())} drawings have an image or strokes only; "
                     "the zips are not Omniglot's images/strokes_background_small1/2.")
  return {key: (images[key], parse_strokes(strokes[key].decode())) for key in images}


def read_image(png: bytes) -> np.ndarray:
  """A 105x105 1-bit Omniglot PNG (white background) -> uint8 [105, 105, 1], 255 ink, 0 background."""
  background = np.array(Image.open(io.BytesIO(png)), dtype=bool)
  return np.where(background, 0, 255).astype(np.uint8)[..., None]


def parse_strokes(text: str) -> list[np.ndarray]:
  """An Omniglot stroke file (START, x,y,t lines, BREAK after each stroke) -> per stroke float64
  [n, 2] (x, y) in image pixels, y down (the files store -y)."""
  strokes, current = [], []
  for line in text.split():
    if line == "START":
      current = []
    elif line == "BREAK":
      strokes.append(np.array(current).reshape(-1, 2) * (1.0, -1.0))
      current = []
    else:
      current.append([float(v) for v in line.split(",")[:2]])
  if current or not strokes:
    raise ValueError("a stroke file must end with BREAK and hold at least one stroke")
  return strokes


def resample_strokes(strokes: list[np.ndarray], num_points: int) -> np.ndarray:
  """Strokes in pixels -> float32 [num_points, 3] stroke-3 rows (dx, dy, pen_lift), see the module doc."""
  lengths = np.array([_arc_length(stroke)[-1] for stroke in strokes])
  counts = _points_per_stroke(lengths, num_points)
  points = np.concatenate([_resample(stroke, count) for stroke, count in zip(strokes, counts)])
  rows = np.zeros((num_points, 3), np.float32)  # rows after the points stay zero: padding
  rows[:len(points), :2] = np.diff(points, axis=0, prepend=np.zeros((1, 2))) / RAW_IMAGE_SIZE
  rows[np.cumsum(counts) - counts, 2] = 1
  return rows


def _arc_length(stroke: np.ndarray) -> np.ndarray:
  return np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(stroke, axis=0), axis=1))])


def _points_per_stroke(lengths: np.ndarray, num_points: int) -> np.ndarray:
  """Largest-remainder shares of num_points in proportion to length, after the minimum per stroke.

  A drawing of dots only (zero total length) gets one point per dot and fewer than num_points.
  """
  counts = np.where(lengths > 0, 2, 1)
  if counts.sum() > num_points:
    counts = np.ones_like(counts)
  if counts.sum() > num_points:
    raise ValueError(f"a drawing with {len(lengths)} strokes needs more than {num_points} points")
  if lengths.sum() == 0:
    return counts
  spare = num_points - counts.sum()
  shares = spare * lengths / lengths.sum()
  extra = np.floor(shares).astype(int)
  extra[np.argsort(extra - shares)[:spare - extra.sum()]] += 1  # largest remainders first
  return counts + extra


def _resample(stroke: np.ndarray, count: int) -> np.ndarray:
  """`count` points evenly spaced in arc length from the stroke's first point to its last."""
  distance = _arc_length(stroke)
  if count == 1 or distance[-1] == 0:
    return np.repeat(stroke[:1], count, axis=0)
  keep = np.concatenate([[True], np.diff(distance) > 0])  # np.interp needs increasing distances
  targets = np.linspace(0.0, distance[-1], count)
  return np.stack([np.interp(targets, distance[keep], stroke[keep, axis]) for axis in (0, 1)], axis=1)


def common_form(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Stored examples -> "image" uint8 [N, 105, 105, 1] (load_split resizes it to 28x28), "strokes"
  float32 [N, 64, 3], "label" int32 character index within the split, "drawing" int32 unique id."""
  return {"image": arrays["image"], "strokes": arrays["strokes"].astype(np.float32),
          "label": arrays["label"].astype(np.int32), "drawing": arrays["drawing"].astype(np.int32)}
