"""A seconds-long config for tests and smoke runs: tiny MLP, short horizon."""

import os

import ml_collections

from lopt.experiment import load_config

#: The config this one derives from, loaded by path like any config file.
_BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.py")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = load_config(_BASE, arg)
  config.task.hidden = (8,)
  config.task.batch_size = 16
  config.inner.horizon = 20
  config.lopt.hidden = (4,)
  config.estimator.num_particles = 4
  config.estimator.unroll_length = 5
  config.outer.num_steps = 6
  config.outer.steps_per_dispatch = 1
  # By step count, not time, so that tests know which steps are on disk.
  config.checkpoint.every_steps = 2
  config.checkpoint.every_seconds = 0.0
  config.eval.every_steps = 3
  config.eval.num_seeds = 2
  config.log.every_steps = 2
  return config
