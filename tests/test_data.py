"""Tests of mmjax.data against the real raw files in $MMJAX_DATA_DIR and against plain references."""
import gzip
import io
import os
import pathlib
import shutil
import subprocess
import sys
import urllib.error

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from mmjax import data
from mmjax.data import raw_files

from conftest import env_without_tensorflow

# Class counts for digits 0..9, from shared/data/<dataset>/SOURCE.md.
CLASS_COUNTS = {
    ("mnist", "train"): [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
    ("mnist", "test"): [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
    ("usps", "train"): [1194, 1005, 731, 658, 652, 556, 664, 645, 542, 644],
    ("usps", "test"): [359, 264, 198, 166, 200, 160, 170, 147, 166, 177],
}
EXPECTED_FILES = {
    "mnist": ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
              "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"],
    "usps": ["zip.train.gz", "zip.test.gz"],
}


def raw_dir(name: str) -> pathlib.Path:
  return data.resolve_data_dir() / name


@pytest.fixture(scope="module")
def usps_tfds_dir(tmp_path_factory) -> pathlib.Path:
  """A fresh tfds directory with USPS prepared in it, so that the builder really runs."""
  tfds_dir = tmp_path_factory.mktemp("tfds")
  data.get_builder("usps", tfds_dir=tfds_dir)
  return tfds_dir


def builder_labels(builder, split: str) -> np.ndarray:
  dataset = builder.as_dataset(split=split, batch_size=-1,
                               decoders={"image": tfds.decode.SkipDecoding()})
  return tfds.as_numpy(dataset)["label"]


def check_builder_splits(builder, name: str) -> None:
  for split in ("train", "test"):
    labels = builder_labels(builder, split)
    expected = CLASS_COUNTS[(name, split)]
    assert builder.info.splits[split].num_examples == len(labels) == sum(expected)
    assert set(np.unique(labels)) == set(range(10))
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), expected)


def test_usps_builder_prepares_the_raw_splits(usps_tfds_dir):
  builder = data.get_builder("usps", tfds_dir=usps_tfds_dir)
  assert builder.name == "mmjax_usps"
  assert builder.info.features["image"].shape == (16, 16, 1)
  check_builder_splits(builder, "usps")


def test_mnist_builder_prepares_the_raw_splits():
  builder = data.get_builder("mnist")  # the shared $MMJAX_TFDS_DIR cache
  assert builder.name == "mmjax_mnist"
  check_builder_splits(builder, "mnist")


def read_usps_reference(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
  """Labels and [0, 255] float images [N, 16, 16, 1] parsed from an ESL zip file, without mmjax."""
  with gzip.open(path, "rt") as f:
    rows = np.array([[float(v) for v in line.split()] for line in f])
  return rows[:, 0].astype(np.int32), ((rows[:, 1:] + 1) * 127.5).reshape(-1, 16, 16, 1)


def test_usps_builder_is_faithful_to_the_raw_file(usps_tfds_dir):
  labels, images = read_usps_reference(raw_dir("usps") / "zip.test.gz")
  builder = data.get_builder("usps", tfds_dir=usps_tfds_dir)
  stored = tfds.as_numpy(builder.as_dataset(split="test", batch_size=-1))
  np.testing.assert_array_equal(stored["label"], labels)
  # Stored as uint8, so each grey value is off by at most half a step.
  np.testing.assert_allclose(stored["image"], images, atol=0.5 + 1e-6)


def test_load_split_usps_matches_an_independent_resize(usps_tfds_dir):
  labels, images = read_usps_reference(raw_dir("usps") / "zip.train.gz")
  arrays = data.load_split("usps", "train", tfds_dir=usps_tfds_dir)
  assert arrays["image"].dtype == np.uint8 and arrays["image"].shape == (7291, 28, 28, 1)
  assert arrays["label"].dtype == np.int32
  np.testing.assert_array_equal(arrays["label"], labels)
  reference = jax.image.resize(images, (len(images), 28, 28, 1), method="bilinear")
  # Half a step from uint8 storage, half a step from rounding the resized image.
  np.testing.assert_allclose(arrays["image"], np.asarray(reference), atol=1.0 + 1e-4)
  assert data.load_split("usps", "test", tfds_dir=usps_tfds_dir)["image"].shape == (2007, 28, 28, 1)


_READ_WITHOUT_TF = """
import sys
import numpy as np
from mmjax.data import load_split
test, val = load_split("usps", "test"), load_split("usps", "train_val")
np.savez(sys.argv[1], test_image=test["image"], test_label=test["label"], val_image=val["image"],
         val_label=val["label"])
print("tensorflow" in sys.modules, "tensorflow_datasets" in sys.modules)
"""


def test_split_cache_gives_what_tfds_gave_until_tfds_the_code_or_the_file_changes(
    usps_tfds_dir, tmp_path, monkeypatch):
  from mmjax.data import arrays, datasets, split_cache  # noqa: PLC0415
  cache = split_cache.cache_path(usps_tfds_dir, "usps", "test")
  cache.unlink(missing_ok=True)
  direct = datasets.load_split("usps", "test", tfds_dir=usps_tfds_dir)  # tfds; writes the cache
  train = datasets.load_split("usps", "train", tfds_dir=usps_tfds_dir)
  assert cache.exists()

  def same(got, want):
    assert got is not None and sorted(got) == sorted(want)
    for key in want:
      assert got[key].dtype == want[key].dtype
      np.testing.assert_array_equal(got[key], want[key])

  same(split_cache.read("usps", "test", usps_tfds_dir), direct)
  # A process without TensorFlow reads the cache: the same arrays, train_val cut from train.
  out = tmp_path / "read.npz"
  proc = subprocess.run(
      [sys.executable, "-c", _READ_WITHOUT_TF, str(out)], capture_output=True, text=True,
      env={**os.environ, **env_without_tensorflow(MMJAX_TFDS_DIR=str(usps_tfds_dir),
                                                   MMJAX_ARRAYS_DIR="")})
  assert proc.stdout.split() == ["False", "False"], proc.stderr[-2000:]
  with np.load(out) as read:
    val = arrays.cut_holdout(train, "train_val")
    same({"image": read["test_image"], "label": read["test_label"]}, direct)
    same({"image": read["val_image"], "label": read["val_label"]}, val)

  # tfds prepared again (here: one of its files has a new modification time): a miss, then the
  # entry point reads tfds and rewrites the cache, which hits again.
  prepared = pathlib.Path(str(data.get_builder("usps", tfds_dir=usps_tfds_dir).data_dir))
  shard = next(p for p in sorted(prepared.iterdir()) if "test" in p.name)
  stat = shard.stat()
  os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
  assert split_cache.read("usps", "test", usps_tfds_dir) is None
  same(data.load_split("usps", "test", tfds_dir=usps_tfds_dir), direct)
  same(split_cache.read("usps", "test", usps_tfds_dir), direct)

  # The data code or the package versions changed: a miss. A process whose data code changed on
  # disk after it imported it (it would cache the old code's arrays under the new code's key)
  # writes nothing. $MMJAX_NO_SPLIT_CACHE=1: no reads, no writes.
  with monkeypatch.context() as m:
    m.setattr(split_cache, "code_digest", lambda: "an edited builder")
    assert split_cache.read("usps", "test", usps_tfds_dir) is None
  with monkeypatch.context() as m:
    m.setattr(split_cache, "_versions", lambda: {"tensorflow-datasets": "0.0"})
    assert split_cache.read("usps", "test", usps_tfds_dir) is None
  before = cache.stat().st_mtime_ns
  with monkeypatch.context() as m:
    m.setattr(split_cache, "_digest_sources", lambda: "edited since import")
    assert split_cache.write("usps", "test", direct, prepared, usps_tfds_dir) is None
  with monkeypatch.context() as m:
    m.setenv("MMJAX_NO_SPLIT_CACHE", "1")
    assert split_cache.read("usps", "test", usps_tfds_dir) is None
    assert split_cache.write("usps", "test", direct, prepared, usps_tfds_dir) is None
  assert cache.stat().st_mtime_ns == before

  # A copy of the tfds dir checks its own prepared files, not the original's.
  copy = tmp_path / "tfds_copy"
  shutil.copytree(usps_tfds_dir, copy)  # modification times kept
  same(split_cache.read("usps", "test", copy), direct)
  copied_shard = copy / shard.relative_to(usps_tfds_dir)
  os.utime(copied_shard, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2 * 10**9))
  assert split_cache.read("usps", "test", copy) is None
  same(split_cache.read("usps", "test", usps_tfds_dir), direct)

  # The dataset's folder a symlink: the cache checks the files behind the link as tfds opens it,
  # so repointing the link (to files that differ) is a miss.
  rel = prepared.relative_to(usps_tfds_dir)
  (copy / rel.parts[0]).rename(copy / "real_a")
  shutil.copytree(copy / "real_a", copy / "real_b")
  os.utime(copy / "real_b" / shard.relative_to(prepared.parent),
           ns=(stat.st_atime_ns, stat.st_mtime_ns + 3 * 10**9))
  (copy / rel.parts[0]).symlink_to(copy / "real_a")
  assert split_cache.write("usps", "test", direct, copy / rel, copy) is not None
  same(split_cache.read("usps", "test", copy), direct)
  (copy / rel.parts[0]).unlink()
  (copy / rel.parts[0]).symlink_to(copy / "real_b")
  assert split_cache.read("usps", "test", copy) is None
  # A tfds dir spelled with "..": the same cache, written and read.
  (tmp_path / "sub").mkdir()
  dotted = tmp_path / "sub" / ".." / copy.name
  assert split_cache.write("usps", "test", direct, dotted / rel, dotted) is not None
  same(split_cache.read("usps", "test", copy), direct)

  # A damaged cache file (truncated; one flipped byte of image data, caught by zip's CRC) is
  # ignored, and the entry point still gives tfds's arrays and writes a good file again.
  good = cache.read_bytes()
  flipped = bytearray(good)
  flipped[len(good) // 3] ^= 0xFF
  for bad in (good[:len(good) // 2], bytes(flipped)):
    cache.write_bytes(bad)
    assert split_cache.read("usps", "test", usps_tfds_dir) is None
    same(data.load_split("usps", "test", tfds_dir=usps_tfds_dir), direct)
    same(split_cache.read("usps", "test", usps_tfds_dir), direct)


def read_idx(path: pathlib.Path) -> np.ndarray:
  """Parses a gzipped IDX file (big-endian header: magic, dims) without mmjax or tfds."""
  raw = gzip.open(path).read()
  num_dims = raw[3]
  dims = np.frombuffer(raw, dtype=">i4", count=num_dims, offset=4)
  return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * num_dims).reshape(dims)


@pytest.mark.parametrize("split, prefix", [("train", "train"), ("test", "t10k")])
def test_load_split_mnist_matches_the_idx_bytes(split, prefix):
  arrays = data.load_split("mnist", split)
  images = read_idx(raw_dir("mnist") / f"{prefix}-images-idx3-ubyte.gz")
  labels = read_idx(raw_dir("mnist") / f"{prefix}-labels-idx1-ubyte.gz")
  assert arrays["image"].dtype == np.uint8 and arrays["label"].dtype == np.int32
  np.testing.assert_array_equal(arrays["image"], images[..., None])
  np.testing.assert_array_equal(arrays["label"], labels)


_PREPARE_AT_ONCE = """
import pathlib, sys, time
from absl import logging
from mmjax import data
logging.set_verbosity(logging.INFO)
tfds_dir, me, other = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
(tfds_dir / me).touch()
while not (tfds_dir / other).exists():  # start together, after the slow imports
  time.sleep(0.01)
print("examples", len(data.load_split("usps", "test", tfds_dir=tfds_dir)["label"]))
"""


def test_two_processes_needing_an_unprepared_dataset_prepare_it_once(tmp_path):
  """Parallel sweeps of a table on a fresh machine used to race: both prepared the dataset and
  one failed renaming tfds's incomplete directory into place. Now one prepares, the other waits."""
  tfds_dir = tmp_path / "tfds"
  tfds_dir.mkdir()
  procs = [subprocess.Popen([sys.executable, "-c", _PREPARE_AT_ONCE, str(tfds_dir), me, other],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).parents[1])})
           for me, other in (("a", "b"), ("b", "a"))]
  outputs = [p.communicate(timeout=300)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outputs
  assert all(f"examples {sum(CLASS_COUNTS['usps', 'test'])}" in out for out in outputs)
  assert sum("Preparing mmjax_usps" in out for out in outputs) == 1, outputs


def test_unknown_dataset_or_split_lists_the_valid_ones():
  with pytest.raises(ValueError, match=r"'mnist', 'usps'"):
    data.get_builder("svhn")
  with pytest.raises(ValueError, match=r"'train', 'test'"):
    data.load_split("usps", "validation")


def test_data_dirs_precedence(monkeypatch, tmp_path):
  monkeypatch.setenv("MMJAX_DATA_DIR", str(tmp_path / "env"))
  monkeypatch.setenv("MMJAX_TFDS_DIR", str(tmp_path / "env_tfds"))
  assert data.resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
  assert data.resolve_data_dir() == tmp_path / "env"
  assert data.resolve_tfds_dir() == tmp_path / "env_tfds"
  monkeypatch.delenv("MMJAX_DATA_DIR")
  monkeypatch.setenv("MMJAX_TFDS_DIR", "")
  assert data.resolve_data_dir() == pathlib.Path.home() / "mmjax_data"
  assert data.resolve_tfds_dir() == pathlib.Path.home() / "tensorflow_datasets"


@pytest.fixture
def urls_opened(monkeypatch) -> list[str]:
  """Fails every download as an offline machine would, and records the URLs tried."""
  opened = []

  def offline(url, timeout):
    opened.append(url)
    raise urllib.error.URLError("network disabled by the test")

  monkeypatch.setattr(raw_files.urllib.request, "urlopen", offline)
  return opened


@pytest.mark.parametrize("name", ["mnist", "usps"])
def test_missing_raw_files_name_each_file_and_the_directory(name, tmp_path, urls_opened):
  with pytest.raises(data.MissingDataError) as error:
    data.get_builder(name, data_dir=tmp_path / "raw", tfds_dir=tmp_path / "tfds")
  message = str(error.value)
  assert str(tmp_path / "raw" / name) in message
  for file_name in EXPECTED_FILES[name]:
    assert file_name in message
  assert "MMJAX_DATA_DIR" in message and "config.data.dir" in message
  assert urls_opened  # a real download was attempted first


def test_prepared_dataset_needs_no_raw_files(usps_tfds_dir, tmp_path, urls_opened):
  builder = data.get_builder("usps", data_dir=tmp_path / "empty", tfds_dir=usps_tfds_dir)
  assert builder.info.splits["train"].num_examples == 7291
  assert not urls_opened


def test_unwritable_data_dir_raises_missing_data(tmp_path, monkeypatch):
  monkeypatch.setattr(raw_files.urllib.request, "urlopen", serve_from(raw_dir("usps")))
  not_a_dir = tmp_path / "file"
  not_a_dir.write_text("")  # the download succeeds but cannot be stored under a file
  with pytest.raises(data.MissingDataError, match="zip.train.gz"):
    data.get_builder("usps", data_dir=not_a_dir, tfds_dir=tmp_path / "tfds")


def serve_from(directory: pathlib.Path, corrupt: bool = False):
  """A fake urlopen that answers with the bytes of the file named at the end of the URL."""
  def urlopen(url, timeout):
    payload = (directory / url.rsplit("/", 1)[-1]).read_bytes()
    return io.BytesIO(payload[:100] if corrupt else payload)
  return urlopen


def test_download_then_prepare_after_a_failed_attempt(tmp_path, urls_opened, monkeypatch):
  raw, tfds_dir = tmp_path / "raw", tmp_path / "tfds"
  with pytest.raises(data.MissingDataError):
    data.get_builder("usps", data_dir=raw, tfds_dir=tfds_dir)
  monkeypatch.setattr(raw_files.urllib.request, "urlopen", serve_from(raw_dir("usps")))
  builder = data.get_builder("usps", data_dir=raw, tfds_dir=tfds_dir)
  assert sorted(os.listdir(raw / "usps")) == sorted(EXPECTED_FILES["usps"])  # no temp files left
  assert builder.info.splits["test"].num_examples == 2007


def test_bad_download_checksum_leaves_no_file(tmp_path, monkeypatch):
  monkeypatch.setattr(raw_files.urllib.request, "urlopen", serve_from(raw_dir("usps"), corrupt=True))
  with pytest.raises(data.MissingDataError, match="gave sha256"):
    data.get_builder("usps", data_dir=tmp_path, tfds_dir=tmp_path / "tfds")
  assert os.listdir(tmp_path / "usps") == []


def test_corrupt_present_file_is_named(tmp_path, urls_opened):
  (tmp_path / "usps").mkdir()
  good = (raw_dir("usps") / "zip.train.gz").read_bytes()
  (tmp_path / "usps" / "zip.train.gz").write_bytes(good[: len(good) // 2])
  (tmp_path / "usps" / "zip.test.gz").write_bytes((raw_dir("usps") / "zip.test.gz").read_bytes())
  with pytest.raises(data.MissingDataError, match=r"zip\.train\.gz: corrupt or truncated"):
    data.get_builder("usps", data_dir=tmp_path, tfds_dir=tmp_path / "tfds")
  assert not urls_opened  # a present file is never overwritten by a download


N = 10


def synthetic_arrays(num_examples: int = N) -> dict[str, np.ndarray]:
  """Example i has label i and every pixel i + 1 (never 0, unlike padding), so a batch shows its examples."""
  index = np.arange(num_examples)
  images = np.broadcast_to(index[:, None, None, None] + 1, (num_examples, 28, 28, 1))
  return {"image": images.astype(np.uint8), "label": index}


def take(iterator, num_batches: int) -> list[dict[str, np.ndarray]]:
  return [next(iterator) for _ in range(num_batches)]


def labels_of(batches) -> np.ndarray:
  return np.concatenate([batch["label"] for batch in batches])


def test_train_batches_have_the_model_input_types():
  batch = next(data.TrainIterator(synthetic_arrays(), global_batch=4, seed=0))
  assert batch["image"].dtype == np.float32 and batch["image"].shape == (4, 28, 28, 1)
  assert batch["label"].dtype == np.int32 and batch["label"].shape == (4,)
  np.testing.assert_allclose(batch["image"][:, 0, 0, 0], (batch["label"] + 1) / 255.0)


def test_train_stream_is_deterministic_per_seed():
  def stream(seed):
    return labels_of(take(data.TrainIterator(synthetic_arrays(), global_batch=5, seed=seed), 6))
  np.testing.assert_array_equal(stream(0), stream(0))
  assert not np.array_equal(stream(0), stream(1))


@pytest.mark.parametrize("global_batch", [5, 4, 20])  # divides N, straddles epochs, spans 2 epochs
def test_each_epoch_is_a_permutation(global_batch):
  iterator = data.TrainIterator(synthetic_arrays(), global_batch=global_batch, seed=3)
  epochs = labels_of(take(iterator, 40 // global_batch)).reshape(4, N)
  for epoch in epochs:
    np.testing.assert_array_equal(np.sort(epoch), np.arange(N))
  assert len({tuple(epoch) for epoch in epochs}) > 1  # reshuffled every epoch
  assert iterator.position == 40


@pytest.mark.parametrize("batches_before", [1, 3])  # position 4 (inside epoch 0), 12 (epoch 1)
def test_resume_from_position_continues_the_stream(batches_before):
  iterator = data.TrainIterator(synthetic_arrays(), global_batch=4, seed=7)
  take(iterator, batches_before)
  resumed = data.TrainIterator(synthetic_arrays(), global_batch=4, seed=7,
                               position=iterator.position)
  np.testing.assert_array_equal(labels_of(take(resumed, 4)), labels_of(take(iterator, 4)))


def test_position_indexes_the_global_stream():
  stream = labels_of(take(data.TrainIterator(synthetic_arrays(), global_batch=1, seed=5), 40))
  resumed = data.TrainIterator(synthetic_arrays(), global_batch=4, seed=5, position=17)
  np.testing.assert_array_equal(labels_of(take(resumed, 5)), stream[17:37])


def test_processes_split_each_global_batch():
  def batches(process_index, process_count):
    iterator = data.TrainIterator(synthetic_arrays(), global_batch=4, seed=1, position=6,
                                  process_index=process_index, process_count=process_count)
    return take(iterator, 5)
  for whole, first, second in zip(batches(0, 1), batches(0, 2), batches(1, 2)):
    for key in ("image", "label"):
      np.testing.assert_array_equal(np.concatenate([first[key], second[key]]), whole[key])


def _tf_data_batches(arrays, *, global_batch, seed, position=0, process_index=0, process_count=1):
  """The tf order's batches as TrainIterator made them with tf.data until 2026-11-28 (every table's
  runs so far): a frozen copy of that pipeline, the reference its numpy gather must equal."""
  import tensorflow as tf  # noqa: PLC0415
  num_examples = len(arrays["label"])
  rows = global_batch // process_count
  first_row = process_index * rows
  start_epoch, skip = divmod(position, num_examples)

  def epoch_indices(epoch):
    permutation = tf.random.experimental.stateless_shuffle(
        tf.range(num_examples, dtype=tf.int64),
        seed=tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)]))
    start = tf.where(epoch == start_epoch, tf.constant(skip, tf.int64), 0)
    return tf.data.Dataset.from_tensor_slices(permutation[start:])

  def gather(tensors, indices):
    batch = {key: tf.gather(value, indices) for key, value in tensors.items()}
    for key, value in batch.items():
      if value.dtype == tf.uint8:
        batch[key] = tf.cast(value, tf.float32) / 255.0
    batch["label"] = tf.cast(batch["label"], tf.int32)
    return batch

  tensors = {key: tf.constant(value) for key, value in arrays.items()}
  indices = tf.data.Dataset.counter(start_epoch).flat_map(epoch_indices).batch(global_batch)
  return indices.map(lambda b: gather(tensors, b[first_row:first_row + rows])).as_numpy_iterator()


@pytest.mark.parametrize("global_batch,position,process_index,process_count",
                         [(128, 0, 0, 1), (96, 59_950, 0, 1), (128, 1_000, 1, 2)])
def test_tf_order_batches_equal_the_tf_data_pipeline(global_batch, position, process_index,
                                                     process_count):
  """The tf order gathers in numpy now; its batches are bit-identical to the tf.data pipeline's,
  also straddling an epoch (position 59,950 of MNIST's 60,000), resumed, and split by process."""
  arrays = data.load_split("mnist", "train")
  kwargs = dict(global_batch=global_batch, seed=3, position=position,
                process_index=process_index, process_count=process_count)
  ours = data.TrainIterator(arrays, **kwargs)
  reference = _tf_data_batches(arrays, **kwargs)
  for _ in range(4):
    got, want = next(ours), next(reference)
    assert sorted(got) == sorted(want)
    for key in want:
      assert got[key].dtype == want[key].dtype and got[key].shape == want[key].shape
      np.testing.assert_array_equal(got[key], want[key])


def test_global_batch_must_divide_among_processes():
  with pytest.raises(ValueError, match="not divisible by process_count=4"):
    data.TrainIterator(synthetic_arrays(), global_batch=6, seed=0, process_count=4)
  with pytest.raises(ValueError, match="not divisible"):
    next(data.eval_batches(synthetic_arrays(), global_batch=6, process_count=4))


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_batches_cover_every_example_once(process_count):
  per_process = [list(data.eval_batches(synthetic_arrays(), global_batch=4, process_index=p,
                                        process_count=process_count))
                 for p in range(process_count)]
  assert {len(batches) for batches in per_process} == {3}  # ceil(10 / 4) on every process
  batches = [batch for process in per_process for batch in process]
  for batch in batches:
    assert batch["image"].shape == (4 // process_count, 28, 28, 1)
    assert batch["image"].dtype == batch["mask"].dtype == np.float32
    assert batch["label"].dtype == np.int32
  mask = np.concatenate([batch["mask"] for batch in batches])
  labels = labels_of(batches)
  assert mask.sum() == N
  np.testing.assert_array_equal(np.sort(labels[mask == 1]), np.arange(N))
  images = np.concatenate([batch["image"] for batch in batches])
  assert not images[mask == 0].any()  # padding rows are zeros
