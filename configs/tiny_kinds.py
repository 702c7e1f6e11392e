"""A seconds-long family of every kind of inner task, for tests.

Four tiny groups on the four data kinds beyond image classification's
defaults: a causal transformer on the standard library's bytes, an MLP
autoencoder and a residual CNN (GroupNorm) on digits, and an MLP regressor
on scikit-learn's diabetes table; 8 particles each, so that they shard over
1, 2, 4 or 8 devices, and the `adam` normaliser that makes their losses
comparable. `configs/tiny_kinds.py:lm,ae` keeps only the groups named.
"""

import os

import ml_collections

from lopt.experiment import load_config

_BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny.py")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = load_config(_BASE)
  config.estimator.num_particles = 8
  config.lopt.kind = "adaptive"
  config.task.heads = 2
  config.task.seq_len = 8
  config.task.norm = "group"
  config.task.reconstruction = "bernoulli"
  config.family = ml_collections.ConfigDict()
  config.family.normalizer = "adam"
  config.family.tasks = ml_collections.ConfigDict()
  tasks = config.family.tasks
  tasks.lm = ml_collections.ConfigDict(
    dict(
      model="transformer", dataset="python_stdlib", hidden=(8,), batch_size=4
    )
  )
  tasks.ae = ml_collections.ConfigDict(
    dict(model="autoencoder", hidden=(8, 4), batch_size=8, horizon=10)
  )
  tasks.reg = ml_collections.ConfigDict(
    dict(model="mlp", dataset="diabetes", hidden=(4,), batch_size=8)
  )
  tasks.res = ml_collections.ConfigDict(
    dict(model="resnet", hidden=(2,), image_size=4, batch_size=8, horizon=15)
  )
  if arg:
    keep = arg.split(",")
    unknown = sorted(set(keep) - set(tasks))
    if unknown:
      raise ValueError(
        f"tiny_kinds: no groups {unknown}; groups: {sorted(tasks)}"
      )
    for name in sorted(set(tasks) - set(keep)):
      del tasks[name]
  return config
