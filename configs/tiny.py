"""A seconds-long config for tests and smoke runs: tiny MLP, short horizon."""

import ml_collections

from configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = default.get_config(arg)
  config.task.hidden = (8,)
  config.task.batch_size = 16
  config.inner.horizon = 20
  config.lopt.hidden = (4,)
  config.estimator.num_particles = 4
  config.estimator.unroll_length = 5
  config.outer.num_steps = 6
  config.outer.steps_per_dispatch = 1
  config.checkpoint.every_steps = 2
  config.eval.every_steps = 3
  config.eval.num_seeds = 2
  config.log.every_steps = 2
  return config
