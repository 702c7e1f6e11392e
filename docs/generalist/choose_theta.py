"""Chooses which theta of a generalist run to ship, on the family alone.

    python docs/generalist/choose_theta.py --workdir=/tmp/generalist \
        --steps=500,1000,1500 [--output=docs/generalist]
    python docs/generalist/choose_theta.py --workdir=/tmp/wide \
        --config=configs/wide_generalist.py --seeds=2 \
        --steps=100,300,500 --output=docs/wide/choose

The outer loop's estimates are mostly noise, so theta random-walks around
what it has learned: on the held-out suite single tasks move by up to 0.355
between checkpoints 500 steps apart. Two standard answers are early
stopping on a validation set and averaging the iterates (Polyak-Ruppert).
Both need a validation set that is not the held-out suite: this script
scores each checkpoint of `--steps`, and the mean of their thetas, on the
family's own tasks with seeds that meta-training never drew
(`family_suite.py`), like `lopt.evaluate --suite` scores an
optimizer, and picks the lowest mean ratio to tuned Adam (the
meta-objective). Each mean ratio comes with a 95% bootstrap interval, and
so does its difference from the chosen one's: every task's seeds are
resampled, the same draw for every candidate, since they share seeds, inits
and batches (a paired comparison). Writes `choose_theta.json`; the held-out
suite is never read.
"""

import os
import sys

import jax
import numpy as np
from absl import app, flags

from lopt import console, export, jsonio
from lopt.suite import metrics as suite_metrics

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from family_suite import family_suite, score  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "A meta-training workdir.")
_STEPS = flags.DEFINE_list("steps", ["500", "1000", "1500"], "Checkpoints.")
_OUTPUT = flags.DEFINE_string("output", "docs/generalist", "Output directory.")
_CONFIG = flags.DEFINE_string(
  "config", None, "The run's family config; default configs/generalist.py."
)
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds per task.")


def add_intervals(rows: list[dict], best: dict) -> None:
  """Sets each row's `mean_ratio_ci95` and `minus_best_ci95` (paired)."""
  names = sorted(best["per_seed"])

  def resampled_mean_ratios(row, idx):
    learned, adam = (
      [row["per_seed"][n][which] for n in names]
      for which in ("learned", "adam")
    )
    return suite_metrics.resampled_ratios(learned, adam, idx).mean(-1)

  num_seeds = len(best["per_seed"][names[0]]["learned"])
  idx = suite_metrics.resample_seeds(len(names), num_seeds)
  reference = resampled_mean_ratios(best, idx)
  for row in rows:
    boot = resampled_mean_ratios(row, idx)
    quantiles = (0.025, 0.975)
    row["aggregates"]["mean_ratio_ci95"] = np.quantile(boot, quantiles)
    row["minus_best_ci95"] = np.quantile(boot - reference, quantiles)


def main(argv) -> None:
  del argv
  console.setup()
  steps = [int(s) for s in _STEPS.value]
  tasks = family_suite(
    *([_CONFIG.value] if _CONFIG.value else []),
    seeds=tuple(range(_SEEDS.value)),
  )
  rows = []
  candidates = [
    (f"step {s}", export.load_theta(_WORKDIR.value, s)[:2]) for s in steps
  ]
  # The iterates' mean (Polyak-Ruppert); every checkpoint has one architecture.
  mean = jax.tree.map(
    lambda *xs: np.mean(np.stack(xs), axis=0),
    *[theta for _, (theta, _) in candidates],
  )
  candidates.append(
    ("mean of " + ", ".join(map(str, steps)), (mean, candidates[-1][1][1]))
  )
  for name, (theta, cfg) in candidates:
    rows.append({"theta": name} | score(theta, cfg, tasks))
  best = min(rows, key=lambda r: r["aggregates"]["mean_ratio"])
  add_intervals(rows, best)
  for row in rows:
    agg = row["aggregates"]
    low, high = agg["mean_ratio_ci95"]
    d_low, d_high = row["minus_best_ci95"]
    print(
      f"{row['theta']}: family mean ratio {agg['mean_ratio']:.3f} "
      f"[{low:.3f}, {high:.3f}] ({d_low:+.3f} to {d_high:+.3f} against the "
      f"best), median {agg['median_ratio']:.3f}, worst "
      f"{agg['worst_ratio']:.3f}"
    )
  result = {
    "workdir": _WORKDIR.value,
    "steps": steps,
    "num_tasks": len(tasks.tasks),
    "seeds": list(tasks.seeds),
    "rows": rows,
    "best": best["theta"],
  }
  os.makedirs(_OUTPUT.value, exist_ok=True)
  path = jsonio.dump(result, os.path.join(_OUTPUT.value, "choose_theta.json"))
  print(f"Best on the family: {best['theta']}. Wrote {path}.")


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  app.run(main)
