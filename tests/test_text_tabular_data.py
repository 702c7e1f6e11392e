"""Tests for the offline text and tabular datasets of lopt.tasks.data.

`python_stdlib` (lopt.tasks.text) and `diabetes` (lopt.tasks.tabular) are
prepared for real, once per module, into a temporary data_dir, and checked
against an independent reading of their sources: the standard-library files
on disk and scikit-learn's table. No mocks.
"""

import os
import sys
import sysconfig
import zlib

import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn.datasets import load_diabetes

from lopt.tasks import data, tabular, text


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """A data_dir into which load_dataset has prepared both datasets once."""
  data_dir = str(tmp_path_factory.mktemp("tfds_text_tabular"))
  data.load_dataset("python_stdlib", data_dir=data_dir)
  data.load_dataset("diabetes", data_dir=data_dir)
  return data_dir


def _stdlib_files_by_split():
  """{split: [(name, bytes)]}: the rule of lopt.tasks.text, written again."""
  directory = sysconfig.get_paths()["stdlib"]
  names = sorted(
    name
    for name in os.listdir(directory)
    if name.endswith(".py") and os.path.isfile(os.path.join(directory, name))
  )
  files = {"train": [], "validation": [], "test": []}
  for name in names:
    bucket = zlib.crc32(name.encode()) % 10
    split = {0: "test", 1: "validation"}.get(bucket, "train")
    with open(os.path.join(directory, name), "rb") as f:
      files[split].append((name, f.read()))
  return files


def _bytes(stream):
  return stream.astype(np.uint8).tobytes()


def _snapshot(directory):
  """Every file under `directory`, with its size and mtime."""
  return {
    os.path.join(d, f): (
      os.stat(os.path.join(d, f)).st_size,
      os.stat(os.path.join(d, f)).st_mtime_ns,
    )
    for d, _, files in os.walk(directory)
    for f in files
  }


def test_python_stdlib_streams_are_its_files_in_whole_chunks(data_dir):
  ds = data.load_dataset("python_stdlib", data_dir=data_dir)
  assert ds.name == "python_stdlib" and ds.kind == "text"
  assert ds.num_classes == 256 and ds.target_mean is None
  files = _stdlib_files_by_split()
  for split, split_files in files.items():
    tokens, labels = getattr(ds, split)
    assert tokens.dtype == np.int32 and tokens.ndim == 1
    assert labels.dtype == np.int32 and labels.shape == (0,)
    assert 0 <= tokens.min() and tokens.max() < 256
    # The split's files in name order, each followed by b"\n", cut to
    # whole chunks: the remainder is dropped, nothing padded.
    stream = b"".join(content + b"\n" for _, content in split_files)
    whole = len(stream) // text.CHUNK_SIZE * text.CHUNK_SIZE
    assert len(tokens) == whole > 0
    assert _bytes(tokens) == stream[:whole]
  assert ds.image_shape == ()  # One token per example.


def test_python_stdlib_splits_are_held_out_files(data_dir):
  ds = data.load_dataset("python_stdlib", data_dir=data_dir)
  streams = {s: _bytes(getattr(ds, s).images) for s in text.SPLITS}
  files = _stdlib_files_by_split()
  assert len(files["test"]) >= 5 and len(files["validation"]) >= 5
  names = {s: {n for n, _ in f} for s, f in files.items()}
  assert not names["train"] & (names["test"] | names["validation"])
  assert not names["test"] & names["validation"]
  # Every held-out file but the last of its split (possibly cut at the end)
  # is in its own stream, and its opening is nowhere in the others.
  for split in ("test", "validation"):
    for _, content in files[split][:-1]:
      opening = content[:200]
      assert opening in streams[split]
      others = (streams[s] for s in text.SPLITS if s != split)
      assert not any(opening in other for other in others)


def test_python_stdlib_is_a_per_version_tfds_dataset(data_dir):
  version = f"{sys.version_info.major}.{sys.version_info.minor}"
  assert text.TFDS_NAME == f"python_stdlib/py{version}"
  assert data.check_dataset_name("python_stdlib") == text.TFDS_NAME
  builder = tfds.builder(text.TFDS_NAME, data_dir=data_dir)
  assert builder.is_prepared()
  assert builder.info.file_format.value == "array_record"
  assert builder.info.disable_shuffling
  # Prepared in a folder of its own minor version: another Python's
  # standard library is never read as this one's.
  assert os.path.isdir(os.path.join(data_dir, "python_stdlib", f"py{version}"))
  assert sys.version.split()[0] in builder.info.description
  # tfds's own reader sees the same chunks, in stream order.
  source = tfds.data_source(text.TFDS_NAME, split="test", data_dir=data_dir)
  chunks = np.stack([source[i]["tokens"] for i in range(len(source))])
  assert chunks.dtype == np.uint8 and chunks.shape[1] == text.CHUNK_SIZE
  ds = data.load_dataset("python_stdlib", data_dir=data_dir)
  np.testing.assert_array_equal(chunks.reshape(-1), ds.test.images)


def test_second_loads_reuse_the_prepared_data(data_dir):
  before = _snapshot(data_dir)
  assert (
    os.path.join(
      data_dir, "python_stdlib", text.CONFIG_NAME, "1.0.0", "dataset_info.json"
    )
    in before
  )
  assert os.path.join(data_dir, "diabetes", "1.0.0", "dataset_info.json") in (
    before
  )
  data.load_dataset("python_stdlib", data_dir=data_dir)
  data.load_dataset("diabetes", data_dir=data_dir)
  # Read, not prepared again: no file written, none added.
  assert _snapshot(data_dir) == before


def test_image_size_must_be_zero_for_text_and_tables(tmp_path):
  for name in ("python_stdlib", "diabetes"):
    with pytest.raises(ValueError, match="image_size must be 0"):
      data.load_dataset(name, data_dir=tmp_path, image_size=4)
  assert not os.listdir(tmp_path)  # Refused before preparing anything.


def test_diabetes_rows_match_sklearn(data_dir):
  ds = data.load_dataset("diabetes", data_dir=data_dir)
  assert ds.name == "diabetes" and ds.kind == "regression"
  assert ds.num_classes == 0 and ds.image_shape == (10,)
  sk = load_diabetes(scaled=False)
  x, y = sk.data, sk.target
  rows = {"train": (0, 283), "validation": (283, 354), "test": (354, 442)}
  # The transform, computed independently from the training rows.
  mean, std = x[:283].mean(0), x[:283].std(0)
  np.testing.assert_allclose(ds.target_mean, y[:283].mean(), rtol=1e-6)
  np.testing.assert_allclose(ds.target_std, y[:283].std(), rtol=1e-6)
  for split, (start, stop) in rows.items():
    features, targets = getattr(ds, split)
    assert features.dtype == np.float32 and targets.dtype == np.float32
    assert features.shape == (stop - start, 10)
    assert targets.shape == (stop - start,)
    np.testing.assert_allclose(
      features * std + mean, x[start:stop], rtol=1e-5, atol=1e-4
    )
    # The recorded stats map standardised targets back to the real ones.
    np.testing.assert_allclose(
      targets * ds.target_std + ds.target_mean, y[start:stop], atol=1e-3
    )


def test_diabetes_is_standardised_with_train_statistics(data_dir):
  ds = data.load_dataset("diabetes", data_dir=data_dir)
  np.testing.assert_allclose(ds.train.images.mean(0), 0, atol=1e-5)
  np.testing.assert_allclose(ds.train.images.std(0), 1, atol=1e-5)
  np.testing.assert_allclose(ds.train.labels.mean(), 0, atol=1e-5)
  np.testing.assert_allclose(ds.train.labels.std(), 1, atol=1e-5)
  # Held-out rows get the train transform, not their own: their mean is
  # the shift of their raw mean in train units, not 0.
  sk = load_diabetes(scaled=False)
  x_train, x_test = sk.data[:283], sk.data[354:]
  want = (x_test.mean(0) - x_train.mean(0)) / x_train.std(0)
  np.testing.assert_allclose(ds.test.images.mean(0), want, atol=1e-5)
  assert np.abs(ds.test.images.mean(0)).max() > 0.05
  # Without a validation carve-out, the statistics are those of all 354
  # tfds train rows.
  full = data.load_dataset("diabetes", data_dir=data_dir, validation_fraction=0)
  assert len(full.train.labels) == 354 and len(full.validation.labels) == 0
  np.testing.assert_allclose(full.target_mean, sk.target[:354].mean())


def test_diabetes_builder_stores_raw_rows(data_dir):
  sk = load_diabetes(scaled=False)
  for split, (start, stop) in {"train": (0, 354), "test": (354, 442)}.items():
    source = tfds.data_source("diabetes", split=split, data_dir=data_dir)
    features = np.stack([source[i]["features"] for i in range(len(source))])
    targets = np.array([source[i]["target"] for i in range(len(source))])
    np.testing.assert_array_equal(
      features, sk.data[start:stop].astype(np.float32)
    )
    np.testing.assert_array_equal(targets, sk.target[start:stop])


def test_standardise_rejects_an_empty_train_split():
  empty = (np.zeros((0, 3)), np.zeros((0,)))
  with pytest.raises(ValueError, match="empty training split"):
    tabular.standardise([empty, empty])


def test_dataset_kind():
  kinds = {name: data.dataset_kind(name) for name in data.DATASETS}
  assert kinds == {
    "digits": "images",
    "mnist": "images",
    "fashion_mnist": "images",
    "kmnist": "images",
    "cifar10": "images",
    "cifar100": "images",
    "python_stdlib": "text",
    "diabetes": "regression",
  }
  assert data.dataset_kind("tfds:foo") == "images"
  with pytest.raises(ValueError, match=r"Unknown dataset 'stdlib'.*diabetes"):
    data.dataset_kind("stdlib")
  # Old positional construction still gives an image dataset.
  split = data.Split(np.zeros((1, 2, 2, 1)), np.zeros(1, np.int32))
  assert data.Dataset("x", split, split, split, 3).kind == "images"
