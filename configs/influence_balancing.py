"""Influence balancing (PES paper §5, algorithms.md §5e, O10), for compare.

    python -m lopt.compare --config=configs/influence_balancing.py

A scalar theta drives a 23-unit chain whose first unit settles at -6 theta,
so the loss (s[0] - 1)^2 / 2 is minimised at theta* = -1/6, but theta's
short-term influence on s[0] is +1. Every estimator starts at theta = 0.5
and takes 3,000 SGD steps at lr 1e-4 with 500 lockstep particles (pairs for
ES), sigma = 0.1, on a horizon longer than the run (no resets), as in the
paper. Unbiased estimators (NRES, PES) reach -1/6; truncated ones (TES and
TBPTT with W = 1 or 10) go the wrong way. Meta-loss: the loss after a fresh
500-step unroll from s = 1 (the PES code's evaluation).
"""

import ml_collections

#: Not a learned-optimizer config: lopt.compare reads it, lopt.main does not.
KIND = "toy"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  config = ml_collections.ConfigDict()
  config.kind = KIND

  config.system = ml_collections.ConfigDict()
  config.system.name = "influence_balancing"
  config.system.horizon = 100_000
  config.theta_init = 0.5
  config.theta_true = -1.0 / 6.0

  config.estimator = ml_collections.ConfigDict()
  config.estimator.num_particles = 500
  config.estimator.unroll_length = 1
  config.estimator.sigma = 0.1
  config.estimator.noise_period = 0
  config.estimator.step_unlocked = False  # lockstep, as in the paper

  config.outer = ml_collections.ConfigDict()
  config.outer.optimizer = "sgd"
  config.outer.learning_rate = 1e-4
  config.outer.decay_steps = 0
  config.outer.decay_factor = 1.0

  config.overrides = ml_collections.ConfigDict()
  config.overrides.tbptt_w10 = {"name": "tbptt", "unroll_length": 10}
  config.overrides.tbptt_w100 = {"name": "tbptt", "unroll_length": 100}

  config.eval = ml_collections.ConfigDict()
  config.eval.system = {}
  config.eval.horizon = 500
  config.eval.reduce = "last"
  config.eval.num_inits = 1
  config.eval.seed = 0
  config.eval.num_points = 60
  config.eval.every_steps = 0

  config.compare = ml_collections.ConfigDict()
  config.compare.estimators = (
    "nres",
    "pes",
    "tes",
    "tbptt",
    "tbptt_w10",
    "tbptt_w100",
  )
  config.compare.seeds = (3,)
  config.compare.budget_outer_steps = 3000

  config.plot = ml_collections.ConfigDict()
  config.plot.title = "Influence balancing (theta* = -1/6)"
  config.plot.yscale = "log"
  config.plot.xscale = "log"
  config.plot.theta_x = "outer_steps"
  return config
