"""PES on the NRES paper's Fashion-MNIST 8x8 setting (algorithms.md §5a).

Identical to fashion_mnist8_nres.py but for the estimator: PES with a fresh
noise every W = 1 step, accumulated over the episode.
"""

import os

import ml_collections

from lopt.experiment import load_config

#: The config this one derives from, loaded by path like any config file.
_BASE = os.path.join(
  os.path.dirname(os.path.abspath(__file__)), "fashion_mnist8_nres.py"
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = load_config(_BASE, arg)
  config.estimator.name = "pes"
  return config
