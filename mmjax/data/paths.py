"""Where mmjax finds raw data files and where tfds keeps the prepared datasets."""
import os
import pathlib

DATA_DIR_ENV = "MMJAX_DATA_DIR"
TFDS_DIR_ENV = "MMJAX_TFDS_DIR"
DEFAULT_DATA_DIR = "~/mmjax_data"
DEFAULT_TFDS_DIR = "~/tensorflow_datasets"


def _resolve(explicit: str | os.PathLike | None, env_var: str, default: str) -> pathlib.Path:
  # An empty string (e.g. `MMJAX_DATA_DIR=` in a shell) means "not set", not the current directory.
  chosen = explicit or os.environ.get(env_var) or default
  return pathlib.Path(chosen).expanduser().absolute()


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """Raw data directory: `data_dir` (config.data.dir), else $MMJAX_DATA_DIR, else ~/mmjax_data."""
  return _resolve(data_dir, DATA_DIR_ENV, DEFAULT_DATA_DIR)


def resolve_tfds_dir(tfds_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """Prepared tfds directory: `tfds_dir` (config.data.tfds_dir), else $MMJAX_TFDS_DIR, else ~/tensorflow_datasets."""
  return _resolve(tfds_dir, TFDS_DIR_ENV, DEFAULT_TFDS_DIR)
