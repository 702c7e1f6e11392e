"""Small datasets, loaded whole into host memory as numpy.

The learned-optimizer tasks train tiny models on small datasets. The arrays
are loaded once, put on the devices replicated, and minibatches are sampled
inside jit (see design.md, "Data"), so this module only has to turn a
dataset name into three in-memory splits:

  ds = load_dataset("fashion_mnist", image_size=8)
  x, y = ds.train  # float32 (n, 8, 8, 1) in [0, 1], int32 (n,)

Every dataset goes through tensorflow-datasets (tfds), read from `data_dir`
with downloads off:

* `digits`, the default, is the 1,797 real 8x8 handwritten digits that
  scikit-learn bundles. `lopt.tasks.digits.Digits` is a tfds builder for
  it; importing this module registers it, and `load_dataset` prepares it
  into `data_dir` on first use, offline, in the `array_record` file format
  (`tfrecord` under a gs:// `data_dir`: array_record reads local files
  only). After that it is a prepared tfds dataset like any other
  (`tfds.data_source("digits", data_dir=...)` reads it too).
* `python_stdlib` (kind "text": this Python's standard library as bytes,
  `lopt.tasks.text`) and `diabetes` (kind "regression", `lopt.tasks.tabular`)
  are offline builders like `digits`; their modules give their splits.
* `mnist`, `fashion_mnist`, ... (see `DATASETS`) must already be prepared in
  `data_dir`; otherwise `DatasetNotFoundError` says how to get them.
* `tfds:<name>` loads any other registered tfds dataset with an image and a
  label feature, e.g. `tfds:emnist/balanced`.

TensorFlow. A split stored in a random-access format (`array_record`, as
lopt prepares `digits` on local disk, or `parquet`) is read with
`builder.as_data_source`, which needs no TensorFlow, so loading `digits`
never imports it: TensorFlow's import is most of the time and memory that
reading a small dataset through `tf.data` costs (measurements:
docs/performance.md). A split stored as `tfrecord`, the default of
`download_and_prepare`, can only be read through `tf.data` (tfds has no
TensorFlow-free tfrecord reader), so TensorFlow is imported then, with its
GPUs hidden so it does not reserve accelerator memory that JAX needs. To
read mnist & co. without TensorFlow, prepare them with
`download_and_prepare(file_format="array_record")` (the not-found message
says so); preparing datasets with image features still runs TensorFlow
(tfds encodes the PNGs with it), reading them does not.

Splits. A dataset's own `validation` split is used when it has one. Otherwise
the last `validation_fraction` of its `train` split becomes the validation set
and the rest stays `train`, in the stored order, so the split is deterministic
and equals tfds's `train[:80%]` / `train[80%:]` for the default 0.2. That is
the NRES paper's split for Fashion-MNIST (inner loss on the first 80%,
validation on the last 20%). `test` is the dataset's `test` split.

For `digits` the tfds splits are `train` = rows 0-1499 and `test` = rows
1500-1796 of `sklearn.datasets.load_digits()`, in row order. With the default
`validation_fraction=0.2` that gives train = rows 0-1199, validation = rows
1200-1499 and test = rows 1500-1796. Rows 0-1499 are the training set of the
peer benchmark (shared/peers/digits_task.py), whose validation set is our test.

Pixels are scaled to [0, 1] (uint8 / 255; digits are 0..16 / 16), and
`image_size > 0` resizes with antialiased bilinear interpolation
(`jax.image.resize`, see `resize_images`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds
from absl import logging

# Importing them registers the offline tfds builders (see `DATASETS`).
from lopt.tasks import digits, tabular, text  # noqa: F401

# Name prefix that selects an arbitrary registered tfds dataset.
TFDS_PREFIX = "tfds:"

# The file format lopt prepares datasets in (on local disk), and recommends:
# random access, read without TensorFlow (tfrecord, tfds's default, needs
# tf.data).
_TF_FREE_FORMAT = "array_record"


class DatasetSpec(NamedTuple):
  """How a supported dataset is found in tfds.

  Attributes:
    tfds_name: the tfds builder name (optionally with config/version).
    offline: whether lopt can prepare it without network (else it must be
      prepared in `data_dir` beforehand).
    note: what the dataset is and what getting it takes.
    kind: "images", "text" or "regression": what its splits hold (`Split`).
  """

  tfds_name: str
  offline: bool
  note: str
  kind: str = "images"


# The datasets `task.dataset` accepts by short name. Any other registered tfds
# image-classification dataset works as `tfds:<name>`.
DATASETS: Mapping[str, DatasetSpec] = {
  "digits": DatasetSpec(
    "digits",
    True,
    "8x8x1, 10 classes, 1,797 images; bundled with scikit-learn, "
    "prepared offline on first use",
  ),
  "mnist": DatasetSpec(
    "mnist", False, "28x28x1, 10 classes, 70k images; ~11 MiB download"
  ),
  "fashion_mnist": DatasetSpec(
    "fashion_mnist",
    False,
    "28x28x1, 10 classes, 70k images; ~30 MiB download",
  ),
  "kmnist": DatasetSpec(
    "kmnist", False, "28x28x1, 10 classes, 70k images; ~20 MiB download"
  ),
  "cifar10": DatasetSpec(
    "cifar10", False, "32x32x3, 10 classes, 60k images; ~160 MiB download"
  ),
  "cifar100": DatasetSpec(
    "cifar100",
    False,
    "32x32x3, 100 classes, 60k images; ~160 MiB download",
  ),
  "python_stdlib": DatasetSpec(
    text.TFDS_NAME, True, "text, 256 byte values, ~4.7 MB; offline", "text"
  ),
  "diabetes": DatasetSpec(
    "diabetes", True, "10 features, 442 rows; offline", "regression"
  ),
}


class DatasetNotFoundError(ValueError):
  """A tfds dataset is not prepared in the data directory."""


class Split(NamedTuple):
  """One split held in memory; what it holds depends on the dataset's kind.

  Attributes:
    images: "images": float32 (n, height, width, channels) in [0, 1].
      "text": the split's int32 token stream, shape (n,), values in
      [0, num_classes). "regression": float32 features (n, d), standardised.
    labels: "images": int32 class labels (n,). "text": empty, int32 (0,)
      (the targets are the stream's next tokens). "regression": float32
      targets (n,), standardised.
  """

  images: np.ndarray
  labels: np.ndarray


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """A small dataset held in memory.

  Attributes:
    name: the name it was loaded by, e.g. `"digits"` or `"tfds:kmnist"`.
    train: the inner-training split.
    validation: the held-out split (see the module docstring for the rule).
    test: the dataset's test split.
    num_classes: number of label classes ("images"), the vocabulary size
      ("text"), 0 ("regression").
    kind: "images", "text" or "regression"; `Split` says what each holds.
    target_mean: "regression": the train target's mean, None otherwise.
    target_std: "regression": the train target's std; a standardised
      prediction p maps back to `p * target_std + target_mean`.
  """

  name: str
  train: Split
  validation: Split
  test: Split
  num_classes: int
  kind: str = "images"
  target_mean: float | None = None
  target_std: float | None = None

  @property
  def image_shape(self) -> tuple[int, ...]:
    """(height, width, channels) of every image; for text (), for rows (d,)."""
    return tuple(self.train.images.shape[1:])


# ---------------------------------------------------------------------------
# Loading.


def default_data_dir() -> str:
  """The tfds data directory used when none is given.

  Returns:
    `$TFDS_DATA_DIR` if set (it may be a `gs://` path), else
    `~/tensorflow_datasets`, with `~` expanded.
  """
  return os.path.expanduser(
    os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
  )


def check_dataset_name(name: str) -> str:
  """Checks a dataset name without touching the disk.

  Args:
    name: a key of `DATASETS`, or `tfds:<tfds name>`.

  Returns:
    The tfds builder name to load.

  Raises:
    ValueError: the name is neither, listing the valid choices.
  """
  if name in DATASETS:
    return DATASETS[name].tfds_name
  if name.startswith(TFDS_PREFIX) and len(name) > len(TFDS_PREFIX):
    return name[len(TFDS_PREFIX) :]
  raise ValueError(
    f"Unknown dataset {name!r}; valid choices are "
    f"{', '.join(sorted(DATASETS))}, or '{TFDS_PREFIX}<name>' for any "
    "registered tensorflow-datasets image dataset."
  )


def dataset_kind(name: str) -> str:
  """The kind of `name` (see `Split`): "images", "text" or "regression".

  Reads no disk; `tfds:<name>` is "images"; unknown names raise ValueError.
  """
  check_dataset_name(name)
  return DATASETS[name].kind if name in DATASETS else "images"


def load_dataset(
  name: str,
  *,
  data_dir: str | os.PathLike[str] | None = None,
  image_size: int = 0,
  validation_fraction: float = 0.2,
  antialias: bool = True,
) -> Dataset:
  """Loads a small dataset into memory.

  Args:
    name: a key of `DATASETS` (`"digits"`, `"fashion_mnist"`, ...) or
      `"tfds:<name>"` for another registered tfds dataset with `image` and
      `label` features (or supervised keys).
    data_dir: the tfds data directory; defaults to `default_data_dir()`.
      The offline datasets are prepared into it on first use; the others
      must already be prepared there (nothing is downloaded).
    image_size: if > 0, resize images to `image_size` x `image_size`; 0 keeps
      the native size, and is the only value for text and regression.
    validation_fraction: used only when the dataset has no `validation`
      split: the last `round(validation_fraction * n_train)` examples of
      `train` become the validation split. Must be in [0, 1).
    antialias: passed to `resize_images`. False gives the plain bilinear
      `tf.image.resize` (same kernel and pixel centres) that
      learned_optimization applies to its 8x8 Fashion-MNIST.

  Returns:
    A `Dataset` of its kind (see `Split`); for images, float32 images in
    [0, 1] of shape (n, H, W, C) and int32 labels.

  Raises:
    ValueError: unknown name or bad argument.
    DatasetNotFoundError: the dataset is not prepared in `data_dir`.
  """
  tfds_name = check_dataset_name(name)
  kind = dataset_kind(name)
  if image_size < 0:
    raise ValueError(f"image_size must be >= 0, got {image_size}.")
  if image_size and kind != "images":
    raise ValueError(f"image_size must be 0 for {kind} data, got {image_size}.")
  if not 0.0 <= validation_fraction < 1.0:
    raise ValueError(
      f"validation_fraction must be in [0, 1), got {validation_fraction}."
    )
  if data_dir is None:
    data_dir = default_data_dir()
  data_dir = os.path.expanduser(os.fspath(data_dir))

  try:
    builder = tfds.builder(tfds_name, data_dir=data_dir)
  except tfds.core.DatasetNotFoundError as e:
    raise ValueError(
      f"Dataset {name!r}: {str(e).splitlines()[0]} (no such "
      "tensorflow-datasets builder is registered)."
    ) from None
  if not builder.is_prepared():
    if any(s.offline and s.tfds_name == tfds_name for s in DATASETS.values()):
      logging.info("Preparing %r into %s (offline).", name, data_dir)
      # array_record is read without TensorFlow, but only from local disk
      # (array_record has no GCS file system, google/array_record#120); a
      # gs:// data_dir gets tfds's default tfrecord, read through tf.data.
      remote = "://" in data_dir
      builder.download_and_prepare(
        file_format=None if remote else _TF_FREE_FORMAT
      )
    else:
      raise DatasetNotFoundError(_not_found_message(name, tfds_name, data_dir))
  if kind != "images":
    return _load_text_or_table(name, kind, builder, validation_fraction)

  info = builder.info
  image_key, label_key = info.supervised_keys or ("image", "label")
  for key in (image_key, label_key):
    if key not in info.features:
      raise ValueError(
        f"Dataset {name!r} has no {key!r} feature; features are "
        f"{sorted(info.features)}."
      )
  if "train" not in info.splits or "test" not in info.splits:
    raise ValueError(
      f"Dataset {name!r} needs 'train' and 'test' splits; it has "
      f"{sorted(info.splits)}."
    )

  train, test = (
    _read_split(builder, split, image_key, label_key)
    for split in ("train", "test")
  )
  if "validation" in info.splits:
    validation = _read_split(builder, "validation", image_key, label_key)
  else:
    train, validation = _carve(train, validation_fraction)

  if image_size > 0:
    # One call for the three splits: one compilation instead of three.
    splits = (train, validation, test)
    resized = resize_images(
      np.concatenate([s.images for s in splits]),
      (image_size, image_size),
      antialias=antialias,
    )
    cuts = np.cumsum([len(s.labels) for s in splits])[:-1]
    train, validation, test = (
      Split(images, s.labels)
      for images, s in zip(np.split(resized, cuts), splits)
    )
  num_classes = int(info.features[label_key].num_classes)
  return Dataset(name, train, validation, test, num_classes)


def _carve(train: Split, validation_fraction: float) -> tuple[Split, Split]:
  """(train, validation): the last `validation_fraction` of train held out."""
  cut = len(train.labels) - round(validation_fraction * len(train.labels))
  return Split(*(a[:cut] for a in train)), Split(*(a[cut:] for a in train))


def _load_text_or_table(name, kind, builder, fraction) -> Dataset:
  """Loads `python_stdlib` ("text") or `diabetes` (validation: `fraction`)."""
  if kind == "text":  # Each split's chunks, in order, as one token stream.
    chunks = [_read_features(builder, s, ("tokens",))[0] for s in text.SPLITS]
    no_labels = np.zeros((0,), np.int32)
    splits = [Split(c.reshape(-1).astype(np.int32), no_labels) for c in chunks]
    return Dataset(name, *splits, text.VOCAB_SIZE, kind)
  train, test = (
    Split(*_read_features(builder, s, ("features", "target")))
    for s in ("train", "test")
  )
  rows, mean, std = tabular.standardise([*_carve(train, fraction), test])
  splits = [Split(*r) for r in rows]
  return Dataset(name, *splits, 0, kind, target_mean=mean, target_std=std)


def _not_found_message(name: str, tfds_name: str, data_dir: str) -> str:
  return (
    f"Dataset {name!r} (tfds {tfds_name!r}) is not prepared in data_dir "
    f"{data_dir!r}, and lopt never downloads. Either prepare it on a "
    "machine with network access and copy the folder "
    f"{os.path.join(data_dir, tfds_name.split(':')[0])} here:\n"
    '  python -c "import tensorflow_datasets as tfds; '
    f"tfds.builder('{tfds_name}', data_dir='{data_dir}')"
    f".download_and_prepare(file_format='{_TF_FREE_FORMAT}')\"\n"
    f"({_TF_FREE_FORMAT} is read without TensorFlow; the default tfrecord "
    "works too, through TensorFlow), or point TFDS_DATA_DIR / data_dir at a "
    "directory that has it, or use the offline dataset: "
    "--config.task.dataset=digits"
  )


def _hide_gpus_from_tensorflow() -> None:
  """Stops TensorFlow from reserving GPU memory that JAX needs.

  Harmless when TF has no GPU, and when TF was already initialised by the
  caller (it is then too late to hide them, and not ours to undo).
  """
  global _tf_gpus_checked
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  if _tf_gpus_checked:
    return
  _tf_gpus_checked = True
  # Listing physical devices does not initialise TF's runtime.
  if not tf.config.list_physical_devices("GPU"):
    return
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:
    logging.warning("TensorFlow is already initialised; cannot hide its GPUs.")


_tf_gpus_checked = False


def _read_features(
  builder: tfds.core.DatasetBuilder, split: str, keys: tuple[str, ...]
) -> list[np.ndarray]:
  """Reads features of a whole prepared split, stacked in stored order."""
  random_access = tfds.core.file_adapters.FileFormat.with_random_access()
  if builder.info.available_file_formats() & random_access:
    # A list-like over the stored records, decoded to numpy by tfds's own
    # features (PIL for encoded images); no TensorFlow involved.
    source = builder.as_data_source(split=split)
    examples = source.__getitems__(range(len(source)))
    if not examples:
      raise ValueError(f"{builder.name}/{split} is empty.")
    return [np.stack([np.asarray(e[k]) for e in examples]) for k in keys]
  # tfrecord: only tf.data reads it. batch_size=-1 reads the split as one
  # batch; files are read in order (shuffle_files defaults to False), so
  # the result is deterministic.
  _hide_gpus_from_tensorflow()
  data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
  return [np.asarray(data[k]) for k in keys]


def _read_split(
  builder: tfds.core.DatasetBuilder, split: str, image_key: str, label_key: str
) -> Split:
  """Reads a whole prepared split, in stored order, as float images."""
  images, labels = _read_features(builder, split, (image_key, label_key))
  if images.ndim == 3:  # (n, H, W) grayscale without a channel axis.
    images = images[..., None]
  if images.ndim != 4:
    raise ValueError(
      f"{builder.name}/{split}: expected (n, H, W, C) images, got shape "
      f"{images.shape}."
    )
  if images.dtype == np.uint8:
    images = images.astype(np.float32) / np.float32(255)
  elif np.issubdtype(images.dtype, np.floating):
    images = images.astype(np.float32)  # Stored already in [0, 1].
  else:
    raise ValueError(
      f"{builder.name}/{split}: unsupported image dtype {images.dtype}."
    )
  return Split(images, labels.astype(np.int32))


# ---------------------------------------------------------------------------
# Resizing.


def resize_images(
  images: np.ndarray, size: tuple[int, int], *, antialias: bool = True
) -> np.ndarray:
  """Resizes a batch of images with (antialiased) bilinear interpolation.

  This is `jax.image.resize(images, (n, *size, c), "linear",
  antialias=antialias)`: a triangle kernel on half-pixel centres (the
  convention of `tf.image.resize` and PIL), computed at
  `lax.Precision.HIGHEST`. When shrinking with `antialias`, the kernel is
  widened by the shrink factor, so each output pixel averages every input
  pixel it covers instead of sampling the nearest two; enlarging is the same
  either way.

  Args:
    images: float array of shape (n, height, width, channels) in [0, 1].
    size: the output (height, width).
    antialias: whether to low-pass filter when shrinking.

  Returns:
    float32 numpy array of shape (n, *size, channels), clipped to [0, 1]
    (every output is a convex combination of inputs; the clip removes float
    rounding).
  """
  n, height, width, channels = images.shape
  if (height, width) == tuple(size):
    return images.astype(np.float32)
  resized = _jit_resize(
    jnp.asarray(images, jnp.float32),
    shape=(n, *size, channels),
    method="linear",
    antialias=antialias,
  )
  return np.clip(np.asarray(resized), 0.0, 1.0)


# Jitted: one compilation per shape is faster than dispatching its many
# small ops one by one.
_jit_resize = jax.jit(
  jax.image.resize, static_argnames=("shape", "method", "antialias")
)
