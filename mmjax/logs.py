"""Quiet, readable logs: orbax's per-save INFO chatter is kept out unless it is a warning."""
import logging as py_logging

from absl import logging


class _DropLibraryInfo(py_logging.Filter):
  NOISY = ("/orbax/", "/tensorflow_datasets/", "/etils/")

  def filter(self, record):
    return record.levelno >= py_logging.WARNING or not any(
        part in record.pathname for part in self.NOISY)


def setup() -> None:
  """Call once at program start (launch.py, experiment scripts)."""
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_DropLibraryInfo())
