"""Score the wide generalist (or its untrained start) on a suite.

    python docs/wide/suite.py --suite=wide --output=docs/wide/theta0
    python docs/wide/suite.py --workdir=/tmp/wide --suite=wide \
        --output=docs/wide/step500

Without `--workdir` it scores the initial theta of configs/wide_generalist.py
(the meta-training starting point, seed 0); with one, the workdir's newest
checkpoint (or `--step`). Tuned Adam and the baselines come from the cache
after the first run (`lopt.suite.evaluation`), so the first call pays for
them. Writes `suite_<name>.{json,md,png}` into `--output`.
"""

import os
import sys

from absl import app, flags

REPO = os.path.dirname(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
sys.path.insert(0, REPO)

from lopt import console, experiment, export  # noqa: E402
from lopt.suite import evaluation, report  # noqa: E402
from lopt.train import step as train_step  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", "", "A meta-training workdir.")
_STEP = flags.DEFINE_integer("step", None, "Its checkpoint; newest if unset.")
_SUITE = flags.DEFINE_string("suite", "wide", "The suite.")
_OUTPUT = flags.DEFINE_string("output", "docs/wide/theta0", "Output dir.")
_CONFIG = os.path.join(REPO, "configs", "wide_generalist.py")


def _theta0():
  config = experiment.load_config(_CONFIG)
  config.family.normalizer = "none"  # nothing to measure for theta_0
  _, datasets = experiment.load_data(config)
  exp = experiment.build(config, datasets)
  return train_step.initial_theta(exp), exp.lopt


def main(argv) -> None:
  del argv
  console.setup()
  if _WORKDIR.value:
    theta, cfg, _ = export.load_theta(_WORKDIR.value, _STEP.value)
  else:
    theta, cfg = _theta0()
  summary = evaluation.evaluate_suite(
    (theta, cfg), _SUITE.value, output=_OUTPUT.value
  )
  print(report.format_table(summary))
  print(report.summary_line(summary))


if __name__ == "__main__":
  app.run(main)
