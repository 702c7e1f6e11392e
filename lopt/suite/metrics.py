"""The scores of `lopt.suite`: ratios, speedups, failures and aggregates.

`lopt.suite.evaluation` says what each number means. Everything here is
numpy on finished runs (loss curves and per-seed scores), so it is tested
on hand-made curves and can recompute a report from its JSON.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from absl import logging

#: EMA factor of the speedup's Adam curve (per-step batch losses).
EMA = 0.9
FINAL_STEPS = 10  # the final loss is the mean of the last 10 steps
CURVE_POINTS = 200  # bins of the curves kept in the JSON and plotted
NUM_BOOTSTRAP = 2000


def per_seed_scores(out: dict, h: int) -> dict[str, np.ndarray]:
  """Per-seed scores of config `h` of `evaluation.train_models`' output."""
  losses = out["losses"][h].astype(np.float64)
  return {
    "mean_train_loss": losses.mean(-1),
    "final_train_loss": losses[:, -FINAL_STEPS:].mean(-1),
    "initial_loss": losses[:, 0],
    "test_accuracy": out["test_accuracy"][h],
    "test_loss": out["test_loss"][h],
  }


def envelope(curve, ema: float = EMA) -> np.ndarray:
  """EMA-smoothed running minimum of a curve; non-finite values never count."""
  curve = np.where(np.isfinite(curve), curve, np.inf).astype(np.float64)
  smooth = np.empty_like(curve)
  acc = curve[0]
  for t, x in enumerate(curve):  # a non-finite stretch restarts the EMA
    acc = ema * acc + (1 - ema) * x if math.isfinite(acc) else x
    smooth[t] = acc
  return np.minimum.accumulate(smooth)


def speedup(adam_curve, target: float, ema: float = EMA):
  """(speedup, adam_never_reached): Adam's steps to `target` over T.

  The step is fractional (linear interpolation between the steps around the
  crossing); 0 when Adam starts at or below the target, or when the target
  is not finite (the learned optimizer diverged); None and True when Adam
  never reaches it within its T steps (the speedup is above 1, censored).
  """
  env = envelope(np.asarray(adam_curve), ema)
  if not math.isfinite(target) or env[0] <= target:
    return 0.0, False
  hits = np.nonzero(env <= target)[0]
  if not hits.size:
    return None, True
  i = int(hits[0])
  x = (i - 1) + (env[i - 1] - target) / (env[i - 1] - env[i])
  return float(x) / len(env), False


def iqm(x) -> np.ndarray:
  """Interquartile mean over the last axis: trims int(n/4) at each end.

  As `scipy.stats.trim_mean(x, 0.25)`, rliable's IQM.
  """
  x = np.sort(np.asarray(x, np.float64), axis=-1)
  cut = int(0.25 * x.shape[-1])
  with np.errstate(invalid="ignore"):
    return x[..., cut : x.shape[-1] - cut].mean(-1)


def _stats(ratios: np.ndarray) -> dict[str, np.ndarray]:
  """The aggregates of ratios [..., tasks]; non-finite ratios are +inf."""
  r = np.where(np.isfinite(ratios), ratios, np.inf)
  return {
    "win_fraction": (r < 1).mean(-1),
    "median_ratio": np.median(r, -1),
    "worst_ratio": r.max(-1),
    "iqm_ratio": iqm(r),
  }


def resample_seeds(
  num_tasks: int, num_seeds: int, num_bootstrap: int = NUM_BOOTSTRAP
) -> np.ndarray:
  """[num_bootstrap, num_tasks, num_seeds] seed indices, drawn per task
  with replacement (fixed generator: every call draws the same)."""
  rng = np.random.default_rng(0)
  return rng.integers(0, num_seeds, (num_bootstrap, num_tasks, num_seeds))


def resampled_ratios(learned, adam_, idx: np.ndarray) -> np.ndarray:
  """[num_bootstrap, tasks] ratios of the seed means under the draws `idx`.

  `learned` and `adam_` are per-seed mean losses [tasks, seeds]; one draw
  serves both (their runs share inits and batches), and passing the same
  `idx` for two optimizers pairs their comparison.
  """
  learned, adam_ = np.asarray(learned), np.asarray(adam_)
  rows = np.arange(learned.shape[0])[None, :, None]
  return learned[rows, idx].mean(-1) / adam_[rows, idx].mean(-1)


def aggregate(tasks: Sequence[dict], num_bootstrap: int = NUM_BOOTSTRAP):
  """Aggregates over the tasks' scores, with bootstrap intervals.

  Each bootstrap resample draws every task's seeds with replacement (the
  same draw for both optimizers: their runs share inits and batches) and
  keeps the best Adam configuration fixed. Also sets each task's
  `ratio_ci95`.
  """
  learned = np.stack([t["learned"]["per_seed_mean_train_loss"] for t in tasks])
  adam_ = np.stack(
    [t["adam"]["best"]["per_seed_mean_train_loss"] for t in tasks]
  )
  ratios = np.asarray([t["ratio"] for t in tasks], np.float64)
  out = {k: float(v) for k, v in _stats(ratios).items()}
  idx = resample_seeds(*learned.shape, num_bootstrap)
  # Diverged runs make inf and NaN ratios: quantiles of them are fine as
  # inf or NaN (null in the JSON), not worth a warning.
  with np.errstate(invalid="ignore", divide="ignore"):
    boot = resampled_ratios(learned, adam_, idx)
    for k, v in _stats(boot).items():
      out[f"{k}_ci95"] = [float(np.quantile(v, q)) for q in (0.025, 0.975)]
    for t, lo, hi in zip(tasks, *np.quantile(boot, [0.025, 0.975], axis=0)):
      t["ratio_ci95"] = [float(lo), float(hi)]
  never = [t["adam_never_reached"] for t in tasks]
  speeds = [math.inf if n else t["speedup"] for t, n in zip(tasks, never)]
  med = float(np.median(speeds))
  out.update(
    num_tasks=len(tasks),
    speedup_win_fraction=float(np.mean(never)),
    median_speedup=med if math.isfinite(med) else None,
    median_speedup_censored=not math.isfinite(med),
    failure_fraction=float(np.mean([t["learned"]["failed"] for t in tasks])),
  )
  return out


def _binned(curve, num: int = CURVE_POINTS) -> tuple[list, list]:
  parts = np.array_split(np.arange(len(curve)), min(num, len(curve)))
  return [float(p.mean()) for p in parts], [
    float(curve[p].mean()) for p in parts
  ]


def _means(scores: dict) -> dict[str, float]:
  return {k: float(np.mean(v)) for k, v in scores.items()}


def score_task(spec, lrn: dict, adam_: dict, lrs) -> dict:
  """One task's section of the report, from both optimizers' runs."""
  learned = per_seed_scores(lrn, 0)
  failed = ~np.isfinite(learned["final_train_loss"]) | (
    learned["final_train_loss"] > learned["initial_loss"]
  )
  best = adam_["sweep"][adam_["best"]]
  l_mean, a_mean = _means(learned), _means(best["per_seed"])
  curve = lrn["losses"][0].mean(0)
  speed, never = speedup(
    adam_["best_curve"], float(curve[-FINAL_STEPS:].mean())
  )
  steps, l_curve = _binned(curve)
  _, a_curve = _binned(adam_["best_curve"])
  with np.errstate(invalid="ignore", divide="ignore"):
    ratio = np.float64(l_mean["mean_train_loss"]) / a_mean["mean_train_loss"]
    final = np.float64(l_mean["final_train_loss"]) / a_mean["final_train_loss"]
  edge = best["learning_rate"] in (min(lrs), max(lrs))
  if edge:
    logging.warning("%s: the best Adam lr is on the grid's edge.", spec.name)
  return {
    "name": spec.name,
    "spec": dataclasses.asdict(spec),
    "learned": dict(
      l_mean,
      per_seed_mean_train_loss=learned["mean_train_loss"],
      failed=bool(failed.any()),
      failure_rate=float(failed.mean()),
    ),
    "adam": {
      "best": dict(
        a_mean,
        schedule=best["schedule"],
        learning_rate=best["learning_rate"],
        per_seed_mean_train_loss=best["per_seed"]["mean_train_loss"],
      ),
      "best_on_grid_edge": edge,
      "cached": adam_["cached"],
      "sweep": [
        {
          "schedule": e["schedule"],
          "learning_rate": e["learning_rate"],
          "mean_train_loss": float(np.mean(e["per_seed"]["mean_train_loss"])),
        }
        for e in adam_["sweep"]
      ],
    },
    "ratio": float(ratio),
    "final_ratio": float(final),
    "speedup": speed,
    "adam_never_reached": never,
    "curves": {"steps": steps, "learned": l_curve, "adam": a_curve},
  }
