"""Raw dataset files in the mmjax data directory: verify them, download missing ones, explain what to do."""
import dataclasses
import hashlib
import http.client
import os
import pathlib
import tempfile
import urllib.request
from collections.abc import Sequence

from absl import logging

from mmjax.data import paths

# Per socket operation, not per file: long enough for a slow mirror, short enough that a machine
# without internet access reports the missing files within seconds.
DOWNLOAD_TIMEOUT_S = 20
_CHUNK_BYTES = 1 << 20


class MissingDataError(FileNotFoundError):
  """A raw data file is missing or corrupt and could not be downloaded; the message says how to fix it."""


@dataclasses.dataclass(frozen=True)
class RawFile:
  """One raw file of a dataset: its name in `<data_dir>/<dataset>/`, public source and sha256.

  `url` is None for a file that no server holds byte for byte (one packed from a public repository);
  then `how_to_make` says how to make it, and it is never downloaded.
  """
  name: str
  url: str | None
  sha256: str
  how_to_make: str = ""


def fetch_raw_files(dataset: str, directory: pathlib.Path,
                    files: Sequence[RawFile]) -> dict[str, pathlib.Path]:
  """Returns {name: path} of `files` in `directory`, downloading the missing ones.

  Every file is checked against its sha256. Raises MissingDataError naming every file that is
  still missing or corrupt, so that one error tells the user everything to fix.
  """
  problems = {}
  download_failed = False
  for raw_file in files:
    path = directory / raw_file.name
    if path.exists():
      problem = _check_present_file(path, raw_file)
    elif raw_file.url is None:
      problem = "missing (it has no download; make it as said below)"
    elif download_failed:
      # The network or the directory already failed once; more attempts would only add timeouts.
      problem = "missing (download not tried: an earlier download failed)"
    else:
      problem = _try_download(raw_file, path)
      download_failed = problem is not None
    if problem:
      problems[raw_file] = problem
  if problems:
    raise MissingDataError(_explain(dataset, directory, problems))
  return {raw_file.name: directory / raw_file.name for raw_file in files}


def _check_present_file(path: pathlib.Path, raw_file: RawFile) -> str | None:
  try:
    digest = _sha256_of_file(path)
  except OSError as e:
    return f"present but unreadable ({e})"
  if digest != raw_file.sha256:
    return (f"corrupt or truncated: sha256 is {digest}, expected {raw_file.sha256}; "
            "delete it so that it is downloaded again, or replace it")
  return None


def _try_download(raw_file: RawFile, path: pathlib.Path) -> str | None:
  try:
    download(raw_file, path)
  except (OSError, ValueError, http.client.HTTPException) as e:
    return f"missing, and downloading it failed ({e})"
  return None


def download(raw_file: RawFile, dest: pathlib.Path, timeout_s: float = DOWNLOAD_TIMEOUT_S) -> None:
  """Downloads `raw_file` to `dest`, atomically and only if its sha256 matches.

  The bytes go to a temporary file beside `dest` that is renamed into place once verified, so an
  interrupted or corrupted download never leaves a file that looks complete.
  """
  logging.info("Downloading %s to %s", raw_file.url, dest)
  with urllib.request.urlopen(raw_file.url, timeout=timeout_s) as response:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
      with os.fdopen(fd, "wb") as out:
        digest = _copy_and_hash(response, out)
      if digest != raw_file.sha256:
        raise ValueError(f"{raw_file.url} gave sha256 {digest}, expected {raw_file.sha256}")
      os.replace(tmp_name, dest)
    finally:
      if os.path.exists(tmp_name):
        os.unlink(tmp_name)


def _copy_and_hash(source, sink) -> str:
  hasher = hashlib.sha256()
  while chunk := source.read(_CHUNK_BYTES):
    hasher.update(chunk)
    sink.write(chunk)
  return hasher.hexdigest()


def _sha256_of_file(path: pathlib.Path) -> str:
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def _explain(dataset: str, directory: pathlib.Path, problems: dict[RawFile, str]) -> str:
  lines = [f"Raw files of dataset {dataset!r} are missing or corrupt in {directory}:"]
  for raw_file, problem in problems.items():
    lines.append(f"  {raw_file.name}: {problem}")
    source = f"get it from {raw_file.url}" if raw_file.url else raw_file.how_to_make
    lines.append(f"    {source} (sha256 {raw_file.sha256})")
  lines.append(
      f"To fix: put these files in {directory}, or point mmjax at a data directory that holds "
      f"them under {dataset}/ with ${paths.DATA_DIR_ENV}=/path/to/data or config.data.dir.")
  return "\n".join(lines)
