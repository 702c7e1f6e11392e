"""The NRES paper's CIFAR-10 CNN learned-optimizer setting (algorithms.md §5b).

Inner model: four blocks of [3x3 conv, 32 channels, relu, 2x2 average pool]
and a linear head (29,930 parameters), batch 32, T = 1000. Meta-loss:
validation cross-entropy capped at 1.5 ln 10. MLPLOpt meta-trained by NRES
with 10 pairs, W = 100, sigma = 0.01, Adam 3e-4, 20,000 outer steps. Needs
the prepared tfds `cifar10`.
"""

import os

import ml_collections

from lopt.experiment import load_config

#: The config this one derives from, loaded by path like any config file.
_BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.py")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = load_config(_BASE, arg)
  config.task.dataset = "cifar10"
  config.task.image_size = 0
  config.task.model = "cnn"
  config.task.hidden = (32, 32, 32, 32)
  config.task.activation = "relu"
  config.task.batch_size = 32
  config.task.meta_loss = "validation"
  config.task.clip_meta_loss = True
  config.lopt.kind = "mlp"
  config.estimator.name = "nres"
  config.estimator.num_particles = 10
  config.estimator.unroll_length = 100
  config.estimator.sigma = 0.01
  config.outer.learning_rate = 3e-4
  config.outer.clip = 0.0
  config.outer.num_steps = 20_000
  config.outer.steps_per_dispatch = 10
  config.eval.every_steps = 500
  config.log.every_steps = 50
  return config
