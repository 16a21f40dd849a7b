"""MNIST as a tfds dataset: tfds's own MNIST builder, fed from the IDX files in the mmjax data directory."""
import os
import pathlib

import tensorflow_datasets as tfds
from tensorflow_datasets.image_classification import mnist as tfds_mnist

from mmjax.data import paths
from mmjax.data import raw_files

_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"  # tfds's CVDF mirror of yann.lecun.com
# sha256 from shared/data/mnist/SOURCE.md (the official files).
RAW_FILES = tuple(raw_files.RawFile(name, _URL + name, sha256) for name, sha256 in (
    ("train-images-idx3-ubyte.gz", "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
    ("train-labels-idx1-ubyte.gz", "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
    ("t10k-images-idx3-ubyte.gz", "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
    ("t10k-labels-idx1-ubyte.gz", "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
))
# split -> (images file, labels file, number of examples)
_SPLIT_FILES = {
    tfds.Split.TRAIN: ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60_000),
    tfds.Split.TEST: ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10_000),
}


class MmjaxMnist(tfds_mnist.MNIST):
  """tfds's MNIST (features, example generation) with the raw files taken from `raw_dir`.

  Registered as `mmjax_mnist` so that it never clashes with tfds's own `mnist`.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "tfds MNIST 3.0.1 from the mmjax data directory, in IDX file order."}

  def __init__(self, *, raw_dir: str | os.PathLike | None = None, **kwargs):
    """`raw_dir` holds the 4 IDX .gz files (default `<resolve_data_dir()>/mnist`); kwargs go to tfds."""
    self._raw_dir = pathlib.Path(raw_dir) if raw_dir else paths.resolve_data_dir() / "mnist"
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    info = super()._info()
    # Ordered storage: example i of a split is image i of its IDX file, which is what users and tests
    # expect when they compare with the raw files; training shuffles on its own anyway.
    return tfds.core.DatasetInfo(
        builder=self, description=info.description, features=info.features,
        supervised_keys=info.supervised_keys, homepage=info.homepage, citation=info.citation,
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    files = raw_files.fetch_raw_files("mnist", self._raw_dir, RAW_FILES)
    # tfds's _generate_examples reads uncompressed IDX; extraction goes to dl_manager's directory.
    idx = dl_manager.extract({name: os.fspath(path) for name, path in files.items()})
    return [
        tfds.core.SplitGenerator(
            name=split,
            gen_kwargs=dict(num_examples=num_examples, data_path=idx[images], label_path=idx[labels]))
        for split, (images, labels, num_examples) in _SPLIT_FILES.items()
    ]
