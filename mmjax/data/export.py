"""Exports datasets' splits as arrays (.npz), for training where TensorFlow is not installed.

python -m mmjax.data.export --datasets=mnist,usps --out=/path/to/arrays [--splits=train,test]

Each split is load_split's common form, written to <out>/<name>/<split>.npz (compressed). On the
other machine set config.data.arrays_dir=<out> (or $MMJAX_ARRAYS_DIR); either example order works.
"train_fit" and "train_val" need no files of their own: they are cut from "train" there.
"""
import pathlib

from absl import app, flags, logging

from mmjax.data import arrays


def export(names, splits, out, *, data_dir=None, tfds_dir=None) -> list[pathlib.Path]:
  """Writes <out>/<name>/<split>.npz for every name and split, read from tfds; the paths."""
  from mmjax.data import datasets  # exporting reads tfds: TensorFlow is needed here
  written = []
  for name in names:
    for split in splits:
      if split in arrays.HOLDOUT_SPLITS:
        raise ValueError(f"{split} is cut from train where the arrays are read; export train")
      loaded = datasets.load_split(name, split, data_dir=data_dir, tfds_dir=tfds_dir)
      path = arrays.save_npz(arrays.array_path(out, name, split), loaded)
      logging.info("wrote %s (%d examples, %.1f MB)", path, len(loaded["label"]),
                   path.stat().st_size / 1e6)
      written.append(path)
  return written


def main(argv):
  del argv
  if not flags.FLAGS.datasets or not flags.FLAGS.out:
    raise SystemExit("--datasets and --out are required")
  for path in export(flags.FLAGS.datasets, flags.FLAGS.splits, flags.FLAGS.out,
                     data_dir=flags.FLAGS.data_dir, tfds_dir=flags.FLAGS.tfds_dir):
    print(path)


def _define_flags():
  """Only when run as a program: library users (and tests) import export() without these flags."""
  flags.DEFINE_list("datasets", None, "dataset names, e.g. mnist,usps")
  flags.DEFINE_string("out", None, "the arrays directory to write")
  flags.DEFINE_list("splits", ["train", "test"], "splits to export")
  flags.DEFINE_string("data_dir", None, "raw files (default $MMJAX_DATA_DIR)")
  flags.DEFINE_string("tfds_dir", None, "prepared tfds data (default $MMJAX_TFDS_DIR)")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
