"""Amazon reviews (books, dvd, electronics, kitchen) as a tfds dataset, from DANN's svmlight files.

The sentiment benchmark of Ganin et al. 2016 (JMLR 17, Section 5.1) in the mSDA preprocessing of
Chen et al. 2012: counts of 5000 unigram and bigram terms per review, label positive or negative.
"""
import os
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from mmjax.data import paths
from mmjax.data import raw_files

RAW_FOLDER = "amazon_reviews_dann"
DOMAINS = ("books", "dvd", "electronics", "kitchen")
NUM_FEATURES = 5000
_URL = ("https://raw.githubusercontent.com/GRAAL-Research/domain_adversarial_neural_network/"
        "74eec5e0ae06bd6614bce048abba492c16a633e3/data/")
# sha256 from shared/data/amazon_reviews_dann/SOURCE.md; domain -> split -> file.
RAW_FILES = {
    domain: {split: raw_files.RawFile(f"{domain}_{split}.svmlight",
                                      f"{_URL}{domain}_{split}.svmlight", sha256)
             for split, sha256 in hashes.items()}
    for domain, hashes in {
        "books": {"train": "317f9a2ec34b81de770b63a84d8c5cc2dc16bd0be6e079d2ff5b5bad5213ea19",
                  "test": "fe4605c7dcf0e0a9410fd2a32f247caaf9abb352cc6e4c3e0f400853163ad9c4"},
        "dvd": {"train": "95f602aa08bf6b55758f7b0b18df3882fe30acb11987ee60b6b4bb3c44cba733",
                "test": "4fe1b1a15010f78d8d0c49fe362d35fd4677463a45f1ac02a9f410ae1e638060"},
        "electronics": {"train": "7d0061f03ff3827e4f8036b051b5e5828fddc0cd115aa5b212cd28d624dc14e4",
                        "test": "641783bc941839c3a111d3488a1b7e3bd820a61ec14a129e7429b47703aa961d"},
        "kitchen": {"train": "a70b5ebfe1413e0e16280360905f5c3b64389c435cd20c0165dc9d7f293b31b5",
                    "test": "e1502b97a824eb12314be4447394fa736fecb781c0724e6529cd6733ac7ff6d8"},
    }.items()
}
# Term counts are stored as uint8; the largest in the files is 84.
_MAX_COUNT = np.iinfo(np.uint8).max

_CITATION = """\
@inproceedings{blitzer2007biographies,
  title={Biographies, Bollywood, Boom-boxes and Blenders:
         Domain Adaptation for Sentiment Classification},
  author={Blitzer, John and Dredze, Mark and Pereira, Fernando},
  booktitle={ACL}, pages={440--447}, year={2007}
}
@article{ganin2016domain,
  title={Domain-Adversarial Training of Neural Networks},
  author={Ganin, Yaroslav and Ustinova, Evgeniya and Ajakan, Hana and Germain, Pascal and
          Larochelle, Hugo and Laviolette, Fran{\\c{c}}ois and Marchand, Mario and Lempitsky, Victor},
  journal={Journal of Machine Learning Research}, volume={17}, number={59}, pages={1--35}, year={2016}
}
"""


class MmjaxAmazonReviews(tfds.core.GeneratorBasedBuilder):
  """One config per product domain: 2000 train and 3586 to 5945 test reviews, in file order.

  Each review is stored sparsely, as its svmlight line has it: the 0-based indices of its nonzero
  terms (ascending) and their counts. `features_and_labels` turns a batch into dense float32 counts.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "DANN's svmlight files: sparse term indices (uint16) and counts (uint8)."}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=domain, description=f"Amazon {domain} reviews.")
                     for domain in DOMAINS]

  def __init__(self, *, raw_dir: str | os.PathLike | None = None, **kwargs):
    """`raw_dir` holds the svmlight files (default `<resolve_data_dir()>/amazon_reviews_dann`).

    kwargs (data_dir, config: the domain) go to tfds.
    """
    self._raw_dir = pathlib.Path(raw_dir) if raw_dir else paths.resolve_data_dir() / RAW_FOLDER
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=("Amazon product reviews (Blitzer et al. 2007) as 5000-d unigram+bigram counts "
                     "in the mSDA preprocessing (Chen et al. 2012), as distributed with DANN (Ganin "
                     "et al. 2016). term_index holds the 0-based indices of a review's nonzero "
                     "terms, term_count their counts."),
        features=tfds.features.FeaturesDict({
            "term_index": tfds.features.Tensor(shape=(None,), dtype=np.uint16),
            "term_count": tfds.features.Tensor(shape=(None,), dtype=np.uint8),
            "label": tfds.features.ClassLabel(names=["negative", "positive"]),
        }),
        homepage="https://github.com/GRAAL-Research/domain_adversarial_neural_network",
        citation=_CITATION,
        # Example i of a split is line i of its svmlight file.
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # The raw files come from the mmjax data directory.
    files = RAW_FILES[self.builder_config.name]
    paths_by_name = raw_files.fetch_raw_files(RAW_FOLDER, self._raw_dir, list(files.values()))
    return {split: self._generate_examples(paths_by_name[raw_file.name])
            for split, raw_file in files.items()}

  def _generate_examples(self, path: pathlib.Path):
    labels, term_indices, term_counts = read_svmlight(path)
    for index, (label, term_index, term_count) in enumerate(zip(labels, term_indices, term_counts)):
      yield index, {"term_index": term_index.astype(np.uint16),
                    "term_count": term_count.astype(np.uint8),
                    "label": int(label > 0)}


def read_svmlight(path: pathlib.Path) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
  """Parses a DANN svmlight file: labels [N] (-1 or +1), and per line its term indices and counts.

  Checks what the stored form relies on: 0-based ascending indices below 5000, counts in 1..255.
  """
  labels, term_indices, term_counts = [], [], []
  with open(path) as f:
    for line_number, line in enumerate(f, start=1):
      fields = line.split()
      try:
        labels.append(int(fields[0]))
        pairs = [pair.split(":") for pair in fields[1:]]
        index_count = np.array(pairs, dtype=np.int64).reshape(len(pairs), 2)
      except (IndexError, ValueError) as e:
        raise ValueError(f"{path}:{line_number}: expected 'label index:count ...' ({e}).") from e
      term_index, term_count = index_count.T
      _check_line(path, line_number, labels[-1], term_index, term_count)
      term_indices.append(term_index)
      term_counts.append(term_count)
  return np.array(labels, dtype=np.int64), term_indices, term_counts


def _check_line(path, line_number, label, term_index, term_count) -> None:
  problems = []
  if label not in (-1, 1):
    problems.append(f"label {label} is not -1 or +1")
  if term_index.size and (term_index[0] < 0 or term_index[-1] >= NUM_FEATURES
                          or np.any(np.diff(term_index) <= 0)):
    problems.append(f"term indices are not ascending in [0, {NUM_FEATURES})")
  if np.any(term_count < 1) or np.any(term_count > _MAX_COUNT):
    problems.append(f"term counts are not in [1, {_MAX_COUNT}]")
  if problems:
    raise ValueError(f"{path}:{line_number}: {'; '.join(problems)}; "
                     "the file is not DANN's Amazon svmlight.")


def features_and_labels(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Stored reviews -> {"features": float32 term counts [N, 5000], "label": int32 [N], 1 positive}."""
  term_index, term_count = arrays["term_index"], arrays["term_count"]
  features = np.zeros((len(term_count), NUM_FEATURES), np.float32)
  # Batches pad each review's terms with count 0 (tfds's padded_batch); real counts are at least 1.
  rows, slots = np.nonzero(term_count)
  features[rows, term_index[rows, slots]] = term_count[rows, slots]
  return {"features": features, "label": arrays["label"].astype(np.int32)}
