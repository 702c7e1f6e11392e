"""The offline `diabetes` dataset: scikit-learn's diabetes table as tfds.

A regression task needs a real table with a real continuous target that
every machine has without a download. scikit-learn bundles one: the diabetes
data of Efron et al. (2004), "Least Angle Regression": 442 patients, 10
baseline measurements (age, sex, body mass index, mean blood pressure and six
blood serum measurements s1..s6) and, as the target, a quantitative measure
of disease progression one year after baseline (25..346).

Importing this module registers the tfds builder `Diabetes` under the name
"diabetes"; `lopt.tasks.data.load_dataset` prepares it into a data_dir on
first use, offline, as `array_record`, and reads it like any prepared tfds
dataset. The builder stores the raw values (`load_diabetes(scaled=False)`,
as float32); `load_dataset` standardises them with `standardise`.

Splits, by row of `sklearn.datasets.load_diabetes()` in its order: tfds
`train` is rows [0, 354) and `test` rows [354, 442) (the last 20%). There is
no tfds validation split: `load_dataset` carves it from the end of `train` by
its `validation_fraction` rule, as for `digits`, so the default 0.2 gives
train = rows [0, 283), validation = rows [283, 354), test = rows [354, 442).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

# Rows of sklearn's diabetes: tfds `train` is [0, 354), `test` [354, 442).
DIABETES_NUM_TRAIN = 354
DIABETES_NUM_EXAMPLES = 442
DIABETES_NUM_FEATURES = 10


class Diabetes(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's bundled diabetes regression table, as a tfds dataset.

  Features `features`: float32 (10,), the unscaled baseline measurements in
  sklearn's column order; `target`: float32 scalar, disease progression one
  year later. Stored in sklearn's row order: `train` holds rows [0, 354),
  `test` rows [354, 442). Preparing it reads the copy inside the
  scikit-learn wheel: no network, and (for these Tensor features) no
  TensorFlow.
  """

  name = "diabetes"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES: ClassVar[dict[str, str]] = {
    "1.0.0": "Unscaled rows 0-353 train, 354-441 test.",
  }

  def _info(self) -> tfds.core.DatasetInfo:
    # Built here rather than from metadata files next to the module (an
    # in-repo builder has none; see digits.py).
    return tfds.core.DatasetInfo(
      builder=self,
      description=(
        "The 442-patient diabetes data bundled with scikit-learn "
        "(sklearn.datasets.load_diabetes(scaled=False)): features age, sex, "
        "bmi, bp, s1..s6 (unscaled); target a quantitative measure of "
        "disease progression one year after baseline."
      ),
      features=tfds.features.FeaturesDict(
        {
          "features": tfds.features.Tensor(
            shape=(DIABETES_NUM_FEATURES,), dtype=np.float32
          ),
          "target": tfds.features.Tensor(shape=(), dtype=np.float32),
        }
      ),
      supervised_keys=("features", "target"),
      homepage="https://www4.stat.ncsu.edu/~boos/var.select/diabetes.html",
      # Keep sklearn's row order on disk (tfds otherwise shuffles examples
      # by key hash), so the splits are documented row ranges.
      disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {
      "train": self._generate_examples(0, DIABETES_NUM_TRAIN),
      "test": self._generate_examples(
        DIABETES_NUM_TRAIN, DIABETES_NUM_EXAMPLES
      ),
    }

  def _generate_examples(self, start: int, stop: int):
    features, targets = _sklearn_diabetes()
    for i in range(start, stop):
      yield i, {"features": features[i], "target": targets[i]}


@functools.cache
def _sklearn_diabetes() -> tuple[np.ndarray, np.ndarray]:
  """All of sklearn's diabetes rows: float32 (442, 10) and (442,), unscaled."""
  # Imported here: sklearn is slow to import and only preparing needs it.
  from sklearn.datasets import load_diabetes

  table = load_diabetes(scaled=False)
  return table.data.astype(np.float32), table.target.astype(np.float32)


def standardise(
  splits: Sequence[tuple[np.ndarray, np.ndarray]],
) -> tuple[list[tuple[np.ndarray, np.ndarray]], float, float]:
  """Standardises every split with the first split's statistics.

  Features are standardised per column, the target as one scalar series,
  with the mean and (population, ddof=0) standard deviation of the first
  split only, the training data: held-out splits are transformed with the
  same numbers, so nothing about them leaks into the transform. A constant
  training column (std 0) is only centred.

  Args:
    splits: (features (n, d), targets (n,)) pairs; the first is the training
      split.

  Returns:
    The standardised pairs as float32, in order, and the training target's
    mean and std (predictions map back as `y * std + mean`).

  Raises:
    ValueError: the training split has no rows.
  """
  if not len(splits[0][1]):
    raise ValueError(
      "Cannot standardise with an empty training split (a validation_"
      "fraction that leaves no training rows?)."
    )
  train_x = np.asarray(splits[0][0], np.float64)
  train_y = np.asarray(splits[0][1], np.float64)
  x_mean, x_std = train_x.mean(axis=0), train_x.std(axis=0)
  x_std = np.where(x_std > 0, x_std, 1.0)
  y_mean, y_std = float(train_y.mean()), float(train_y.std())
  y_std = y_std if y_std > 0 else 1.0
  out = [
    (
      ((np.asarray(x, np.float64) - x_mean) / x_std).astype(np.float32),
      ((np.asarray(y, np.float64) - y_mean) / y_std).astype(np.float32),
    )
    for x, y in splits
  ]
  return out, y_mean, y_std
