"""Chooses the adaptive kind's initial rates on the meta-training family.

    python docs/generalist/screen_adaptive.py [--output=docs/generalist]
    python docs/generalist/screen_adaptive.py --metrics=adam \
        --decays=0,0.5,0.9,0.95,0.97,0.99 --adaptive_lrs=0.02 \
        --hyper_lrs=0.3,0.5 --output=docs/generalist/trace

The untrained 'adaptive' learned optimizer (`lopt.learned.optimizers`, its output
layer at zero) is Adam whose learning rate each tensor adapts by
hypergradient descent from a base rate `adaptive_lr` at speed `hyper_lr`.
Those two numbers, the metric of the hypergradient's cosine
(`hypergradient_metric`: on the raw gradient, or on Adam's preconditioned
one) and the decay of the trace of past steps it is taken with
(`hypergradient_decay`; 0, the default grid, is the last step alone) are
theta's starting point for meta-training. This script picks them where a
user could: on the six tasks of `configs/generalist.py` (new seeds), never
on the held-out suite. Each (metric, decay, adaptive_lr, hyper_lr) of the
grid, and the nominal kind's starting point (Adam at 0.03, decayed
linearly), is scored like `lopt.evaluate --suite` scores an optimizer:
its mean training loss over tuned Adam's, per task. The pick is the lowest
mean ratio over the tasks: that is the generalist's meta-objective (each
task's loss divided by tuned Adam's, averaged over tasks) at theta_0, so
meta-training starts from the best point of the grid by its own measure.
(The median would pick a rate that is 1.36x tuned Adam on the 16x16 task.)
Writes `screen_adaptive.json`.
"""

import dataclasses
import itertools
import os
import sys

import jax
from absl import app, flags

from lopt import console, jsonio
from lopt.learned import optimizers
from lopt.learned.config import HYPERGRADIENT_METRICS, LOptConfig
from lopt.suite import tasks as suite_tasks

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from family_suite import family_suite, score  # noqa: E402

_OUTPUT = flags.DEFINE_string("output", "docs/generalist", "Output directory.")
_LRS = flags.DEFINE_list(
  "adaptive_lrs", ["0.01", "0.02", "0.03"], "Base rates."
)
_HYPER = flags.DEFINE_list("hyper_lrs", ["0.1", "0.2", "0.3"], "Hyper rates.")
_METRICS = flags.DEFINE_list(
  "metrics", list(HYPERGRADIENT_METRICS), "Hypergradient metrics."
)
_DECAYS = flags.DEFINE_list(
  "decays", ["0.0"], "Decays of the trace of steps the vote compares with."
)


# The LOptConfig fields the screen chooses.
_CHOSEN = (
  "hypergradient_metric",
  "hypergradient_decay",
  "adaptive_lr",
  "hyper_lr",
)


def _score(cfg: LOptConfig, tasks: suite_tasks.Suite) -> dict:
  return score(optimizers.init_theta(cfg, jax.random.key(0)), cfg, tasks)


def main(argv) -> None:
  del argv
  console.setup()
  tasks = family_suite()
  rows = [
    {"kind": "nominal", "nominal_lr": 0.03}
    | _score(LOptConfig(kind="nominal"), tasks)
  ]
  grid = itertools.product(
    _METRICS.value, _DECAYS.value, _LRS.value, _HYPER.value
  )
  for metric, decay, lr, hyper in grid:
    cfg = LOptConfig(
      kind="adaptive",
      adaptive_lr=float(lr),
      hyper_lr=float(hyper),
      hypergradient_metric=metric,
      hypergradient_decay=float(decay),
    )
    row = {k: getattr(cfg, k) for k in _CHOSEN} | {"kind": "adaptive"}
    rows.append(row | _score(cfg, tasks))
    agg = rows[-1]["aggregates"]
    print(
      f"{metric} decay={decay} adaptive_lr={lr} hyper_lr={hyper}: "
      f"mean {agg['mean_ratio']:.3f}, "
      f"median {agg['median_ratio']:.3f}, worst {agg['worst_ratio']:.3f}"
    )
  best = min(
    (r for r in rows if r["kind"] == "adaptive"),
    key=lambda r: r["aggregates"]["mean_ratio"],
  )
  result = {
    "suite": [dataclasses.asdict(t) for t in tasks.tasks],
    "seeds": list(tasks.seeds),
    "rows": rows,
    "best": {k: best[k] for k in _CHOSEN},
  }
  os.makedirs(_OUTPUT.value, exist_ok=True)
  path = jsonio.dump(
    result, os.path.join(_OUTPUT.value, "screen_adaptive.json")
  )
  print(f"Best on the family: {result['best']}. Wrote {path}.")


if __name__ == "__main__":
  app.run(main)
