"""Tests for lopt.tasks.data: real tfds loading, offline, with no mocks.

The digits builder is prepared for real into a temporary data_dir. For the
path real datasets take (prepared elsewhere, read with download=False), the
tests define two tiny tfds builders, prepare them on disk in tfds's default
tfrecord format (read through TensorFlow) and in array_record (read without
it), and load them by the `tfds:` prefix. Everything prepared is shared per
module: preparing image datasets starts TensorFlow, several seconds on a
small machine.
"""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from sklearn.datasets import load_digits

from lopt.tasks import data, digits


class LoptTestTinyGray(tfds.core.GeneratorBasedBuilder):
  """28x28x1 uint8 noise, 3 classes, train/test only (like fashion_mnist)."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
      builder=self,
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(shape=(28, 28, 1)),
          "label": tfds.features.ClassLabel(num_classes=3),
        }
      ),
      supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {
      "train": self._generate_examples(0, 50),
      "test": self._generate_examples(1, 10),
    }

  def _generate_examples(self, seed, n):
    rng = np.random.default_rng(seed)
    for i in range(n):
      image = rng.integers(0, 256, (28, 28, 1), dtype=np.uint8)
      yield i, {"image": image, "label": i % 3}


class LoptTestTinyRgb(tfds.core.GeneratorBasedBuilder):
  """12x12x3 uint8 noise with its own validation split."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
      builder=self,
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(shape=(12, 12, 3)),
          "label": tfds.features.ClassLabel(num_classes=5),
        }
      ),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {
      "train": self._generate_examples(0, 20),
      "validation": self._generate_examples(1, 7),
      "test": self._generate_examples(2, 6),
    }

  def _generate_examples(self, seed, n):
    rng = np.random.default_rng(seed)
    for i in range(n):
      image = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
      yield i, {"image": image, "label": i % 5}


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
  """A data_dir into which load_dataset has prepared digits once."""
  data_dir = str(tmp_path_factory.mktemp("tfds_digits"))
  data.load_dataset("digits", data_dir=data_dir)
  return data_dir


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
  """A data_dir holding the two test datasets, prepared as tfrecord."""
  data_dir = str(tmp_path_factory.mktemp("tfds_tiny"))
  for cls in (LoptTestTinyGray, LoptTestTinyRgb):
    cls(data_dir=data_dir).download_and_prepare()
  return data_dir


@pytest.fixture(scope="module")
def tiny_array_record_dir(tmp_path_factory):
  """A data_dir holding the gray test dataset, prepared as array_record."""
  data_dir = str(tmp_path_factory.mktemp("tfds_tiny_ar"))
  LoptTestTinyGray(data_dir=data_dir).download_and_prepare(
    file_format="array_record"
  )
  return data_dir


def _raw(name, data_dir, split):
  """A tfrecord split read straight through tfds.load, bypassing lopt."""
  return tfds.as_numpy(
    tfds.load(
      name, split=split, data_dir=data_dir, batch_size=-1, download=False
    )
  )


def _raw_source(name, data_dir, split):
  """A random-access split read through tfds.data_source, bypassing lopt."""
  source = tfds.data_source(
    name, split=split, data_dir=data_dir, download=False
  )
  examples = [source[i] for i in range(len(source))]
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def test_digits_rows_match_sklearn(digits_dir):
  ds = data.load_dataset("digits", data_dir=digits_dir)
  sk = load_digits()
  want_x = (sk.images / 16.0).astype(np.float32)[..., None]
  assert ds.name == "digits" and ds.num_classes == 10
  assert ds.image_shape == (8, 8, 1)
  rows = {"train": (0, 1200), "validation": (1200, 1500), "test": (1500, 1797)}
  for split, (start, stop) in rows.items():
    x, y = getattr(ds, split)
    assert x.dtype == np.float32 and y.dtype == np.int32
    assert x.shape == (stop - start, 8, 8, 1)
    np.testing.assert_array_equal(x, want_x[start:stop])
    np.testing.assert_array_equal(y, sk.target[start:stop])
  assert 0.0 <= ds.train.images.min() and ds.train.images.max() == 1.0


def test_digits_is_a_plain_tfds_dataset(digits_dir):
  ds = data.load_dataset("digits", data_dir=digits_dir)
  builder = tfds.builder("digits", data_dir=digits_dir)
  assert builder.info.file_format.value == "array_record"
  train = _raw_source("digits", digits_dir, "train")
  assert train["image"].shape == (1500, 8, 8, 1)
  np.testing.assert_array_equal(
    train["image"], np.concatenate([ds.train.images, ds.validation.images])
  )
  # The carve-out is tfds's own percent slicing of train.
  held_out = _raw_source("digits", digits_dir, "train[80%:]")
  np.testing.assert_array_equal(held_out["image"], ds.validation.images)
  np.testing.assert_array_equal(held_out["label"], ds.validation.labels)


def test_digits_second_load_reuses_prepared_data(digits_dir):
  def snapshot():
    """Every file of the prepared dataset, with its size and mtime."""
    return {
      os.path.join(d, f): (
        os.stat(os.path.join(d, f)).st_size,
        os.stat(os.path.join(d, f)).st_mtime_ns,
      )
      for d, _, files in os.walk(os.path.join(digits_dir, "digits"))
      for f in files
    }

  before = snapshot()
  version = str(digits.Digits.VERSION)
  assert os.path.join(digits_dir, "digits", version, "dataset_info.json") in (
    before
  )
  ds = data.load_dataset("digits", data_dir=digits_dir, image_size=4)
  # Read, not prepared again: no file written, none added (rather than a
  # wall-clock bound, which a loaded machine breaks).
  assert snapshot() == before
  assert ds.train.images.shape == (1200, 4, 4, 1)


def test_validation_fraction(digits_dir):
  ds = data.load_dataset("digits", data_dir=digits_dir, validation_fraction=0.1)
  assert len(ds.train.labels) == 1350 and len(ds.validation.labels) == 150
  ds = data.load_dataset("digits", data_dir=digits_dir, validation_fraction=0)
  assert len(ds.train.labels) == 1500 and ds.validation.images.shape[0] == 0


def test_tfds_dataset_resized_and_carved(tiny_dir):
  name = "tfds:lopt_test_tiny_gray"
  ds = data.load_dataset(name, data_dir=tiny_dir, image_size=8)
  assert ds.name == name and ds.num_classes == 3
  assert ds.train.images.shape == (40, 8, 8, 1)
  assert ds.validation.images.shape == (10, 8, 8, 1)
  assert ds.test.images.shape == (10, 8, 8, 1)
  for split in (ds.train, ds.validation, ds.test):
    assert split.images.dtype == np.float32 and split.labels.dtype == np.int32
    assert 0.0 <= split.images.min() and split.images.max() <= 1.0

  # Validation is the last 20% of the stored train split, scaled by 1/255
  # and resized like jax.image.resize.
  raw = _raw("lopt_test_tiny_gray", tiny_dir, "train[80%:]")
  want = jax.image.resize(
    raw["image"].astype(np.float32) / 255, (10, 8, 8, 1), "linear"
  )
  np.testing.assert_allclose(ds.validation.images, want, atol=1e-6)
  np.testing.assert_array_equal(ds.validation.labels, raw["label"])

  native = data.load_dataset(name, data_dir=tiny_dir)
  raw = _raw("lopt_test_tiny_gray", tiny_dir, "train[:80%]")
  np.testing.assert_array_equal(native.train.images * 255, raw["image"])


def test_array_record_reads_like_tfrecord(tiny_dir, tiny_array_record_dir):
  # The same examples, stored in the two formats: the TensorFlow-free reader
  # (as_data_source, PIL decoding) gives exactly what tf.data gives.
  name = "tfds:lopt_test_tiny_gray"
  for image_size in (0, 8):
    via_tf = data.load_dataset(name, data_dir=tiny_dir, image_size=image_size)
    via_ar = data.load_dataset(
      name, data_dir=tiny_array_record_dir, image_size=image_size
    )
    for a, b in zip(
      (via_tf.train, via_tf.validation, via_tf.test),
      (via_ar.train, via_ar.validation, via_ar.test),
    ):
      np.testing.assert_array_equal(a.images, b.images)
      np.testing.assert_array_equal(a.labels, b.labels)
      assert b.images.dtype == np.float32 and b.labels.dtype == np.int32


def test_tfds_dataset_with_its_own_validation_split(tiny_dir):
  ds = data.load_dataset(
    "tfds:lopt_test_tiny_rgb", data_dir=tiny_dir, validation_fraction=0.5
  )
  assert ds.num_classes == 5 and ds.image_shape == (12, 12, 3)
  sizes = [len(s.labels) for s in (ds.train, ds.validation, ds.test)]
  assert sizes == [20, 7, 6]


def test_missing_dataset_says_how_to_get_it(tmp_path):
  with pytest.raises(data.DatasetNotFoundError) as err:
    data.load_dataset("fashion_mnist", data_dir=tmp_path)
  message = str(err.value)
  assert isinstance(err.value, ValueError)
  for part in (
    "fashion_mnist",
    str(tmp_path),
    "download_and_prepare(file_format='array_record')",
  ):
    assert part in message
  assert "--config.task.dataset=digits" in message


def test_unknown_names_list_the_choices(tmp_path):
  with pytest.raises(ValueError, match=r"digits.*fashion_mnist.*tfds:"):
    data.load_dataset("fashion-mnist", data_dir=tmp_path)
  with pytest.raises(ValueError, match="no_such_dataset"):
    data.load_dataset("tfds:no_such_dataset", data_dir=tmp_path)
  assert data.check_dataset_name("cifar10") == "cifar10"
  assert data.check_dataset_name("tfds:emnist/balanced") == "emnist/balanced"


def test_bad_arguments(tmp_path):
  with pytest.raises(ValueError, match="image_size"):
    data.load_dataset("digits", data_dir=tmp_path, image_size=-1)
  with pytest.raises(ValueError, match="validation_fraction"):
    data.load_dataset("digits", data_dir=tmp_path, validation_fraction=1.0)


def _resize_matrix(in_size, out_size, antialias):
  """The (out_size, in_size) matrix resize_images applies along one axis."""
  # Each input pixel's impulse response is one column of the matrix.
  eye = np.eye(in_size, dtype=np.float32)[:, :, None, None]
  out = data.resize_images(eye, (out_size, 1), antialias=antialias)
  return out[:, :, 0, 0].T


def test_resize_is_a_normalised_triangle_filter():
  # Halving 4 pixels, half-pixel centres: output pixel 0 is centred at input
  # 0.5. Plain bilinear averages its two neighbours; antialiased, the
  # triangle is twice as wide, weights (1 - d/2) at distances 0.5, 0.5, 1.5
  # = 3/4, 3/4, 1/4, normalised to sum to one.
  np.testing.assert_allclose(
    _resize_matrix(4, 2, antialias=False),
    [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]],
    atol=1e-6,
  )
  np.testing.assert_allclose(
    _resize_matrix(4, 2, antialias=True),
    np.array([[3, 3, 1, 0], [0, 1, 3, 3]]) / 7,
    atol=1e-6,
  )
  # Enlarging is interpolation either way: 2 -> 4 puts outputs at input
  # coordinates -0.25, 0.25, 0.75, 1.25 (clamped at the edges).
  for antialias in (True, False):
    np.testing.assert_allclose(
      _resize_matrix(2, 4, antialias=antialias),
      [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]],
      atol=1e-6,
    )


@pytest.mark.parametrize(
  "shape", [(28, 28, 8, 8), (8, 8, 20, 20), (9, 6, 4, 5), (12, 12, 7, 3)]
)
def test_resize_matches_pil_bilinear(shape):
  # PIL's BILINEAR resize is an independent implementation of the same
  # filter: a triangle widened by the shrink factor, half-pixel centres.
  in_h, in_w, out_h, out_w = shape
  x = np.random.default_rng(0).random((2, in_h, in_w, 1), dtype=np.float32)
  got = data.resize_images(x, (out_h, out_w))
  assert got.shape == (2, out_h, out_w, 1) and got.dtype == np.float32
  for image, resized in zip(x[..., 0], got[..., 0]):
    want = Image.fromarray(image).resize(
      (out_w, out_h), Image.Resampling.BILINEAR
    )
    np.testing.assert_allclose(resized, np.asarray(want), atol=1e-6)


def test_resize_antialias_removes_aliasing():
  # A one-pixel checkerboard has no frequency an 8x8 image can hold: shrunk
  # from 28x28 with antialiasing it becomes its mean, flat grey; sampled
  # without, it aliases into a pattern of 0.375 and 0.625.
  checker = np.indices((28, 28)).sum(0) % 2
  x = np.stack([checker, 1 - checker]).astype(np.float32)[..., None]
  smooth = data.resize_images(x, (8, 8))
  np.testing.assert_allclose(smooth, 0.5, atol=0.005)
  aliased = data.resize_images(x, (8, 8), antialias=False)
  assert aliased.std() > 0.1
  np.testing.assert_allclose(np.unique(aliased.round(6)), [0.375, 0.625])


def test_resize_keeps_constants_range_and_native_size():
  x = np.full((3, 28, 28, 2), 0.3, np.float32)
  for size in ((8, 8), (40, 13)):
    np.testing.assert_allclose(data.resize_images(x, size), 0.3, atol=1e-6)
  # Outputs are convex combinations, clipped to [0, 1] against rounding.
  extremes = np.random.default_rng(2).integers(0, 2, (4, 9, 7, 1))
  out = data.resize_images(extremes.astype(np.float32), (4, 5))
  assert 0.0 <= out.min() and out.max() <= 1.0
  native = np.random.default_rng(1).random((2, 5, 5, 1))
  same = data.resize_images(native, (5, 5))
  assert same.dtype == np.float32
  np.testing.assert_array_equal(same, native.astype(np.float32))


def test_default_data_dir(monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", "gs://bucket/tfds")
  assert data.default_data_dir() == "gs://bucket/tfds"
  monkeypatch.delenv("TFDS_DATA_DIR")
  assert data.default_data_dir() == os.path.expanduser("~/tensorflow_datasets")


def test_import_does_not_load_tensorflow():
  code = "import sys, lopt.tasks.data; assert 'tensorflow' not in sys.modules"
  subprocess.run([sys.executable, "-c", code], check=True)


def test_digits_and_array_record_load_without_tensorflow(
  tmp_path, tiny_array_record_dir
):
  # In a fresh interpreter (this one has imported TensorFlow for the tfrecord
  # tests): prepare and load digits, python_stdlib and diabetes, and load an
  # array_record dataset whose builder that interpreter does not know (tfds
  # reads it from its files).
  code = f"""
import sys
from lopt.tasks import data
digits = data.load_dataset("digits", data_dir={str(tmp_path)!r}, image_size=4)
assert digits.train.images.shape == (1200, 4, 4, 1)
stdlib = data.load_dataset("python_stdlib", data_dir={str(tmp_path)!r})
assert stdlib.kind == "text" and stdlib.train.images.size > 10**6
diabetes = data.load_dataset("diabetes", data_dir={str(tmp_path)!r})
assert diabetes.kind == "regression"
assert diabetes.test.images.shape == (88, 10)
tiny = data.load_dataset(
  "tfds:lopt_test_tiny_gray", data_dir={tiny_array_record_dir!r}
)
assert tiny.train.images.shape == (40, 28, 28, 1)
assert "tensorflow" not in sys.modules, "TensorFlow was imported"
"""
  result = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
  )
  assert result.returncode == 0, result.stderr[-3000:]
