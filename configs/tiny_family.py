"""A seconds-long task family for tests and smoke runs: three tiny tasks.

Three groups of different architectures on digits (an MLP, a deeper tanh
MLP with a smaller batch and a shorter horizon, and a CNN on 4x4 inputs),
8 particles each so that they shard over 1, 2, 4 or 8 devices. Like
configs/generalist.py, the learned optimizer is the 'adaptive' kind and
each episode draws its effective batch (`family.batch_fractions`).
"""

import os

import ml_collections

from lopt.experiment import load_config

_BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny.py")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = load_config(_BASE, arg)
  config.estimator.num_particles = 8
  config.lopt.kind = "adaptive"
  config.family = ml_collections.ConfigDict()
  config.family.normalizer = "adam"
  config.family.tasks = ml_collections.ConfigDict()
  tasks = config.family.tasks
  tasks.mlp = ml_collections.ConfigDict(dict(hidden=(8,)))
  tasks.deep_tanh = ml_collections.ConfigDict(
    dict(hidden=(4, 4), activation="tanh", batch_size=8, horizon=10)
  )
  tasks.cnn = ml_collections.ConfigDict(
    dict(model="cnn", hidden=(2,), image_size=4, horizon=15, weight=0.5)
  )
  # As configs/generalist.py: every episode draws its effective batch, so
  # the family tests checkpoint and resume that part of the state too.
  config.family.batch_fractions = (1.0, 0.5)
  return config
