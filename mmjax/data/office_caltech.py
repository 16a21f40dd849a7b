"""Office-Caltech10 (amazon, webcam, dslr, caltech) as a tfds dataset: the GFK release's SURF histograms.

Gong et al. 2012's 800-word bag-of-visual-words features of the 10 classes shared by Office-31
(Saenko et al. 2010) and Caltech-256. Domain adaptation uses each domain whole, so each has a single
split, "train".
"""
import os
import pathlib

import numpy as np
import scipy.io
import tensorflow_datasets as tfds

from mmjax.data import paths
from mmjax.data import raw_files

RAW_FOLDER = "office_caltech10"
NUM_FEATURES = 800
# The conventional class order (alphabetical folder names); the .mat files store only labels 1..10.
CLASS_NAMES = ("back_pack", "bike", "calculator", "headphones", "keyboard", "laptop_computer", "monitor",
               "mouse", "mug", "projector")
_URL = ("https://raw.githubusercontent.com/hnjzlishuang/DTLC/3ce213866d4d28a0bd4e0fe596342046f20ce99c/"
        "data/Office%2BCaltech10_SURF/")
# domain -> raw file, sha256 from shared/data/office_caltech10/SOURCE.md.
RAW_FILES = {
    domain: raw_files.RawFile(name, _URL + name, sha256) for domain, name, sha256 in (
        ("amazon", "amazon_SURF_L10.mat",
         "df32548b994e18d364c99e1f317e1fae100597259f0423a41b90f4f68187bb1f"),
        ("webcam", "webcam_SURF_L10.mat",
         "a6a9c78b4b7181dfbb58bcfd351d4ebd737f171c31247b8884948aa156d3f700"),
        ("dslr", "dslr_SURF_L10.mat",
         "44d673c68e1d07b837893aa74dba3b986e4a6cc3fd66f0dd357683bdef059216"),
        ("caltech", "Caltech10_SURF_L10.mat",
         "4f9334c8ced489d5054de97a5fd51a61f017f3bcd1f38c9a85c6d78cb9d7bda5"),
    )
}
DOMAINS = tuple(RAW_FILES)
# Below this a visual word's std is zero up to rounding: the word is constant in the domain.
_MIN_STD = 1e-12

_CITATION = """\
@inproceedings{gong2012geodesic,
  title={Geodesic Flow Kernel for Unsupervised Domain Adaptation},
  author={Gong, Boqing and Shi, Yuan and Sha, Fei and Grauman, Kristen},
  booktitle={CVPR}, pages={2066--2073}, year={2012}
}
@inproceedings{saenko2010adapting,
  title={Adapting Visual Category Models to New Domains},
  author={Saenko, Kate and Kulis, Brian and Fritz, Mario and Darrell, Trevor},
  booktitle={ECCV}, pages={213--226}, year={2010}
}
"""


class MmjaxOfficeCaltech10(tfds.core.GeneratorBasedBuilder):
  """One config per domain, all its images in split "train" (958/295/157/1123), in .mat file order.

  Stores the raw visual-word counts; `features_and_labels` applies the usual preprocessing.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "GFK SURF_L10 .mat files: uint8 counts [800], labels 1..10 stored as 0..9."}
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name=domain, description=f"Office-Caltech10 {domain} images.")
      for domain in DOMAINS]

  def __init__(self, *, raw_dir: str | os.PathLike | None = None, **kwargs):
    """`raw_dir` holds the *_SURF_L10.mat files (default `<resolve_data_dir()>/office_caltech10`).

    kwargs (data_dir, config: the domain) go to tfds.
    """
    self._raw_dir = pathlib.Path(raw_dir) if raw_dir else paths.resolve_data_dir() / RAW_FOLDER
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=("Office-Caltech10 SURF features (Gong et al. 2012): per image, a histogram of 800 "
                     "visual words (codebook learned on amazon). counts are the raw histogram counts."),
        features=tfds.features.FeaturesDict({
            "counts": tfds.features.Tensor(shape=(NUM_FEATURES,), dtype=np.uint8),
            "label": tfds.features.ClassLabel(names=CLASS_NAMES),
        }),
        supervised_keys=("counts", "label"),
        homepage="https://github.com/hnjzlishuang/DTLC",
        citation=_CITATION,
        # Example i is row i of the .mat file.
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # The raw files come from the mmjax data directory.
    raw_file = RAW_FILES[self.builder_config.name]
    path = raw_files.fetch_raw_files(RAW_FOLDER, self._raw_dir, [raw_file])[raw_file.name]
    return {tfds.Split.TRAIN: self._generate_examples(path)}

  def _generate_examples(self, path: pathlib.Path):
    counts, labels = read_mat_file(path)
    for index, (row, label) in enumerate(zip(counts, labels)):
      yield index, {"counts": row, "label": label}


def read_mat_file(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
  """Reads a *_SURF_L10.mat file: uint8 counts [n, 800] and labels [n] in 0..9 (the file's 1..10, - 1)."""
  contents = scipy.io.loadmat(path)
  counts, labels = contents.get("fts"), contents.get("labels")
  if (counts is None or labels is None or counts.dtype != np.uint8 or counts.ndim != 2
      or counts.shape[1] != NUM_FEATURES or labels.size != len(counts)
      or not np.isin(labels, np.arange(1, 11)).all()):
    raise ValueError(f"{path}: expected 'fts' uint8 (n, {NUM_FEATURES}) and 'labels' (n, 1) in 1..10; "
                     "the file is not a GFK Office-Caltech10 SURF file.")
  return counts, labels.ravel().astype(np.int64) - 1


def features_and_labels(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """A whole domain's stored images -> {"features": float32 [N, 800] normalised, "label": int32 [N]}."""
  return {"features": normalize_histograms(arrays["counts"]), "label": arrays["label"].astype(np.int32)}


def normalize_histograms(counts: np.ndarray) -> np.ndarray:
  """The GFK preprocessing (Gong et al. 2012, code release) of SURF histograms [N, 800], as float32.

  Each histogram is divided by its sum, then each visual word is z-scored with the mean and population
  std over these histograms (MATLAB's `zscore(X, 1)`), so pass a whole domain. A word constant over
  the domain gets std 1 instead of 0, as in MATLAB, and so maps to 0.
  """
  histograms = counts.astype(np.float64)
  # An empty histogram (none in the released files) stays all zeros rather than becoming NaN.
  histograms /= np.maximum(histograms.sum(axis=1, keepdims=True), 1.0)
  mean = histograms.mean(axis=0)
  std = histograms.std(axis=0)
  std = np.where(std > _MIN_STD, std, 1.0)
  return ((histograms - mean) / std).astype(np.float32)
