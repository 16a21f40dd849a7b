"""Datasets as exported arrays: `load_split`'s common form in .npz files, read without TensorFlow.

`load_split` is the data layer's one entry point. It reads `<arrays dir>/<name>/<split>.npz` when
that file exists (the arrays dir is config.data.arrays_dir, else $MMJAX_ARRAYS_DIR), then the split
cache beside the tfds datasets (mmjax.data.split_cache), and otherwise prepares and reads the tfds
dataset (mmjax.data.datasets, which needs TensorFlow Datasets). A
machine without TensorFlow (a GPU image with only JAX in it, say) trains on arrays exported where
TensorFlow is installed:

  python -m mmjax.data.export --datasets=mnist,usps --out=/path/to/arrays

in either example order (the tf order is computed in numpy; mmjax.data.pipeline).
"""
import os
import pathlib
import uuid
import zipfile

import numpy as np

ARRAYS_DIR_ENV = "MMJAX_ARRAYS_DIR"
# "train_fit" and "train_val" split "train" into a fit part and a held-out source validation part
# (model selection: mmjax.selection), the same for every run and seed.
SPLITS = ("train", "test", "train_fit", "train_val")
HOLDOUT_SPLITS = ("train_fit", "train_val")
VAL_FRACTION = 0.2
_VAL_SEED = 20160901  # fixed: the held-out examples never depend on config.seed
# A dataset name "npz:<path>" reads the arrays of a .npz file (e.g. pseudo-labelled target data
# written by reverse validation); its "train" and "test" are the whole file.
NPZ_PREFIX = "npz:"
TMP_SUFFIX = ".tmp.npz"  # save_npz's temporary files end so


def resolve_arrays_dir(arrays_dir: str | os.PathLike | None = None) -> pathlib.Path | None:
  """Exported arrays: `arrays_dir` (config.data.arrays_dir), else $MMJAX_ARRAYS_DIR, else none."""
  chosen = arrays_dir or os.environ.get(ARRAYS_DIR_ENV)
  return pathlib.Path(chosen).expanduser().absolute() if chosen else None


def array_path(root: str | os.PathLike, name: str, split: str) -> pathlib.Path:
  return pathlib.Path(root) / name / f"{split}.npz"


def holdout_indices(num_examples: int, fraction: float = VAL_FRACTION) -> tuple[np.ndarray, np.ndarray]:
  """(fit, val): sorted indices of a fixed random `fraction` held out of range(num_examples).

  The permutation depends only on num_examples, so every run, seed and method holds out the
  same examples.
  """
  order = np.random.default_rng(_VAL_SEED).permutation(num_examples)
  num_val = int(round(fraction * num_examples))
  if not 0 < num_val < num_examples:
    raise ValueError(f"cannot hold out {fraction:.0%} of {num_examples} examples as validation")
  return np.sort(order[num_val:]), np.sort(order[:num_val])


def cut_holdout(train: dict[str, np.ndarray], split: str) -> dict[str, np.ndarray]:
  """The "train_fit" or "train_val" part (`split`) of a dataset's "train" arrays."""
  fit, val = holdout_indices(len(train["label"]))
  keep = fit if split == "train_fit" else val
  return {key: value[keep] for key, value in train.items()}


def load_npz(path: str | os.PathLike, what: str) -> dict[str, np.ndarray]:
  """The arrays of a .npz file with a 'label' array (int32); a clear error if it is missing or bad."""
  if not os.path.isfile(path):
    raise ValueError(f"{what}: no such file {path}")
  try:
    with np.load(path) as npz:
      arrays = {key: npz[key] for key in npz.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise ValueError(f"{what}: cannot read {path} ({type(e).__name__}: {e}); export it again") from e
  if "label" not in arrays:
    raise ValueError(f"{what} has no 'label' array; it has {sorted(arrays)}")
  arrays["label"] = arrays["label"].astype(np.int32)
  return arrays


def save_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> pathlib.Path:
  """Writes `arrays` compressed, through a temporary file and a rename (never half a file).

  The temporary file (`.<name>.<pid>.<random>.tmp.npz` beside `path`) is this writer's own, so
  several processes may write the same path at once: each renames a whole file. It is removed if
  the write fails; one left by a killed writer stays (see split_cache).
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex}{TMP_SUFFIX}")
  try:
    with open(tmp, "xb") as f:
      np.savez_compressed(f, **arrays)
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()
  return path


def load_split(name: str, split: str, *, data_dir: str | os.PathLike | None = None,
               tfds_dir: str | os.PathLike | None = None,
               arrays_dir: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
  """A whole split in the common form (see mmjax.data.datasets.load_split for every dataset's).

  Exported arrays come first; then the split cache beside the tfds datasets (mmjax.data.split_cache:
  the arrays tfds gave last time, while its prepared files and the data code are unchanged); then
  the tfds dataset (prepared from the raw files in the data directory on first use).
  """
  if name.startswith(NPZ_PREFIX):
    return load_npz(name[len(NPZ_PREFIX):], f"dataset {name}")
  root = resolve_arrays_dir(arrays_dir)
  if split in HOLDOUT_SPLITS and root is not None and array_path(root, name, "train").exists():
    return cut_holdout(load_split(name, "train", arrays_dir=root), split)
  if root is not None and array_path(root, name, split).exists():
    return load_npz(array_path(root, name, split), f"exported arrays of {name}/{split}")
  from mmjax.data import split_cache  # what tfds gave last time, while it would still give it
  holdout = split in HOLDOUT_SPLITS
  cached = split_cache.read(name, "train" if holdout else split, tfds_dir)
  if cached is not None:
    return cut_holdout(cached, split) if holdout else cached
  try:
    from mmjax.data import datasets  # TensorFlow Datasets
  except ImportError as e:
    where = (f"there is no {array_path(root, name, split)}" if root is not None else
             f"no arrays dir is set (config.data.arrays_dir or ${ARRAYS_DIR_ENV})")
    where += " and the split cache of the tfds dir has no valid copy of it"
    raise ImportError(
        f"dataset {name}/{split}: {where}, and reading it from tfds needs TensorFlow Datasets, "
        f"which cannot be imported here ({e}). Either install tensorflow and tensorflow-datasets "
        f"(requirements.txt), or export the arrays on a machine that has them: python -m "
        f"mmjax.data.export --datasets={name} --out=DIR, copy DIR here and set "
        f"config.data.arrays_dir=DIR (or ${ARRAYS_DIR_ENV}).") from e
  return datasets.load_split(name, split, data_dir=data_dir, tfds_dir=tfds_dir)
