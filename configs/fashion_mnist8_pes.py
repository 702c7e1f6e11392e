"""PES on the NRES paper's Fashion-MNIST 8x8 setting (algorithms.md §5a).

Identical to fashion_mnist8_nres.py but for the estimator: PES with a fresh
noise every W = 1 step, accumulated over the episode.
"""

import ml_collections

from configs import fashion_mnist8_nres


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = fashion_mnist8_nres.get_config(arg)
  config.estimator.name = "pes"
  return config
