"""Tests of the feature-vector datasets (Amazon reviews, Office-Caltech10) against the real raw files and
independent parses, and of the batch pipeline on "features" arrays."""
import io
import pathlib
import re
import urllib.error

import numpy as np
import pytest
import scipy.io
import scipy.sparse
import scipy.stats
import tensorflow_datasets as tfds

from mmjax import data
from mmjax.data import office_caltech
from mmjax.data import raw_files

# From shared/data/amazon_reviews_dann/SOURCE.md: test examples and positives (train: 1000 of 2000).
AMAZON_TEST = {"books": (4465, 2264), "dvd": (3586, 1807), "electronics": (5681, 2857),
               "kitchen": (5945, 2954)}
# From shared/data/office_caltech10/SOURCE.md: examples per class 1..10.
OFFICE_CLASS_COUNTS = {
    "amazon": [92, 82, 94, 99, 100, 100, 99, 100, 94, 98],
    "webcam": [29, 21, 31, 27, 27, 30, 43, 30, 27, 30],
    "dslr": [12, 21, 12, 13, 10, 24, 22, 12, 8, 23],
    "caltech": [151, 110, 100, 138, 85, 128, 133, 94, 87, 97],
}
OFFICE_FILES = {"amazon": "amazon_SURF_L10.mat", "webcam": "webcam_SURF_L10.mat",
                "dslr": "dslr_SURF_L10.mat", "caltech": "Caltech10_SURF_L10.mat"}


def raw_path(folder: str, name: str) -> pathlib.Path:
  return data.resolve_data_dir() / folder / name


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory) -> pathlib.Path:
  """A fresh tfds directory, so that every builder really prepares from the raw files."""
  return tmp_path_factory.mktemp("tfds")


def read_svmlight_reference(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
  """Labels (1 positive) and dense counts [N, 5000] by regex and scipy.sparse, without mmjax."""
  labels, rows, columns, counts = [], [], [], []
  for row, line in enumerate(path.read_text().splitlines()):
    labels.append(line.split(maxsplit=1)[0] == "1")
    for column, count in re.findall(r"(\d+):(\d+)", line):
      rows.append(row)
      columns.append(int(column))
      counts.append(float(count))
  matrix = scipy.sparse.coo_matrix((counts, (rows, columns)), shape=(len(labels), 5000))
  return np.array(labels, dtype=np.int32), matrix.toarray()


@pytest.mark.parametrize("domain", list(AMAZON_TEST))
def test_amazon_splits_match_an_independent_parse(domain, tfds_dir):
  name = f"amazon_{domain}"
  builder = data.get_builder(name, tfds_dir=tfds_dir)
  assert builder.info.full_name == f"mmjax_amazon_reviews/{domain}/1.0.0"
  num_test, test_positives = AMAZON_TEST[domain]
  for split, num_examples, positives in (("train", 2000, 1000), ("test", num_test, test_positives)):
    arrays = data.load_split(name, split, tfds_dir=tfds_dir)
    assert sorted(arrays) == ["features", "label"]
    assert arrays["features"].dtype == np.float32 and arrays["features"].shape == (num_examples, 5000)
    assert arrays["label"].dtype == np.int32 and arrays["label"].shape == (num_examples,)
    assert builder.info.splits[split].num_examples == num_examples
    np.testing.assert_array_equal(np.bincount(arrays["label"]), [num_examples - positives, positives])
    raw = raw_path("amazon_reviews_dann", f"{domain}_{split}.svmlight")
    labels, counts = read_svmlight_reference(raw)
    np.testing.assert_array_equal(arrays["label"], labels)  # file order kept
    np.testing.assert_array_equal(arrays["features"], counts)


def read_mat_reference(domain: str) -> tuple[np.ndarray, np.ndarray]:
  contents = scipy.io.loadmat(raw_path("office_caltech10", OFFICE_FILES[domain]))
  return contents["fts"], contents["labels"].ravel().astype(np.int32) - 1


@pytest.mark.parametrize("domain", list(OFFICE_CLASS_COUNTS))
def test_office_builder_stores_the_raw_counts(domain, tfds_dir):
  builder = data.get_builder(f"office_{domain}", tfds_dir=tfds_dir)
  assert builder.info.full_name == f"mmjax_office_caltech10/{domain}/1.0.0"
  assert list(builder.info.splits) == ["train"]
  stored = tfds.as_numpy(builder.as_dataset(split="train", batch_size=-1))
  counts, labels = read_mat_reference(domain)
  assert stored["counts"].dtype == np.uint8
  np.testing.assert_array_equal(stored["counts"], counts)
  np.testing.assert_array_equal(stored["label"], labels)


@pytest.mark.parametrize("domain", list(OFFICE_CLASS_COUNTS))
def test_office_load_split_is_the_gfk_preprocessing(domain, tfds_dir):
  arrays = data.load_split(f"office_{domain}", "train", tfds_dir=tfds_dir)
  expected_counts = OFFICE_CLASS_COUNTS[domain]
  assert sorted(arrays) == ["features", "label"]
  assert arrays["features"].dtype == np.float32
  assert arrays["features"].shape == (sum(expected_counts), 800)
  assert arrays["label"].dtype == np.int32
  np.testing.assert_array_equal(np.bincount(arrays["label"], minlength=10), expected_counts)
  counts, labels = read_mat_reference(domain)
  np.testing.assert_array_equal(arrays["label"], labels)
  histograms = counts / counts.sum(axis=1, keepdims=True)
  reference = scipy.stats.zscore(histograms, axis=0)  # population std, as GFK's zscore(X, 1)
  np.testing.assert_allclose(arrays["features"], reference, rtol=1e-5, atol=1e-5)
  # Every visual word occurs in every domain, so every feature is standardised.
  np.testing.assert_allclose(arrays["features"].mean(axis=0), 0.0, atol=1e-5)
  np.testing.assert_allclose(arrays["features"].std(axis=0), 1.0, atol=1e-4)
  # Domain adaptation uses the domain whole: "test" is the same data.
  test_arrays = data.load_split(f"office_{domain}", "test", tfds_dir=tfds_dir)
  for key in arrays:
    np.testing.assert_array_equal(test_arrays[key], arrays[key])


def test_histogram_normalisation_maps_constant_words_to_zero():
  counts = np.array([[1, 5, 0, 2], [3, 5, 0, 0], [0, 5, 0, 4]], dtype=np.uint8)
  counts = np.concatenate([counts, np.zeros((1, 4), np.uint8)])  # an empty histogram
  features = office_caltech.normalize_histograms(counts)
  assert features.dtype == np.float32 and np.isfinite(features).all()
  np.testing.assert_array_equal(features[:, 2], 0.0)  # a word that never occurs
  histograms = np.concatenate([counts[:3] / counts[:3].sum(axis=1, keepdims=True), np.zeros((1, 4))])
  reference = scipy.stats.zscore(histograms[:, [0, 1, 3]], axis=0)
  np.testing.assert_allclose(features[:, [0, 1, 3]], reference, rtol=1e-6, atol=1e-6)


def test_feature_names_are_listed_and_office_has_train_and_test():
  with pytest.raises(ValueError, match=r"'amazon_books', .*'office_caltech'"):
    data.get_builder("amazon_music")
  with pytest.raises(ValueError, match=r"'train', 'test'"):
    data.load_split("office_dslr", "validation")


@pytest.fixture
def urls_opened(monkeypatch) -> list[str]:
  """Fails every download as an offline machine would, and records the URLs tried."""
  opened = []

  def offline(url, timeout):
    opened.append(url)
    raise urllib.error.URLError("network disabled by the test")

  monkeypatch.setattr(raw_files.urllib.request, "urlopen", offline)
  return opened


@pytest.mark.parametrize("name, folder, file_names, first_url", [
    ("amazon_books", "amazon_reviews_dann", ["books_train.svmlight", "books_test.svmlight"],
     "https://raw.githubusercontent.com/GRAAL-Research/domain_adversarial_neural_network/"
     "74eec5e0ae06bd6614bce048abba492c16a633e3/data/books_train.svmlight"),
    ("office_caltech", "office_caltech10", ["Caltech10_SURF_L10.mat"],
     "https://raw.githubusercontent.com/hnjzlishuang/DTLC/3ce213866d4d28a0bd4e0fe596342046f20ce99c/"
     "data/Office%2BCaltech10_SURF/Caltech10_SURF_L10.mat"),
])
def test_missing_raw_files_name_each_file_and_the_directory(name, folder, file_names, first_url,
                                                            tmp_path, urls_opened):
  with pytest.raises(data.MissingDataError) as error:
    data.load_split(name, "train", data_dir=tmp_path / "raw", tfds_dir=tmp_path / "tfds")
  message = str(error.value)
  assert str(tmp_path / "raw" / folder) in message
  for file_name in file_names:
    assert f"  {file_name}: missing" in message
  assert "MMJAX_DATA_DIR" in message and "config.data.dir" in message
  assert urls_opened == [first_url]  # one real attempt, then no more timeouts


def serve_from(directory: pathlib.Path):
  """A fake urlopen that answers with the bytes of the file named at the end of the URL."""
  def urlopen(url, timeout):
    return io.BytesIO((directory / url.rsplit("/", 1)[-1]).read_bytes())
  return urlopen


@pytest.mark.parametrize("name, folder", [("amazon_dvd", "amazon_reviews_dann"),
                                          ("office_webcam", "office_caltech10")])
def test_missing_raw_files_are_downloaded(name, folder, tmp_path, monkeypatch):
  monkeypatch.setattr(raw_files.urllib.request, "urlopen", serve_from(data.resolve_data_dir() / folder))
  arrays = data.load_split(name, "train", data_dir=tmp_path / "raw", tfds_dir=tmp_path / "tfds")
  assert len(arrays["label"]) == {"amazon_dvd": 2000, "office_webcam": 295}[name]
  assert len(list((tmp_path / "raw" / folder).iterdir())) == (2 if name.startswith("amazon") else 1)


N = 10


def synthetic_features(num_examples: int = N) -> dict[str, np.ndarray]:
  """Example i has label i and features i + 0.5 (not 0 like padding, and changed by any /255)."""
  index = np.arange(num_examples)
  features = np.broadcast_to(index[:, None] + 0.5, (num_examples, 3)).astype(np.float32)
  return {"features": features, "label": index}


def test_train_batches_pass_features_through():
  batch = next(data.TrainIterator(synthetic_features(), global_batch=4, seed=0))
  assert sorted(batch) == ["features", "label"]
  assert batch["features"].dtype == np.float32 and batch["features"].shape == (4, 3)
  assert batch["label"].dtype == np.int32 and batch["label"].shape == (4,)
  np.testing.assert_array_equal(batch["features"][:, 0], batch["label"] + 0.5)


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_batches_pass_features_through(process_count):
  batches = [batch for p in range(process_count)
             for batch in data.eval_batches(synthetic_features(), global_batch=4, process_index=p,
                                            process_count=process_count)]
  for batch in batches:
    assert batch["features"].dtype == np.float32 and batch["features"].shape == (4 // process_count, 3)
    assert batch["label"].dtype == np.int32
  mask = np.concatenate([batch["mask"] for batch in batches])
  features = np.concatenate([batch["features"] for batch in batches])
  labels = np.concatenate([batch["label"] for batch in batches])
  np.testing.assert_array_equal(features[mask == 1, 0], labels[mask == 1] + 0.5)
  assert not features[mask == 0].any()  # padding rows are zeros


@pytest.mark.parametrize("name, split", [("amazon_kitchen", "train"), ("office_dslr", "train")])
def test_pipeline_gives_the_loaded_rows_unchanged(name, split, tfds_dir):
  arrays = data.load_split(name, split, tfds_dir=tfds_dir)
  # An extra key passes through too: it names the example each batch row came from.
  arrays["index"] = np.arange(len(arrays["label"]))
  iterator = data.TrainIterator(arrays, global_batch=64, seed=0)
  for batch in (next(iterator), next(iterator)):
    np.testing.assert_array_equal(batch["features"], arrays["features"][batch["index"]])
    np.testing.assert_array_equal(batch["label"], arrays["label"][batch["index"]])
  batches = list(data.eval_batches(arrays, global_batch=64))
  mask = np.concatenate([batch["mask"] for batch in batches]) == 1
  np.testing.assert_array_equal(np.concatenate([batch["features"] for batch in batches])[mask],
                                arrays["features"])


def test_pipeline_rejects_arrays_it_cannot_batch():
  with pytest.raises(ValueError, match="at least one input"):
    data.TrainIterator({"label": np.arange(N)}, global_batch=4, seed=0)
  float64 = {"features": np.zeros((N, 3)), "label": np.arange(N)}
  with pytest.raises(ValueError, match="'features' has dtype float64"):
    next(data.eval_batches(float64, global_batch=4))
