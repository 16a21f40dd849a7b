"""Exported arrays, the example orders, and training on a machine without TensorFlow."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mmjax import config as config_lib
from mmjax import experiments
from mmjax.data import arrays as arrays_lib
from mmjax.data import datasets, export, pipeline
from mmjax.train import trainer

from conftest import REPO, env_without_tensorflow



def test_numpy_order_batches_straddle_epochs_resume_and_split_across_processes():
  n, batch, seed = 50, 16, 3
  images = np.random.default_rng(0).integers(0, 256, (n, 4, 4, 1), dtype=np.uint8)
  data = {"image": images, "label": np.arange(n, dtype=np.int32)}
  epochs = [pipeline.numpy_epoch_permutation(n, seed, e) for e in range(4)]
  for perm in epochs:
    np.testing.assert_array_equal(np.sort(perm), np.arange(n))
  assert not np.array_equal(epochs[0], epochs[1])
  assert not np.array_equal(epochs[0], pipeline.numpy_epoch_permutation(n, seed + 1, 0))
  stream = np.concatenate(epochs)  # the global stream, by its definition

  it = pipeline.TrainIterator(data, global_batch=batch, seed=seed, order="numpy")
  got = [next(it) for _ in range(6)]  # batches 3 and 6 straddle epoch boundaries (50, 100)
  for k, b in enumerate(got):
    rows = stream[k * batch:(k + 1) * batch]
    np.testing.assert_array_equal(b["label"], rows)
    assert b["image"].dtype == np.float32
    np.testing.assert_array_equal(b["image"], images[rows].astype(np.float32) / np.float32(255))
  assert it.position == 6 * batch

  resumed = pipeline.TrainIterator(data, global_batch=batch, seed=seed, position=3 * batch,
                                   order="numpy")
  np.testing.assert_array_equal(next(resumed)["label"], got[3]["label"])
  second = pipeline.TrainIterator(data, global_batch=batch, seed=seed, order="numpy",
                                  process_index=1, process_count=2)
  np.testing.assert_array_equal(next(second)["label"], got[0]["label"][batch // 2:])
  # The sweep's index stream reads the same rows.
  np.testing.assert_array_equal(pipeline.IndexStream(n, seed, order="numpy").take(6 * batch),
                                stream[:6 * batch])
  with pytest.raises(ValueError, match="order"):
    pipeline.TrainIterator(data, global_batch=batch, seed=seed, order="jax")


def test_tf_order_permutations_equal_tensorflows_stateless_shuffle():
  """The tf order's epochs, computed in numpy, are TensorFlow's stateless_shuffle bit for bit: empty
  and one-example splits, negative and 64-bit seeds, large epochs, MNIST's 60,000."""
  import tensorflow as tf  # noqa: PLC0415
  rng = np.random.default_rng(0)
  cases = [(0, 0, 0), (1, 5, 3), (2, 0, 0), (7291, 3, 2), (60000, 12345, 7), (2000, -1, 0),
           (5, 2**40 + 3, 2**33 + 1), (1000, -7919, 12)]
  cases += [(int(rng.integers(1, 5000)), int(rng.integers(-2**62, 2**62)),
             int(rng.integers(0, 1000))) for _ in range(20)]
  for n, seed, epoch in cases:
    want = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64),
                                                    seed=tf.constant([seed, epoch], tf.int64))
    got = pipeline.tf_epoch_permutation(n, seed, epoch)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, want.numpy(), err_msg=str((n, seed, epoch)))


def test_exported_arrays_equal_the_tfds_ones_and_bad_files_say_so(tmp_path):
  out = tmp_path / "arrays"
  written = export.export(["usps"], ["train", "test"], out)
  assert sorted(p.relative_to(out).as_posix() for p in written) == ["usps/test.npz", "usps/train.npz"]
  for split in ("train", "test", "train_fit", "train_val"):
    exported = arrays_lib.load_split("usps", split, arrays_dir=out)
    direct = datasets.load_split("usps", split)
    assert sorted(exported) == sorted(direct)
    for key in direct:
      assert exported[key].dtype == direct[key].dtype
      np.testing.assert_array_equal(exported[key], direct[key])

  (out / "usps" / "test.npz").write_bytes(b"not a zip file")
  with pytest.raises(ValueError, match="cannot read .*export it again"):
    arrays_lib.load_split("usps", "test", arrays_dir=out)

  # Without TensorFlow: the exported split loads; a split not exported names the export command.
  code = ("import sys\nfrom mmjax.data import load_split\n"
          "a = load_split('usps', 'train_val')\n"
          "print(a['image'].shape, 'tensorflow' in sys.modules, 'tensorflow_datasets' in sys.modules)\n"
          "try:\n  load_split('mnist', 'test')\nexcept ImportError as e:\n  print(e)\n"
          "load_split('usps', 'test')\n")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                        env={**os.environ, **env_without_tensorflow(
                            MMJAX_ARRAYS_DIR=str(out),  # and no split cache (a fresh tfds dir)
                            MMJAX_TFDS_DIR=str(tmp_path / "no_tfds"))})
  first, missing = proc.stdout.splitlines()[:2]
  assert first == "(1458, 28, 28, 1) False False", proc.stderr[-2000:]
  assert "mnist/test.npz" in missing and "python -m mmjax.data.export --datasets=mnist" in missing
  assert proc.returncode != 0
  assert "cannot read" in proc.stderr and "usps/test.npz" in proc.stderr


def test_a_sweep_trains_without_tensorflow_as_a_solo_run_does_with_it(tmp_path, monkeypatch):
  arrays_dir = tmp_path / "arrays"
  export.export(["usps"], ["train", "test"], arrays_dir)
  export.export(["mnist"], ["test"], arrays_dir)
  overrides = (("train.steps", "6"), ("train.log_every", "3"), ("eval_every", "0"),
               ("checkpoint.every", "6"), ("data.global_batch", "32"))  # the default tf order
  cells = experiments.grid([{"row": "source only", "column": "U→M",
                             "config": "configs/digits.py:usps_mnist"}], [0, 1], overrides)
  runner = experiments.Runner(tmp_path / "runs", env=env_without_tensorflow(
      MMJAX_ARRAYS_DIR=str(arrays_dir), MMJAX_TFDS_DIR=str(tmp_path / "no_tfds"),
      MMJAX_TEST_HIDE="tensorboard"))  # and without tensorboard: metrics.jsonl and the log only
  assert set(runner.run(cells).values()) == {"done"}
  swept = experiments.cell_dir(tmp_path / "runs", cells[0])
  assert json.loads((swept / "results.json").read_text())["sweep"]["runs"] == 2
  assert not list(swept.glob("events.out.tfevents*"))
  log = next((tmp_path / "runs" / "sweeps").glob("*.log")).read_text()
  assert "the tensorboard package cannot be imported" in log and "steps/s" in log

  # The same run alone, with TensorFlow, reading tfds rather than the exported arrays (or the
  # split cache).
  config = config_lib.load_with_overrides(str(REPO / "configs/digits.py:usps_mnist"),
                                          {**dict(overrides), "seed": "0"})
  monkeypatch.setenv("MMJAX_NO_SPLIT_CACHE", "1")
  alone = trainer.train_and_evaluate(config, tmp_path / "alone")
  rows = lambda d: [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
  a, b = rows(swept), rows(tmp_path / "alone")
  assert [r["step"] for r in a] == [r["step"] for r in b] and len(a) >= 3
  for x, y in zip(a, b):
    for key in set(x) & set(y) - {"step"}:
      np.testing.assert_allclose(x[key], y[key], rtol=2e-5, err_msg=key)
  result = json.loads((swept / "results.json").read_text())["eval"]
  for name in alone["eval"]:
    np.testing.assert_allclose(result[name]["accuracy"], alone["eval"][name]["accuracy"], atol=1e-4)
