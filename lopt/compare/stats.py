"""The statistics of `lopt.compare`: per-seed curves to intervals.

A run is a dict of curves over its log points: `meta_loss` and the axes
of `AXES` it has (`steps`, `seconds`, ...). `summarize` reduces a label's
runs to their final values over seeds; `to_target` gives the steps and
time each seed took to get below a meta-loss, with Student-t intervals
of the mean (`interval`) over the seeds that got there.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lopt import jsonio

#: The x axes that steps-to-target is reported on: curve key -> description.
AXES = {
  "outer_steps": "outer steps",
  "steps": "total inner steps",
  "sequential_steps": "sequential inner steps",
  "seconds": "seconds (this machine)",
  "parallel_seconds": "est. parallel seconds",
}

#: Confidence level of every interval in the summaries.
CI_LEVEL = 0.95


def first_below(xs, losses, target: float) -> float | None:
  """Where a curve first gets below `target`: linear between its points.

  The crossing is interpolated between the last point at or above the
  target and the first below it (the first point, if that is already
  below). None if it never gets below. A missing (non-finite) loss counts
  as above.
  """
  prev = None
  for x, loss in zip(xs, losses):
    if loss is not None and np.isfinite(loss) and loss < target:
      if prev is None:
        return float(x)
      (x0, l0) = prev
      frac = (l0 - target) / (l0 - loss) if np.isfinite(l0) else 1.0
      return float(x0 + frac * (x - x0))
    prev = (x, np.inf if loss is None or not np.isfinite(loss) else loss)
  return None


def interval(values, level: float = CI_LEVEL) -> dict[str, Any]:
  """Mean and Student-t interval of the mean of the finite values.

  Returns {"mean", "low", "high", "n"}; low/high are None for fewer than
  two values, and everything but n is None for none.
  """
  from scipy import stats  # scikit-learn's dependency; imported on use

  x = np.asarray(
    [v for v in values if v is not None and np.isfinite(v)], np.float64
  )
  out = {"mean": None, "low": None, "high": None, "n": int(x.size)}
  if x.size:
    out["mean"] = float(x.mean())
  if x.size >= 2:
    half = stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1)
    half /= np.sqrt(x.size)
    out["low"], out["high"] = out["mean"] - half, out["mean"] + half
  return out


def to_target(runs: list[dict[str, Any]], target: float) -> dict[str, Any]:
  """Steps- and time-to-target of every seed, with their interval per axis.

  Returns {"target", "reached": seeds that got below it, "num_runs",
  axis: {"values": per seed (None if not reached), "mean", "low", "high",
  "n"}} for every axis of `AXES` the runs have; the mean and interval are
  over the seeds that reached the target.
  """
  out = {
    "target": float(target),
    "num_runs": len(runs),
    "reached": sum(
      first_below(r["steps"], r["meta_loss"], target) is not None for r in runs
    ),
  }
  for axis in AXES:
    if not all(axis in r for r in runs):
      continue
    values = [first_below(r[axis], r["meta_loss"], target) for r in runs]
    out[axis] = {"values": values, **interval(values)}
  return out


def finite_stats(values) -> dict[str, Any]:
  """Mean, std, min and max of the finite values (None where there are none)."""
  values = np.asarray([np.nan if v is None else v for v in values], np.float64)
  finite = values[np.isfinite(values)]
  if not finite.size:
    return dict.fromkeys(("mean", "std", "min", "max"), None) | {
      "num_finite": 0
    }
  return {
    "mean": float(finite.mean()),
    "std": float(finite.std()),
    "min": float(finite.min()),
    "max": float(finite.max()),
    "num_finite": int(finite.size),
  }


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
  """Final values over seeds: mean, std, min, max."""

  def best(curve):
    finite = [v for v in curve if v is not None and np.isfinite(v)]
    return min(finite) if finite else None

  summary = {
    "final_meta_loss": finite_stats([r["meta_loss"][-1] for r in runs]),
    "final_meta_loss_ci": interval([r["meta_loss"][-1] for r in runs]),
    "best_meta_loss": finite_stats([best(r["meta_loss"]) for r in runs]),
    "total_steps": finite_stats([r["steps"][-1] for r in runs]),
    "total_seconds": finite_stats([r["seconds"][-1] for r in runs]),
    "total_outer_steps": finite_stats([r["outer_steps"][-1] for r in runs]),
  }
  if all("sequential_steps" in r for r in runs):
    summary["total_sequential_steps"] = finite_stats(
      [r["sequential_steps"][-1] for r in runs]
    )
  if all("parallel_seconds" in r for r in runs):
    summary["total_parallel_seconds"] = finite_stats(
      [r["parallel_seconds"][-1] for r in runs]
    )
    summary["step_seconds"] = finite_stats([r["step_seconds"] for r in runs])
  if "theta" in runs[0]:
    thetas = np.asarray([r["theta"][-1] for r in runs], np.float64)
    summary["final_theta_mean"] = jsonio.plain(thetas.mean(axis=0))
    summary["final_theta_std"] = jsonio.plain(thetas.std(axis=0))
  return summary
