"""The learned-optimizer estimator study (docs/figures/lopt_study.py).

    python docs/figures/lopt_study.py                     # ~2 h on 2 cores
    python docs/figures/lopt_study.py --run_seconds=300   # the issue's 5 min

The papers' MLPLOpt (`lopt.kind = 'mlp'`, d = 1762) meta-trained from
scratch on the bundled digits (8x8, MLP 64-32-32-32-10, batch 128,
T = 1000, training-batch meta-loss) with NRES, PES, TES and FullES, the
NRES paper's way (algorithms.md §5a): Adam outer optimizer, no gradient
clipping, sigma = 0.01. The online estimators use 16 pairs and W = 10;
FullES one pair over the whole episode (the paper's equal-compute rule
N_FullES T = N W would give 0.16 pairs). `overrides.gpes_k<K>` are the
GPES-K sweep with NRES's settings but W = 1 (the paper's FMNIST window, so
that K = 1 is possible: K >= W), K = 1 (PES), 16, 256 and T = 1000 (NRES).

The study script tunes each method's outer learning rate on
`study.sweep_rates` (one seed), then sets every label's `budget_outer_steps` so that each run
gets the same CPU seconds. Scores are the compare runner's: the mean
training loss of fresh models trained for T steps on held-out seeds.
"""

import os

import ml_collections

from lopt.experiment import load_config

#: The config this one derives from, loaded by path like any config file.
_BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.py")

#: Outer Adam learning rates of the study's sweep (the papers' 3e-4 to 3e-2).
SWEEP_RATES = (3e-4, 1e-3, 3e-3, 1e-2)

#: The GPES-K sweep's noise periods (T = 1000 is NRES, 1 is PES).
GPES_PERIODS = (1, 16, 256, 1000)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the config; `arg` is unused (kept for `file.py:arg` syntax)."""
  del arg
  config = load_config(_BASE)
  config.lopt.kind = "mlp"
  config.outer.clip = 0.0  # the papers clip nothing
  config.outer.learning_rate = 1e-3
  config.outer.steps_per_dispatch = 5
  # compare sets its own step cadence (and turns the clock's off).
  config.checkpoint.every_steps = 100
  config.checkpoint.keep = 3
  config.eval.every_steps = 0  # compare scores every checkpoint afterwards

  config.overrides = ml_collections.ConfigDict()
  config.overrides.nres = {"name": "nres"}
  config.overrides.pes = {"name": "pes"}
  config.overrides.tes = {"name": "tes"}
  config.overrides.full_es = {"name": "full_es", "num_particles": 1}
  for period in GPES_PERIODS:
    config.overrides[f"gpes_k{period}"] = {
      "name": "gpes",
      "unroll_length": 1,
      "noise_period": period,
    }

  config.study = ml_collections.ConfigDict()
  config.study.methods = ("nres", "pes", "tes", "full_es")
  config.study.sweep_rates = SWEEP_RATES
  config.study.gpes_periods = GPES_PERIODS

  config.compare = ml_collections.ConfigDict()
  config.compare.estimators = ("nres", "pes", "tes", "full_es")
  config.compare.seeds = (0, 1, 2)
  config.compare.num_points = 10
  config.compare.targets = ()
  # 90 % of the way from the start to the best final meta-loss.
  config.compare.target_progress = 0.9
  return config
