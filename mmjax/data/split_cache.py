"""A cache of read splits beside the prepared tfds datasets, so that training skips TensorFlow.

Reading a split from tfds imports TensorFlow (about 5 s a process) and decodes every example. The
first read of a split writes its common form to `<tfds dir>/mmjax_arrays/<name>/<split>.npz`;
later reads load that file with numpy alone, as long as it still describes what tfds would give:

- the prepared tfds directory it was read from (stored as tfds opens it, relative to the tfds dir
  and without resolving symlinks, so a copied or moved tfds dir, or a repointed link, checks the
  files tfds would read) still holds the same files: names, sizes and modification times, so
  re-preparing the dataset (a new builder version, a deleted and rebuilt tfds dir) is a miss;
- the source of the data layer (every `mmjax/data/*.py`) is the same, so a change to a builder or
  to the common form (image resizing, feature scaling, ...) is a miss. The digest is taken when
  this module is first imported (mmjax.data.datasets imports it beside the builders; the first
  load_split imports it), and a process whose data code changed on disk since writes nothing;
- the installed tensorflow, tensorflow-datasets and numpy versions are the same (on a machine
  without TensorFlow nothing matches: use exported arrays there, mmjax.data.arrays).

The description is stored in the file (`__mmjax_cache__`, JSON), so the arrays and their key are
replaced together by one rename. A file that cannot be read (truncated, corrupt: zip's CRC check)
or does not match is ignored with a log line: the split is read from tfds again and rewritten.
`$MMJAX_NO_SPLIT_CACHE=1` turns the cache off; deleting `<tfds dir>/mmjax_arrays` drops it. Nothing
here imports TensorFlow.
"""
import functools
import hashlib
import importlib.metadata
import json
import os
import pathlib
import re
import time

import numpy as np
from absl import logging

from mmjax.data import arrays as arrays_lib
from mmjax.data import paths

CACHE_FOLDER = "mmjax_arrays"
META_KEY = "__mmjax_cache__"
OFF_ENV = "MMJAX_NO_SPLIT_CACHE"
FORMAT = 3
_DATA_SOURCES = pathlib.Path(__file__).resolve().parent
_VERSIONED = ("tensorflow", "tensorflow-cpu", "tensorflow-intel", "tensorflow-macos", "tf-nightly",
              "tensorflow-datasets", "numpy")
_NAME = re.compile(r"[A-Za-z0-9_]+")
_STALE_TMP_SECS = 3600
_warned_unwritable = set()


def enabled() -> bool:
  return os.environ.get(OFF_ENV, "").strip().lower() in ("", "0", "false", "no", "off")


def cache_path(tfds_dir: str | os.PathLike | None, name: str, split: str) -> pathlib.Path | None:
  """<tfds dir>/mmjax_arrays/<name>/<split>.npz, or None for a name or split that is no file name."""
  if not (_NAME.fullmatch(name) and _NAME.fullmatch(split)):
    return None
  return paths.resolve_tfds_dir(tfds_dir) / CACHE_FOLDER / name / f"{split}.npz"


def _digest_sources() -> str:
  digest = hashlib.sha256()
  for source in sorted(_DATA_SOURCES.glob("*.py")):
    digest.update(source.name.encode() + b"\0" + source.read_bytes() + b"\0")
  return digest.hexdigest()


CODE_DIGEST = _digest_sources()  # the data code this process runs (taken as it is imported)


def code_digest() -> str:
  """sha256 over the data layer's source files (their names and bytes) when it was imported."""
  return CODE_DIGEST


@functools.lru_cache(maxsize=1)
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


def _key(name: str, split: str, tfds_root: pathlib.Path, prepared: str,
         files: list | None = None) -> dict:
  return {"format": FORMAT, "name": name, "split": split, "code": code_digest(),
          "versions": _versions(), "prepared_dir": prepared,
          "prepared_files": prepared_files(tfds_root / prepared) if files is None else files}


def _root(tfds_dir) -> pathlib.Path:
  """The tfds dir, absolute, with '..' folded but symlinks kept (as tfds opens paths in it)."""
  return pathlib.Path(os.path.normpath(paths.resolve_tfds_dir(tfds_dir)))


def relative_prepared_dir(prepared_dir: str | os.PathLike, tfds_dir=None) -> str | None:
  """A prepared dataset directory as a path under the tfds dir, or None if it is not under it."""
  rel = os.path.relpath(os.path.normpath(os.path.abspath(prepared_dir)), _root(tfds_dir))
  return rel if _inside(rel) else None


def read(name: str, split: str, tfds_dir: str | os.PathLike | None = None
         ) -> dict[str, np.ndarray] | None:
  """The cached common form of name/split, or None (no cache file, a stale one or a bad one)."""
  path = cache_path(tfds_dir, name, split)
  if path is None or not enabled() or not path.exists():
    return None
  tfds_root = _root(tfds_dir)
  try:
    with np.load(path, allow_pickle=False) as npz:
      if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ValueError("not an .npz file")
      stored = json.loads(str(npz[META_KEY]))
      prepared = stored.get("prepared_dir") if isinstance(stored, dict) else None
      if not isinstance(prepared, str) or not _inside(prepared):
        raise ValueError(f"bad description {str(stored)[:200]}")
      if not (tfds_root / prepared).is_dir():
        logging.info("split cache %s: its tfds dataset %s is gone; reading tfds", path,
                     tfds_root / prepared)
        return None
      if stored != _key(name, split, tfds_root, prepared):
        logging.info("split cache %s is stale (the tfds files, the data code or the package "
                     "versions changed); reading tfds", path)
        return None
      arrays = {key: npz[key] for key in npz.files if key != META_KEY}
  except Exception as e:  # noqa: BLE001  any unreadable cache means: read tfds instead
    logging.warning("split cache %s cannot be read (%s: %s); reading tfds and rewriting it", path,
                    type(e).__name__, e)
    return None
  logging.info("Read %s/%s (%d examples) from the split cache %s", name, split,
               len(arrays.get("label", ())), path)
  return arrays


def _inside(relative: str) -> bool:
  parts = pathlib.PurePath(relative).parts
  return bool(parts) and not os.path.isabs(relative) and ".." not in parts and parts != (".",)


def write(name: str, split: str, arrays: dict[str, np.ndarray], prepared_dir: str | os.PathLike,
          tfds_dir: str | os.PathLike | None = None, files_read: list | None = None
          ) -> pathlib.Path | None:
  """Stores name/split's common form, keyed by `prepared_dir` (the tfds version directory, under
  the tfds dir, it was read from) and `files_read` (its prepared_files() taken before the read;
  now if not given). Writes nothing (and returns None) when the cache is off, the prepared files
  changed during the read, the data code on disk is no longer the code this process runs, or the
  file cannot be written (a warning, once per directory): a missing cache is only slower."""
  path = cache_path(tfds_dir, name, split)
  if path is None or not enabled() or META_KEY in arrays:
    return None
  tfds_root = _root(tfds_dir)
  prepared = relative_prepared_dir(prepared_dir, tfds_dir)
  if prepared is None:
    logging.info("not caching %s/%s: %s is not under the tfds dir %s", name, split, prepared_dir,
                 tfds_root)
    return None
  if files_read is not None and files_read != prepared_files(tfds_root / prepared):
    logging.info("not caching %s/%s: its tfds files changed while it was read", name, split)
    return None
  if _digest_sources() != CODE_DIGEST:
    logging.info("not caching %s/%s: mmjax/data changed on disk since this process imported it",
                 name, split)
    return None
  try:
    meta = json.dumps(_key(name, split, tfds_root, prepared, files_read), sort_keys=True)
    _remove_stale_temporaries(path.parent)
    # concurrent writers each rename a whole file of the same arrays
    return arrays_lib.save_npz(path, {**arrays, META_KEY: np.array(meta)})
  except OSError as e:
    if path.parent not in _warned_unwritable:
      _warned_unwritable.add(path.parent)
      logging.warning("could not write the split cache %s (%s); reading tfds each time", path, e)
    return None


def _remove_stale_temporaries(folder: pathlib.Path) -> None:
  """Temporary files of writers killed mid-write, untouched for an hour."""
  for leftover in folder.glob(f".*{arrays_lib.TMP_SUFFIX}"):
    try:
      if time.time() - leftover.stat().st_mtime > _STALE_TMP_SECS:
        leftover.unlink()
    except OSError:
      pass
