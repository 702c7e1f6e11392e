"""Lorenz parameter learning (NRES paper §5, algorithms.md §5c), for compare.

    python -m lopt.compare --config=configs/lorenz.py          # minutes, CPU
    python -m lopt.compare --config=configs/lorenz.py:paper    # the paper's
    python -m lopt.compare --config=configs/lorenz.py:grid     # lr grid

Learn theta = (log a, log r) of an Euler-integrated Lorenz system from
(3.116, 3.7) towards the truth (log 10, log 28), observing only z. Every
estimator uses SGD with its own learning rate (each was tuned by the paper's
authors; PES alone drops its rate once, from 1e-5 to 1e-6 at outer step
1000: a piecewise-constant schedule).

The paper's settings: T = 2000, sigma = 0.04; NRES, PES and TES with 200
pairs and W = 100; FullES with 10 pairs over T (the same 40,000 inner steps
per update); TBPTT with 200 particles and W = 100. Test loss: mean over T
steps, averaged over test starts drawn from N(start, I).

* default: all of these, but every estimator gets 8e7 inner steps (the
  paper's FullES budget, 2,000 updates of 40,000 steps), 3 seeds and 1,000
  test starts: a few minutes on two CPU cores.
* `:paper`: also the paper's per-method iteration budgets (NRES and TES
  5,000 outer steps, PES and TBPTT 10,000, FullES 2,000), 5 seeds (the
  paper's 101-113 primes), 10,000 test starts, and the targets of the
  steps-to-target tables (loss 60, and 1.1 x the best mean final loss).
* `:grid`: the paper preset's budgets with each method's learning rate on
  a half-decade grid around the paper's (`GRID_RATES`), 3 seeds, 1,000
  test starts; labels `<method>_lr<rate>`.

Steps and seconds exclude the burn-in of the online estimators
(2 x 200 x 2000 = 8e5 steps).
"""

import math

import ml_collections

#: Not a learned-optimizer config: lopt.compare reads it, lopt.main does not.
KIND = "toy"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the config; `arg` = 'paper' for the paper's full settings."""
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
    "boundaries": (1000,),
    "scales": (0.1,),
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
  if arg in ("paper", "grid"):
    for label, outer_steps in PAPER_OUTER_STEPS.items():
      config.overrides[label]["budget_outer_steps"] = outer_steps
    config.eval.num_points = 50
    config.compare.targets = (60.0,)
    config.compare.target_near_best = 0.1
    # Budgets differ 5x between methods: log axes show every one's start.
    config.plot.xscale = "log"
  if arg == "paper":
    config.eval.num_inits = 10_000
    config.compare.seeds = (101, 103, 107, 109, 113)
  elif arg == "grid":
    config.compare.seeds = (101, 103, 107)
    labels = []
    for label, rates in GRID_RATES.items():
      base = dict(config.overrides[label])
      for rate in rates:
        name = f"{label}_lr{rate:.0e}"
        config.overrides[name] = dict(base, name=label, learning_rate=rate)
        labels.append(name)
    config.compare.estimators = tuple(labels)
  elif arg is not None:
    raise ValueError(
      f"configs/lorenz.py takes 'paper', 'grid' or nothing, got {arg!r}"
    )
  return config


#: The paper's iteration budget of each method (algorithms.md §5c).
PAPER_OUTER_STEPS = {
  "nres": 5000,
  "pes": 10_000,
  "tes": 5000,
  "full_es": 2000,
  "tbptt": 10_000,
}

#: The `:grid` preset's learning rates: half-decades around the paper's
#: (the second of each list).
GRID_RATES = {
  "nres": (3e-6, 1e-5, 3e-5, 1e-4),
  "pes": (3e-6, 1e-5, 3e-5, 1e-4),
  "tes": (1e-4, 3e-4, 1e-3, 3e-3),
  "full_es": (1e-5, 3e-5, 1e-4, 3e-4),
  "tbptt": (1e-4, 3e-4, 1e-3, 3e-3),
}
