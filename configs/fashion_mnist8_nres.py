"""The NRES paper's learned-optimizer setting: Fashion-MNIST at 8x8.

Li et al. (2023), §5 (algorithms.md §5a): MLP 64-32-32-32-10 (gelu) trained
for T = 1000 steps with batch 128 by the 1,762-parameter MLPLOpt; meta-loss
= validation cross-entropy after each update, the validation split being
train[80%:]; NRES with 100 pairs, W = 1, sigma = 0.01, Adam 3e-4.

Differences from the paper: every particle and episode draws its own inner
init and batches (the paper used one fixed "single sequence"); images are
resized with antialiasing. Needs the prepared tfds dataset:

    python -c "import tensorflow_datasets as tfds; \
      tfds.builder('fashion_mnist').download_and_prepare()"
"""

import os

import ml_collections

from lopt.experiment import load_config

#: The config this one derives from, loaded by path like any config file.
_BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.py")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = load_config(_BASE, arg)
  config.task.dataset = "fashion_mnist"
  config.task.image_size = 8
  config.task.meta_loss = "validation"
  config.lopt.kind = "mlp"
  config.estimator.name = "nres"
  config.estimator.num_particles = 100
  config.estimator.unroll_length = 1
  config.estimator.sigma = 0.01
  config.outer.learning_rate = 3e-4
  config.outer.clip = 0.0  # the paper does not clip
  config.outer.num_steps = 240_000
  config.outer.steps_per_dispatch = 100
  config.eval.every_steps = 5_000
  config.log.every_steps = 1_000
  return config
