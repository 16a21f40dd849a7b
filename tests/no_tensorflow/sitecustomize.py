"""On PYTHONPATH, makes this interpreter (and every child that inherits the variable) see no
TensorFlow, TensorFlow Datasets or clu, as on a machine where they are not installed; and the
packages named in $MMJAX_TEST_HIDE (comma-separated, e.g. tensorboard) too."""
import os
import sys

HIDDEN = ("tensorflow", "tensorflow_datasets", "clu",
          *filter(None, os.environ.get("MMJAX_TEST_HIDE", "").split(",")))


class _Hiding:
  """Wraps an import finder so that it finds none of HIDDEN (find_spec gives None, import fails)."""

  def __init__(self, inner):
    self._inner = inner

  def find_spec(self, name, path=None, target=None):
    if name.partition(".")[0] in HIDDEN:
      return None
    find = getattr(self._inner, "find_spec", None)
    return find(name, path, target) if find is not None else None

  def __getattr__(self, attr):
    return getattr(self._inner, attr)


sys.meta_path[:] = [_Hiding(finder) for finder in sys.meta_path]
