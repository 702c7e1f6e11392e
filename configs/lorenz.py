"""Lorenz parameter learning (NRES paper §5, algorithms.md §5c), for compare.

    python -m lopt.compare --config=configs/lorenz.py          # minutes, CPU
    python -m lopt.compare --config=configs/lorenz.py:paper    # the paper's

Learn theta = (log a, log r) of an Euler-integrated Lorenz system from
(3.116, 3.7) towards the truth (log 10, log 28), observing only z. Every
estimator uses SGD with its own learning rate (each was tuned by the paper's
authors; PES alone decays its rate 10x at outer step 1000).

The paper's settings (`:paper`): T = 2000, sigma = 0.04; NRES, PES and TES
with 200 pairs and W = 100; FullES with 10 pairs over T (the same 40,000
inner steps per update); TBPTT with 200 particles and W = 100. Test loss:
mean over T steps, averaged over test starts drawn from N(start, I).

The default keeps all of these and scales down only what it costs to run
on two CPU cores in about five minutes: every estimator gets 8e7 inner
steps (the paper's FullES budget, 2,000 updates of 40,000 steps; the paper
gave NRES 2e8 and PES 4e8), 3 seeds instead of 5, and 1,000 test starts
instead of 10,000. Steps and seconds exclude the burn-in of the online
estimators (2 x 200 x 2000 = 8e5 steps, 1% of the budget).
"""

import math

import ml_collections

#: Not a learned-optimizer config: lopt.compare reads it, lopt.main does not.
KIND = "toy"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the config; `arg` = 'paper' for the paper's full settings."""
  paper = arg == "paper"
  config = ml_collections.ConfigDict()
  config.kind = KIND

  config.system = ml_collections.ConfigDict()
  config.system.name = "lorenz"
  config.system.horizon = 2000
  config.system.dt = 0.005
  config.theta_init = (3.116, 3.7)
  config.theta_true = (math.log(10.0), math.log(28.0))

  config.estimator = ml_collections.ConfigDict()
  config.estimator.num_particles = 200
  config.estimator.unroll_length = 100
  config.estimator.sigma = 0.04
  config.estimator.noise_period = 0
  config.estimator.step_unlocked = True

  config.outer = ml_collections.ConfigDict()
  config.outer.optimizer = "sgd"
  config.outer.learning_rate = 1e-5
  config.outer.decay_steps = 0
  config.outer.decay_factor = 1.0

  # Per-estimator settings of the paper (algorithms.md §5c).
  config.overrides = ml_collections.ConfigDict()
  config.overrides.nres = {"learning_rate": 1e-5}
  config.overrides.pes = {
    "learning_rate": 1e-5,
    "decay_steps": 1000,
    "decay_factor": 0.1,
  }
  config.overrides.tes = {"learning_rate": 3e-4}
  config.overrides.full_es = {"learning_rate": 3e-5, "num_particles": 10}
  config.overrides.tbptt = {"learning_rate": 3e-4}

  config.eval = ml_collections.ConfigDict()
  config.eval.system = {"init_noise": 1.0}  # test starts ~ N(start, I)
  config.eval.num_inits = 1000
  config.eval.reduce = "mean"
  config.eval.seed = 12345
  config.eval.num_points = 40
  config.eval.every_steps = 0  # 0: budget / num_points

  config.compare = ml_collections.ConfigDict()
  config.compare.estimators = ("nres", "pes", "tes", "full_es", "tbptt")
  config.compare.seeds = (0, 1, 2)
  # The paper's FullES budget: 2,000 updates of 2 x 10 x 2,000 steps.
  config.compare.budget_steps = 8e7

  config.plot = ml_collections.ConfigDict()
  config.plot.title = "Lorenz parameter learning"
  config.plot.yscale = "log"
  config.plot.xscale = "linear"
  if paper:
    config.eval.num_inits = 10_000
    config.compare.seeds = (101, 103, 107, 109, 113)
    # NRES's 5,000 updates of 40,000 inner steps.
    config.compare.budget_steps = 2e8
  return config
