"""Audio-visual digits: Free Spoken Digit Dataset recordings, each paired with an image of its digit.

A cross-modal set made by pairing on the class label: every FSDD recording gets its own MNIST (or
USPS) image of the spoken digit, drawn from a seed. FSDD's convention makes the split: recordings
0-4 of each speaker and digit are the test set (300), 5-49 the train set (2700); train recordings
get images of the image dataset's train split, test recordings images of its test split.

Configs:
  mnist         all 6 speakers with MNIST images (the dataset `av_digits`);
  mnist_source  SOURCE_SPEAKERS with MNIST images, and
  usps_target   TARGET_SPEAKERS with USPS images: a multimodal domain adaptation pair whose domains
                differ in both modalities (writers and speakers). Each half has one US-English, one
                German and one other accent.
"""
import dataclasses
import io
import os
import pathlib
import re
import tarfile
import wave
from collections.abc import Callable

import numpy as np
import tensorflow_datasets as tfds

from mmjax.data import paths
from mmjax.data import raw_files

RAW_FOLDER = "fsdd"
_COMMIT = "26eb9aaf76e81b692f806f9140c2d2777410d7a1"
# sha256 from shared/data/fsdd/SOURCE.md. No server holds this tarball: it is packed from the repo.
RAW_FILE = raw_files.RawFile(
    "recordings.tar.gz", None, "2d178c1fd9c2a4522b8dcc3c360c6c86bdfd4e1904a9d1f4bc79ce603d24cbf2",
    how_to_make=("pack it from a clone of https://github.com/Jakobovski/free-spoken-digit-dataset: "
                 f"git checkout {_COMMIT} && git archive HEAD recordings | gzip -n -9 > recordings.tar.gz"))
SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")  # speaker ids 0..5
SOURCE_SPEAKERS = ("george", "jackson", "lucas")  # Greek, US, German accents
TARGET_SPEAKERS = ("nicolas", "theo", "yweweler")  # Belgian French, US, German accents
SAMPLE_RATE = 8000
NUM_SAMPLES = SAMPLE_RATE  # 1 s: longer recordings (20 of 3000) are cropped, shorter zero padded
TEST_RECORDINGS = 5  # FSDD README: recordings 0-4 of each speaker and digit are the test set
SEED = 0
_SPLIT_IDS = {"train": 0, "test": 1}
_FILE_NAME = re.compile(r"recordings/(\d)_([a-z]+)_(\d+)\.wav")

_CITATION = """\
@misc{jackson2018fsdd,
  title={Free Spoken Digit Dataset (FSDD)}, author={Jackson, Zohar and others},
  howpublished={\\url{https://github.com/Jakobovski/free-spoken-digit-dataset}}, year={2018}
}
"""


@dataclasses.dataclass(eq=False)
class AvDigitsConfig(tfds.core.BuilderConfig):
  """Which image dataset gives the images and which speakers' recordings are kept."""
  image_dataset: str = "mnist"
  speakers: tuple[str, ...] = SPEAKERS


class MmjaxAvDigits(tfds.core.GeneratorBasedBuilder):
  """FSDD recordings of the config's speakers with paired images, ordered by (speaker, digit, index)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "FSDD v1.0.10-27 at 8 kHz, 1 s int16 audio, paired images from SEED."}
  BUILDER_CONFIGS = [
      AvDigitsConfig(name="mnist", description="All speakers, MNIST images."),
      AvDigitsConfig(name="mnist_source", speakers=SOURCE_SPEAKERS,
                     description="Domain adaptation source: half the speakers, MNIST images."),
      AvDigitsConfig(name="usps_target", image_dataset="usps", speakers=TARGET_SPEAKERS,
                     description="Domain adaptation target: the other speakers, USPS images."),
  ]

  def __init__(self, *, load_split: Callable[[str, str], dict[str, np.ndarray]],
               raw_dir: str | os.PathLike | None = None, **kwargs):
    """`load_split(name, split)` gives the images (datasets.load_split); `raw_dir` holds
    recordings.tar.gz (default `<resolve_data_dir()>/fsdd`); kwargs (data_dir, config) go to tfds."""
    self._load_split = load_split
    self._raw_dir = pathlib.Path(raw_dir) if raw_dir else paths.resolve_data_dir() / RAW_FOLDER
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=("Free Spoken Digit Dataset recordings (8 kHz, cropped or zero padded to 1 s, "
                     "int16) paired with images of the same digit. recording is FSDD's index 0..49 "
                     "of the file, num_samples its length before cropping, image_index the index of "
                     "the image in its dataset's split."),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(28, 28, 1)),
            "audio": tfds.features.Tensor(shape=(NUM_SAMPLES,), dtype=np.int16),
            "label": tfds.features.ClassLabel(num_classes=10),
            "speaker": tfds.features.ClassLabel(names=SPEAKERS),
            "recording": tfds.features.Scalar(dtype=np.int32),
            "num_samples": tfds.features.Scalar(dtype=np.int32),
            "image_index": tfds.features.Scalar(dtype=np.int32),
        }),
        homepage="https://github.com/Jakobovski/free-spoken-digit-dataset",
        citation=_CITATION,
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # The raw file comes from the mmjax data directory.
    path = raw_files.fetch_raw_files(RAW_FOLDER, self._raw_dir, [RAW_FILE])[RAW_FILE.name]
    recordings = read_recordings(path, self.builder_config.speakers)
    return {split: self._generate_examples(recordings, split) for split in _SPLIT_IDS}

  def _generate_examples(self, recordings: dict[str, np.ndarray], split: str):
    in_split = (recordings["recording"] < TEST_RECORDINGS) == (split == "test")
    mine = {key: values[in_split] for key, values in recordings.items()}
    images = self._load_split(self.builder_config.image_dataset, split)
    image_index = pair_images(mine["label"], images["label"], seed=SEED, stream=_SPLIT_IDS[split])
    for i, index in enumerate(image_index):
      yield i, {"image": images["image"][index], "image_index": index,
                **{key: values[i] for key, values in mine.items()}}


def read_recordings(path: pathlib.Path, speakers: tuple[str, ...]) -> dict[str, np.ndarray]:
  """The recordings of `speakers` in FSDD's tarball, ordered by (speaker, digit, index).

  Returns "audio" int16 [N, NUM_SAMPLES] (cropped or zero padded), "num_samples" (the original
  lengths), "label" (the digit), "speaker" (its index in SPEAKERS) and "recording" (0..49).
  """
  found = []
  with tarfile.open(path) as tar:
    for member in tar:
      match = _FILE_NAME.fullmatch(member.name)
      if match and match[2] in speakers:
        samples = _read_wav(tar.extractfile(member).read(), member.name)
        found.append((SPEAKERS.index(match[2]), int(match[1]), int(match[3]), samples))
  if len(found) != 500 * len(speakers):
    raise ValueError(f"{path}: expected 500 recordings per speaker of {speakers}, found {len(found)}; "
                     "the file is not FSDD's recordings/ folder.")
  found.sort(key=lambda row: row[:3])
  audio = np.zeros((len(found), NUM_SAMPLES), np.int16)
  for row, (*_, samples) in zip(audio, found):
    row[:min(len(samples), NUM_SAMPLES)] = samples[:NUM_SAMPLES]
  speaker, label, recording, samples = zip(*found)
  return {"audio": audio, "num_samples": np.array([len(s) for s in samples], np.int32),
          "label": np.array(label, np.int64), "speaker": np.array(speaker, np.int64),
          "recording": np.array(recording, np.int32)}


def _read_wav(contents: bytes, name: str) -> np.ndarray:
  with wave.open(io.BytesIO(contents)) as wav:
    if (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) != (SAMPLE_RATE, 1, 2):
      raise ValueError(f"{name}: expected 8 kHz mono 16-bit PCM, got {wav.getparams()}.")
    return np.frombuffer(wav.readframes(wav.getnframes()), "<i2")


def pair_images(audio_labels: np.ndarray, image_labels: np.ndarray, *, seed: int,
                stream: int) -> np.ndarray:
  """For each recording, the index of a distinct image with its label, drawn from (seed, stream)."""
  rng = np.random.default_rng([seed, stream])
  image_index = np.zeros(len(audio_labels), np.int32)
  for digit in range(10):
    wanted = np.flatnonzero(audio_labels == digit)
    pool = np.flatnonzero(image_labels == digit)
    if len(pool) < len(wanted):
      raise ValueError(f"{len(wanted)} recordings of digit {digit} but only {len(pool)} images.")
    image_index[wanted] = rng.choice(pool, size=len(wanted), replace=False)
  return image_index


def common_form(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Stored examples -> "image" uint8 [N, 28, 28, 1], "audio" float32 [N, 8000] in [-1, 1)
  (int16 / 32768), "label" int32 digit, "speaker" int32 (index in SPEAKERS)."""
  return {"image": arrays["image"], "audio": arrays["audio"].astype(np.float32) / 32768.0,
          "label": arrays["label"].astype(np.int32), "speaker": arrays["speaker"].astype(np.int32)}
