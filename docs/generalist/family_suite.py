"""The meta-training family of configs/generalist.py (or another family
config) as a suite.

Shared by screen_adaptive.py and choose_theta.py: both judge optimizers on
the family's own tasks (with seeds meta-training never drew), never on the
held-out suite.
"""

import os

from lopt import experiment
from lopt.learned.config import LOptConfig
from lopt.suite import evaluation as suite
from lopt.suite import tasks as suite_tasks
from lopt.tasks import family

_CONFIG = os.path.join(
  os.path.dirname(__file__), "..", "..", "configs", "generalist.py"
)


def family_suite(
  config_path: str = _CONFIG, seeds: tuple[int, ...] = (0, 1, 2)
) -> suite_tasks.Suite:
  """A family config's tasks as a suite (seeds new to meta-training)."""
  config = experiment.load_config(config_path)
  name = os.path.basename(config_path)
  return suite_tasks.Suite(
    name="family" if config_path == _CONFIG else f"family_{name[:-3]}",
    description=f"the meta-training tasks of configs/{name}",
    seeds=seeds,
    tasks=tuple(
      suite_tasks.SuiteTask(
        spec.name,
        spec.model,
        spec.hidden,
        spec.activation,
        dataset=spec.dataset,
        image_size=spec.image_size,
        batch_size=spec.batch_size,
        horizon=spec.horizon,
        heads=spec.heads,
        seq_len=spec.seq_len,
        norm=spec.norm,
        reconstruction=spec.reconstruction,
      )
      for spec in family.resolve(config).specs
    ),
  )


def score(theta, cfg: LOptConfig, tasks: suite_tasks.Suite) -> dict:
  """The suite's aggregates (and the mean ratio), ratios and per-seed mean
  training losses (learned and best tuned Adam) of one theta."""
  summary = suite.evaluate_suite((theta, cfg), tasks)
  keys = ("win_fraction", "median_ratio", "iqm_ratio", "worst_ratio")
  ratios = {t["name"]: t["ratio"] for t in summary["tasks"]}
  aggregates = {k: summary["aggregates"][k] for k in keys}
  aggregates["mean_ratio"] = sum(ratios.values()) / len(ratios)
  per_seed = {
    t["name"]: {
      "learned": t["learned"]["per_seed_mean_train_loss"],
      "adam": t["adam"]["best"]["per_seed_mean_train_loss"],
    }
    for t in summary["tasks"]
  }
  return {"aggregates": aggregates, "ratios": ratios, "per_seed": per_seed}
