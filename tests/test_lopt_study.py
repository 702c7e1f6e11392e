"""The learned-optimizer study's own arithmetic (docs/figures/lopt_study.py).

The study itself takes an hour and runs outside the suite; what it derives
from its runs is checked here on hand-made results.
"""

import importlib.util
import os

import pytest

from lopt import experiment

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def study():
  path = os.path.join(REPO, "docs", "figures", "lopt_study.py")
  spec = importlib.util.spec_from_file_location("lopt_study", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _run(seconds, meta_loss):
  return {"seconds": seconds, "meta_loss": meta_loss}


def test_equal_seconds_takes_each_runs_newest_checkpoint_within_it(study):
  result = {
    "estimators": {
      "fast": {
        "runs": [
          _run([0.0, 20.0, 40.0, 60.0], [3.0, 2.0, 1.0, 0.5]),
          _run([0.0, 25.0, 50.0, 75.0], [3.0, 2.5, 1.5, 0.7]),
        ]
      },
      # The shortest run of all ends at 45 s: that is the common time.
      "slow": {"runs": [_run([0.0, 30.0, 45.0], [3.0, 2.2, 1.9])]},
    }
  }
  out = study.at_equal_seconds(result)
  assert out["seconds"] == 45.0
  # 40 s and 25 s are the newest checkpoints at or before 45 s.
  assert out["estimators"]["fast"]["values"] == [1.0, 2.5]
  assert out["estimators"]["fast"]["mean"] == pytest.approx(1.75)
  assert out["estimators"]["slow"]["values"] == [1.9]


def test_gpes_rate_moves_theta_as_far_per_inner_step_as_nres(study):
  config = experiment.load_config(
    os.path.join(REPO, "configs", "digits_mlp_study.py")
  )
  # W = 1 against NRES's W = 10: a tenth of the rate per update, so the
  # 1,000 updates of an episode move theta as far as NRES's 100.
  assert config.estimator.unroll_length == 10
  assert study.gpes_learning_rate(config, 3e-3) == pytest.approx(3e-4)


def test_sweep_grid_grows_past_a_best_rate_at_its_edge(study):
  assert study._next_rate(1e-2, up=True) == pytest.approx(3e-2)
  assert study._next_rate(3e-2, up=True) == pytest.approx(1e-1)
  assert study._next_rate(3e-4, up=False) == pytest.approx(1e-4)
  assert study._next_rate(1e-4, up=False) == pytest.approx(3e-5)

  def entry(loss):
    return {"summary": {"final_meta_loss": {"mean": loss}}}

  sweep = {
    "estimators": {
      "full_es_lr1e-03": entry(2.0),
      "full_es_lr1e-02": entry(0.5),
      "full_es_lr3e-02": entry(None),  # diverged: never the tuned rate
    }
  }
  assert study.tuned_rate(sweep, "full_es", [1e-3, 1e-2, 3e-2]) == 1e-2
