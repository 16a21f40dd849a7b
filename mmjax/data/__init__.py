"""mmjax's data layer: raw files -> prepared tfds datasets -> arrays in one common form -> batches."""
from mmjax.data.datasets import BUILDERS
from mmjax.data.datasets import IMAGE_SIZE
from mmjax.data.datasets import SPLITS
from mmjax.data.datasets import get_builder
from mmjax.data.datasets import load_split
from mmjax.data.paths import resolve_data_dir
from mmjax.data.paths import resolve_tfds_dir
from mmjax.data.pipeline import TrainIterator
from mmjax.data.pipeline import batch_spec
from mmjax.data.pipeline import eval_batches
from mmjax.data.raw_files import MissingDataError
