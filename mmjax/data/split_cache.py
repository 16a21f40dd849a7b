"""A cache of read splits beside the prepared tfds datasets, so that training skips TensorFlow.

Reading a split from tfds imports TensorFlow (about 5 s a process) and decodes every example. The
first read of a split writes its common form to `<tfds dir>/mmjax_arrays/<name>/<split>.npz`;
later reads load that file with numpy alone, as long as it still describes what tfds would give:

- the prepared tfds directory it was read from still holds the same files (names, sizes and
  modification times), so re-preparing the dataset (a new builder version, a deleted and rebuilt
  tfds dir) is a miss;
- the source of the data layer (every `mmjax/data/*.py`) is the same, so a change to a builder or
  to the common form (image resizing, feature scaling, ...) is a miss;
- the installed tensorflow, tensorflow-datasets and numpy versions are the same.

The description is stored in the file (`__mmjax_cache__`, JSON), so the arrays and their key are
replaced together by one rename. A file that cannot be read (truncated, corrupt: zip's CRC check)
or does not match is ignored with a log line: the split is read from tfds again and rewritten.
Delete `<tfds dir>/mmjax_arrays` to drop the cache. Nothing here imports TensorFlow.
"""
import functools
import hashlib
import importlib.metadata
import json
import os
import pathlib
import uuid
import zipfile

import numpy as np
from absl import logging

from mmjax.data import paths

CACHE_FOLDER = "mmjax_arrays"
META_KEY = "__mmjax_cache__"
FORMAT = 1
_DATA_SOURCES = pathlib.Path(__file__).resolve().parent
_VERSIONED = ("tensorflow", "tensorflow-cpu", "tensorflow-datasets", "numpy")


def cache_path(tfds_dir: str | os.PathLike | None, name: str, split: str) -> pathlib.Path:
  return paths.resolve_tfds_dir(tfds_dir) / CACHE_FOLDER / name / f"{split}.npz"


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
  """sha256 over the data layer's source files (their names and bytes)."""
  digest = hashlib.sha256()
  for source in sorted(_DATA_SOURCES.glob("*.py")):
    digest.update(source.name.encode() + b"\0" + source.read_bytes() + b"\0")
  return digest.hexdigest()


def _versions() -> dict[str, str | None]:
  found = {}
  for dist in _VERSIONED:
    try:
      found[dist] = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
      found[dist] = None
  return found


def prepared_files(prepared_dir: str | os.PathLike) -> list[list]:
  """[name, size, mtime_ns] of every file of a prepared tfds dataset version directory."""
  root = pathlib.Path(prepared_dir)
  return [[entry.name, entry.stat().st_size, entry.stat().st_mtime_ns]
          for entry in sorted(root.iterdir()) if entry.is_file()]


def _key(name: str, split: str, prepared_dir: str | os.PathLike) -> dict:
  return {"format": FORMAT, "name": name, "split": split, "code": code_digest(),
          "versions": _versions(), "prepared_dir": os.fspath(pathlib.Path(prepared_dir).absolute()),
          "prepared_files": prepared_files(prepared_dir)}


def read(name: str, split: str, tfds_dir: str | os.PathLike | None = None
         ) -> dict[str, np.ndarray] | None:
  """The cached common form of name/split, or None (no cache file, a stale one or a bad one)."""
  path = cache_path(tfds_dir, name, split)
  if not path.exists():
    return None
  try:
    with np.load(path, allow_pickle=False) as npz:
      stored = json.loads(str(npz[META_KEY]))
      prepared_dir = stored.get("prepared_dir", "")
      if not os.path.isdir(prepared_dir):
        logging.info("split cache %s: its tfds dataset %s is gone; reading tfds", path, prepared_dir)
        return None
      if stored != _key(name, split, prepared_dir):
        logging.info("split cache %s is stale (the tfds files, the data code or the package "
                     "versions changed); reading tfds", path)
        return None
      arrays = {key: npz[key] for key in npz.files if key != META_KEY}
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
    logging.warning("split cache %s cannot be read (%s: %s); reading tfds and rewriting it", path,
                    type(e).__name__, e)
    return None
  logging.info("Read %s/%s (%d examples) from the split cache %s", name, split,
               len(arrays.get("label", ())), path)
  return arrays


def write(name: str, split: str, arrays: dict[str, np.ndarray], prepared_dir: str | os.PathLike,
          tfds_dir: str | os.PathLike | None = None) -> pathlib.Path | None:
  """Stores name/split's common form, keyed by `prepared_dir` (the tfds version directory it was
  read from); never raises (a cache that cannot be written is only slower)."""
  path = cache_path(tfds_dir, name, split)
  if META_KEY in arrays:
    raise ValueError(f"{META_KEY} is reserved")
  try:
    meta = json.dumps(_key(name, split, prepared_dir), sort_keys=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{split}.{os.getpid()}.{uuid.uuid4().hex}.npz")
    try:
      with open(tmp, "xb") as f:
        np.savez(f, **arrays, **{META_KEY: np.array(meta)})
      os.replace(tmp, path)  # concurrent writers each rename a whole file of the same arrays
    finally:
      if os.path.exists(tmp):
        os.unlink(tmp)
  except OSError as e:
    logging.warning("could not write the split cache %s (%s)", path, e)
    return None
  return path
