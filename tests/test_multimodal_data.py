"""Tests of the multimodal datasets against the real raw files and against references computed here."""
import io
import pathlib
import tarfile
import wave
import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from mmjax import config as config_lib
from mmjax import data
from mmjax.data import av_digits
from mmjax.data import omniglot_strokes
from mmjax.data import raw_files
from mmjax.data import sort_of_clevr

# Colours of Sort-of-CLEVR's objects in its COLORS order, written out again here.
RGB = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 156, 0), (128, 128, 128), (255, 255, 0)]


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  """A fresh tfds directory, so that the generated builders really run."""
  return tmp_path_factory.mktemp("tfds")


def stored(name: str, split: str, tfds_dir=None) -> dict[str, np.ndarray]:
  """Every stored feature of a split, the scene and pairing metadata included."""
  builder = data.get_builder(name, tfds_dir=tfds_dir)
  return tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))


# Sort-of-CLEVR.

def reference_answer(centers, shapes, question) -> int:
  """The kimhc6028 generator's answer rules, written as plain loops over the scene."""
  color = int(np.argmax(question[:6]))
  relational = question[7] == 1
  subtype = int(np.argmax(question[8:]))
  shape_answer = {0: 2, 1: 3}  # rectangle, circle
  x, y = centers[color]
  if not relational:
    return [shape_answer[shapes[color]], 0 if x < 37.5 else 1, 0 if y < 37.5 else 1][subtype]
  if subtype == 2:
    return 3 + sum(1 for s in shapes if s == shapes[color])
  others = [(float(np.hypot(*(centers[i] - centers[color]))), i) for i in range(6) if i != color]
  _, chosen = min(others) if subtype == 0 else max(others)
  return shape_answer[shapes[chosen]]


@pytest.mark.parametrize("split, count", [("train", 9800), ("validation", 200)])
def test_sort_of_clevr_counts_shapes_and_answers(tfds_dir, split, count):
  arrays = data.load_split("sort_of_clevr", split, tfds_dir=tfds_dir)
  assert {k: (v.shape, v.dtype) for k, v in arrays.items()} == {
      "image": ((count, 75, 75, 3), np.uint8), "question": ((count, 20, 11), np.float32),
      "label": ((count, 20), np.int32), "relational": ((count, 20), np.int32),
      "question_type": ((count, 20), np.int32)}
  np.testing.assert_array_equal(arrays["relational"], np.repeat([[0] * 10 + [1] * 10], count, axis=0))
  question = arrays["question"]
  assert set(np.unique(question)) == {0.0, 1.0}
  np.testing.assert_array_equal(question.sum(-1), 3)  # one colour, one type and one subtype bit
  np.testing.assert_array_equal(question[..., 7], arrays["relational"])
  # Non-relational answers are yes/no/shape, relational ones shape/count: 10 answers all used.
  assert set(np.unique(arrays["label"][:, :10])) == {0, 1, 2, 3}
  assert set(np.unique(arrays["label"][:, 10:])) <= set(range(2, 10))
  if split == "train":
    assert set(np.unique(arrays["label"])) == set(range(len(sort_of_clevr.ANSWERS)))
  # Question types: shape/left/top for the first 10, and each type's answers are of its kind.
  kinds = {"shape": {2, 3}, "left": {0, 1}, "top": {0, 1}, "closest": {2, 3}, "furthest": {2, 3},
           "count": set(range(4, 10))}
  assert tuple(kinds) == sort_of_clevr.QUESTION_TYPES
  # The config names the same ids (it keeps a literal copy so that loading it needs no tfds).
  config_types = config_lib.load(
      str(pathlib.Path(__file__).resolve().parents[1] / "configs/sort_of_clevr.py") + ":early").vqa.question_types
  assert tuple(config_types) == sort_of_clevr.QUESTION_TYPES
  np.testing.assert_array_equal(arrays["question_type"] >= 3, arrays["relational"] == 1)
  for i, name in enumerate(sort_of_clevr.QUESTION_TYPES):
    assert set(np.unique(arrays["label"][arrays["question_type"] == i])) <= kinds[name], name
  scenes = stored("sort_of_clevr", split, tfds_dir)
  for i in range(0, count, max(1, count // 200)):
    expected = [reference_answer(scenes["centers"][i], scenes["shapes"][i], q) for q in question[i]]
    np.testing.assert_array_equal(arrays["label"][i], expected, err_msg=f"image {i}")


def test_sort_of_clevr_images_show_their_disjoint_scene(tfds_dir):
  scenes = stored("sort_of_clevr", "validation", tfds_dir)
  for image, centers, shapes in zip(scenes["image"], scenes["centers"], scenes["shapes"]):
    # An 11x11 square has 121 pixels and a radius-5 disc 81: any overlap would hide some of them.
    painted = 0
    for rgb, (x, y), shape in zip(RGB, centers, shapes):
      pixels = (image == rgb).all(-1)
      assert pixels.sum() == (121 if shape == 0 else 81)
      assert pixels[y, x] and pixels[y - 5, x - 5] == (shape == 0)
      painted += pixels.sum()
    assert (image == 255).all(-1).sum() == 75 * 75 - painted


def test_sort_of_clevr_is_deterministic_per_seed(tfds_dir):
  scenes = stored("sort_of_clevr", "validation", tfds_dir)
  again = sort_of_clevr.generate_split("validation", seed=sort_of_clevr.SEED)
  np.testing.assert_array_equal(np.stack([e["image"] for e in again]), scenes["image"])
  np.testing.assert_array_equal(np.stack([e["label"] for e in again]), scenes["label"])
  other = sort_of_clevr.generate_split("validation", seed=sort_of_clevr.SEED + 1)
  assert not np.array_equal(np.stack([e["centers"] for e in other]), scenes["centers"])


# Audio-visual digits.

def read_fsdd_reference() -> dict[tuple[str, int, int], np.ndarray]:
  """{(speaker, digit, index): int16 samples} of every FSDD recording, parsed without mmjax."""
  recordings = {}
  with tarfile.open(data.resolve_data_dir() / "fsdd" / "recordings.tar.gz") as tar:
    for member in tar.getmembers():
      if member.isfile() and member.name.endswith(".wav"):
        digit, speaker, index = member.name.split("/")[-1][:-4].split("_")
        with wave.open(io.BytesIO(tar.extractfile(member).read())) as wav:
          samples = np.frombuffer(wav.readframes(wav.getnframes()), np.int16)
        recordings[speaker, int(digit), int(index)] = samples
  return recordings


@pytest.fixture(scope="module")
def fsdd():
  return read_fsdd_reference()


AV_SETS = {  # name -> (image dataset, speakers)
    "av_digits": ("mnist", ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"]),
    "av_digits_da_source": ("mnist", ["george", "jackson", "lucas"]),
    "av_digits_da_target": ("usps", ["nicolas", "theo", "yweweler"]),
}


@pytest.mark.parametrize("name", list(AV_SETS))
@pytest.mark.parametrize("split", ["train", "test"])
def test_av_digits_pairs_each_recording_with_an_image_of_its_digit(name, split, fsdd):
  image_dataset, speakers = AV_SETS[name]
  per_speaker_and_digit = 5 if split == "test" else 45  # FSDD: recordings 0-4 are the test set
  count = 10 * len(speakers) * per_speaker_and_digit
  arrays = data.load_split(name, split)
  assert {k: (v.shape, v.dtype) for k, v in arrays.items()} == {
      "image": ((count, 28, 28, 1), np.uint8), "audio": ((count, 8000), np.float32),
      "label": ((count,), np.int32), "speaker": ((count,), np.int32)}
  expected_speakers = [av_digits.SPEAKERS.index(s) for s in speakers]
  assert sorted(np.unique(arrays["speaker"])) == expected_speakers
  np.testing.assert_array_equal(np.bincount(arrays["label"]), [count // 10] * 10)
  meta = stored(name, split)
  assert (meta["recording"] < 5).all() if split == "test" else (meta["recording"] >= 5).all()
  images = data.load_split(image_dataset, split)
  index = meta["image_index"]
  assert len(set(index)) == count  # distinct images
  np.testing.assert_array_equal(images["label"][index], arrays["label"])
  np.testing.assert_array_equal(images["image"][index], arrays["image"])
  for i in range(0, count, 7):
    samples = fsdd[av_digits.SPEAKERS[arrays["speaker"][i]], arrays["label"][i], meta["recording"][i]]
    expected = np.zeros(8000, np.float32)
    expected[:min(len(samples), 8000)] = samples[:8000] / 32768
    np.testing.assert_array_equal(arrays["audio"][i], expected)


def test_av_digits_counts_recordings_longer_than_a_second(fsdd):
  lengths = np.concatenate([stored("av_digits", split)["num_samples"] for split in ("train", "test")])
  np.testing.assert_array_equal(np.sort(lengths), np.sort([len(s) for s in fsdd.values()]))
  assert (lengths > 8000).sum() == 20


def test_missing_fsdd_says_how_to_make_it_and_downloads_nothing(tmp_path, monkeypatch):
  opened = []
  monkeypatch.setattr(raw_files.urllib.request, "urlopen", lambda url, timeout: opened.append(url))
  with pytest.raises(data.MissingDataError) as error:
    data.get_builder("av_digits", data_dir=tmp_path / "raw", tfds_dir=tmp_path / "tfds")
  message = str(error.value)
  assert str(tmp_path / "raw" / "fsdd") in message and "recordings.tar.gz" in message
  assert "git archive HEAD recordings" in message and av_digits.RAW_FILE.sha256 in message
  assert not opened


def test_av_digits_pairing_is_deterministic_per_seed():
  rng = np.random.default_rng(0)
  audio_labels, image_labels = rng.integers(0, 10, 300), rng.integers(0, 10, 5000)
  first = av_digits.pair_images(audio_labels, image_labels, seed=3, stream=1)
  np.testing.assert_array_equal(first, av_digits.pair_images(audio_labels, image_labels, seed=3, stream=1))
  np.testing.assert_array_equal(image_labels[first], audio_labels)
  assert not np.array_equal(first, av_digits.pair_images(audio_labels, image_labels, seed=4, stream=1))
  with pytest.raises(ValueError, match="images"):
    av_digits.pair_images(np.zeros(3, int), np.array([0, 0, 1]), seed=0, stream=0)


# Omniglot image <-> strokes.

def rasterize(strokes: np.ndarray, size: int = 105, width: float = 2.5) -> np.ndarray:
  """Pixels within `width` of a pen-down segment or a dot of the stroke-3 rows, as bool [size, size]."""
  points = np.cumsum(strokes[:, :2], axis=0) * 105
  y, x = np.mgrid[:size, :size] * (105 / size) + 105 / size / 2 - 0.5
  ink = np.zeros((size, size), bool)
  for k, (px, py) in enumerate(points):
    if k + 1 < len(points) and strokes[k + 1, 2] == 0 and strokes[k + 1].any():
      qx, qy = points[k + 1]
    else:
      qx, qy = px, py  # the end of a stroke (or a dot)
    dx, dy = qx - px, qy - py
    t = np.clip(((x - px) * dx + (y - py) * dy) / max(dx * dx + dy * dy, 1e-9), 0, 1)
    ink |= np.hypot(x - px - t * dx, y - py - t * dy) <= width
  return ink


@pytest.mark.parametrize("split, count, characters", [("train", 2720, 136), ("test", 2120, 106)])
def test_omniglot_strokes_counts_and_faithful_images(tfds_dir, split, count, characters):
  arrays = data.load_split("omniglot_strokes", split, tfds_dir=tfds_dir)
  assert {k: (v.shape, v.dtype) for k, v in arrays.items()} == {
      "image": ((count, 28, 28, 1), np.uint8), "strokes": ((count, 64, 3), np.float32),
      "label": ((count,), np.int32), "drawing": ((count,), np.int32)}
  np.testing.assert_array_equal(np.bincount(arrays["label"]), [20] * characters)
  assert len(set(arrays["drawing"])) == count
  # Drawing id d is entry (d // 20, d % 20) of the full background set in the npz files.
  npz = np.load(data.resolve_data_dir() / "omniglot" / "images_background.npz")["images"]
  ink = ~npz[arrays["drawing"] // 20, arrays["drawing"] % 20]
  meta = stored("omniglot_strokes", split, tfds_dir)
  np.testing.assert_array_equal(meta["image"][..., 0], np.where(ink, 255, 0))
  resized = np.stack([np.asarray(Image.fromarray(255 * d.astype(np.uint8)).resize((28, 28), Image.BILINEAR))
                      for d in ink[::10]])
  # Pillow's bilinear resize also widens its filter when it shrinks: the two agree up to rounding.
  assert np.abs(resized.astype(int) - arrays["image"][::10, ..., 0]).max() <= 1
  pen = arrays["strokes"][..., 2]
  assert set(np.unique(pen)) == {0, 1} and (pen[:, 0] == 1).all()
  other_split = "test" if split == "train" else "train"
  other = stored("omniglot_strokes", other_split, tfds_dir)["character"]
  assert not set(other) & set(meta["character"])


def test_omniglot_strokes_draw_the_image(tfds_dir):
  meta = stored("omniglot_strokes", "test", tfds_dir)
  images, strokes = meta["image"][::20, ..., 0] > 127, meta["strokes"][::20]
  iou = lambda a, b: (a & b).sum() / (a | b).sum()
  matched = [iou(rasterize(s), img) for s, img in zip(strokes, images)]
  shuffled = [iou(rasterize(s), img) for s, img in zip(strokes, np.roll(images, 1, axis=0))]
  assert np.median(matched) > 0.85 and min(matched) > 0.6  # measured: 0.91 and 0.77
  assert np.median(shuffled) < 0.25  # measured: 0.12
  # One pen lift per stroke: per drawing, as many as the stroke file has BREAKs.
  breaks = {}
  with zipfile.ZipFile(data.resolve_data_dir() / "omniglot" / "strokes_background_small2.zip") as archive:
    for member in archive.namelist():
      if member.endswith(".txt") and "__MACOSX" not in member:
        character, drawer = member.split("/")[-1][:-4].split("_")
        breaks[(int(character) - 1) * 20 + int(drawer) - 1] = archive.read(member).split().count(b"BREAK")
  np.testing.assert_array_equal(meta["strokes"][..., 2].sum(1), [breaks[d] for d in meta["drawing"]])


@pytest.mark.parametrize("name, split", [("sort_of_clevr", "validation"), ("av_digits", "test"),
                                         ("omniglot_strokes", "test")])
def test_multimodal_splits_batch_through_the_pipeline(tfds_dir, name, split):
  arrays = data.load_split(name, split, tfds_dir=None if name == "av_digits" else tfds_dir)
  batch = next(data.TrainIterator(arrays, global_batch=8, seed=0))
  for key, values in arrays.items():
    assert batch[key].shape == (8, *values.shape[1:])
    expected = np.float32 if values.dtype == np.uint8 else values.dtype
    assert batch[key].dtype == expected, key
  assert 0 <= batch["image"].min() and batch["image"].max() <= 1 and batch["image"].max() > 0.5
