"""The offline `digits` dataset: scikit-learn's 8x8 digits as a tfds builder.

Importing this module registers the builder under the name "digits";
`lopt.tasks.data.load_dataset` prepares it into a data_dir on first use,
offline, and reads it like any prepared tfds dataset (see `lopt.tasks.data`
for the splits and the file format). A tfds builder rather than arrays
read straight from scikit-learn, so that digits goes through the same
loading path as every other dataset.
"""

from __future__ import annotations

import functools
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

# Split rows of sklearn's digits: tfds `train` is rows [0, 1500), `test` is
# rows [1500, 1797). See the module docstring.
DIGITS_NUM_TRAIN = 1500
DIGITS_NUM_EXAMPLES = 1797


class Digits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's bundled 8x8 handwritten digits, as a tfds dataset.

  Images are float32 (8, 8, 1) equal to the original 0..16 counts / 16;
  labels are ClassLabel(10). Examples are stored in sklearn's row order:
  `train` holds rows [0, 1500), `test` rows [1500, 1797). Preparing it reads
  the copy inside the scikit-learn wheel, so it needs no network, and (for
  this Tensor feature) no TensorFlow; `load_dataset` prepares it as
  `array_record` so that reading needs none either.
  """

  name = "digits"
  # 1.1.0 holds the same examples as 1.0.0. The new version makes data_dirs
  # that hold a 1.0.0 prepared as tfrecord (lopt <= 0.1.0 did that) prepare
  # it again, as array_record, instead of reading it through TensorFlow.
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES: ClassVar[dict[str, str]] = {
    "1.0.0": "Rows 0-1499 train, 1500-1796 test.",
    "1.1.0": "Same examples; lopt prepares it as array_record (no TF).",
  }

  def _info(self) -> tfds.core.DatasetInfo:
    # An in-repo builder must build DatasetInfo itself:
    # `dataset_info_from_configs` looks for metadata files next to the module
    # (style.md D.1).
    return tfds.core.DatasetInfo(
      builder=self,
      description=(
        "The 1,797 8x8 handwritten digits bundled with scikit-learn "
        "(sklearn.datasets.load_digits; a copy of the test set of the UCI "
        "Optical Recognition of Handwritten Digits data set), pixels "
        "scaled from 0..16 to [0, 1]."
      ),
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.float32),
          "label": tfds.features.ClassLabel(num_classes=10),
        }
      ),
      supervised_keys=("image", "label"),
      homepage=(
        "https://archive.ics.uci.edu/dataset/80/"
        "optical+recognition+of+handwritten+digits"
      ),
      # Keep sklearn's row order on disk (tfds otherwise shuffles examples
      # by key hash), so the splits are documented row ranges.
      disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {
      "train": self._generate_examples(0, DIGITS_NUM_TRAIN),
      "test": self._generate_examples(DIGITS_NUM_TRAIN, DIGITS_NUM_EXAMPLES),
    }

  def _generate_examples(self, start: int, stop: int):
    images, labels = _sklearn_digits()
    for i in range(start, stop):
      yield i, {"image": images[i], "label": int(labels[i])}


@functools.cache
def _sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
  """All of sklearn's digits: float32 (1797, 8, 8, 1) in [0, 1], int labels."""
  # Imported here: sklearn is slow to import and only preparing needs it.
  from sklearn.datasets import load_digits

  digits = load_digits()
  images = (digits.images / 16.0).astype(np.float32)[..., None]
  return images, digits.target
