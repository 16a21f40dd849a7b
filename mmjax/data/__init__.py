"""mmjax's data layer: raw files -> prepared tfds datasets -> arrays in one common form -> batches.

Exported arrays (mmjax.data.arrays) and the split cache of what tfds gave (mmjax.data.split_cache)
skip the tfds step; with them nothing here imports TensorFlow (both example orders are computed in
numpy), which the tfds names below (BUILDERS, get_builder, ...) load on first use.
"""
from mmjax.data.arrays import SPLITS
from mmjax.data.arrays import load_split
from mmjax.data.paths import resolve_data_dir
from mmjax.data.paths import resolve_tfds_dir
from mmjax.data.pipeline import ORDERS
from mmjax.data.pipeline import TrainIterator
from mmjax.data.pipeline import batch_spec
from mmjax.data.pipeline import eval_batches
from mmjax.data.raw_files import MissingDataError

_FROM_DATASETS = ("BUILDERS", "IMAGE_SIZE", "get_builder")


def __getattr__(name):
  if name in _FROM_DATASETS:  # these need TensorFlow Datasets: imported when first asked for
    from mmjax.data import datasets
    return getattr(datasets, name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
