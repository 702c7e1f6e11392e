"""The scores of `lopt.suite`: ratios, speedups, failures and aggregates.

`lopt.suite.evaluation` says what each number means. Everything here is
numpy on finished runs (loss curves and per-seed scores), so it is tested
on hand-made curves and can recompute a report from its JSON.

The aggregates are taken along `AXES`, each a per-seed score and a
reference: tuned Adam (its mean training loss, its final loss and its
held-out test loss), Adam at 1e-3 and the best tuning-free optimizer of
each task (`lopt.suite.baselines`: the competitors a learned optimizer,
sold on needing no tuning, really has). Every axis goes through the same
code: ratios of seed means, and bootstrap intervals from one draw of seeds
within tasks.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from absl import logging

from lopt.suite import baselines as baselines_lib

#: EMA factor of the speedup's Adam curve (per-step batch losses).
EMA = 0.9
FINAL_STEPS = 10  # the final loss is the mean of the last 10 steps
CURVE_POINTS = 200  # bins of the curves kept in the JSON and plotted
NUM_BOOTSTRAP = 2000
#: The aggregates' axes: name -> (per-seed score, reference). On each task
#: an axis's ratio is the learned optimizer's seed mean of the score over
#: the reference's: "adam" is the best Adam configuration, "tuning_free"
#: the task's better tuning-free baseline (`tuning_free_best`), any other
#: reference a baseline of `lopt.suite.baselines.BASELINES`. The "adam"
#: axis's statistics are also the aggregates' top-level keys.
AXES = {
  "adam": ("mean_train_loss", "adam"),
  "adam_1e-3": ("mean_train_loss", "adam_1e-3"),
  "tuning_free": ("mean_train_loss", "tuning_free"),
  "final": ("final_train_loss", "adam"),
  "test_loss": ("test_loss", "adam"),
}
#: The per-seed scores every section of a task keeps (`per_seed_<score>`).
PER_SEED = ("mean_train_loss", "final_train_loss", "test_loss")


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


def lowest_mean(per_seed_means: Sequence) -> int:
  """Index of the entry of lowest seed mean; an entry with a non-finite
  seed (so a non-finite mean) is never chosen while a finite one exists."""

  def rank(i):
    m = float(np.mean(per_seed_means[i]))
    return (not math.isfinite(m), m if math.isfinite(m) else 0.0)

  return min(range(len(per_seed_means)), key=rank)


def ratio_of_means(learned, reference) -> float:
  """The learned seed mean over the reference's (NaN/inf when diverged)."""
  with np.errstate(invalid="ignore", divide="ignore"):
    return float(
      np.mean(np.asarray(learned, np.float64))
      / np.mean(np.asarray(reference, np.float64))
    )


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


def _section(task: dict, who: str) -> dict | None:
  """The learned, best Adam or baseline section of a task's scores."""
  if who == "learned":
    return task["learned"]
  if who == "adam":
    return task["adam"]["best"]
  if who == "tuning_free":
    who = task.get("tuning_free_best")
  return task.get("baselines", {}).get(who)


def axis_seeds(task: dict, axis: str):
  """(learned, reference) per-seed scores of `axis` on a task; None when
  the task has no such reference (e.g. a report without baselines)."""
  score, reference = AXES[axis]
  ref = _section(task, reference)
  key = f"per_seed_{score}"
  if ref is None or key not in ref or key not in task["learned"]:
    return None
  return task["learned"][key], ref[key]


def aggregate(tasks: Sequence[dict], num_bootstrap: int = NUM_BOOTSTRAP):
  """Aggregates over the tasks' scores, with bootstrap intervals.

  Along every axis of `AXES` that all tasks have (`axes[axis]`; the "adam"
  axis's keys also at the top level): win fraction, median, IQM and worst
  ratio, each with a 95% interval. Each bootstrap resample draws every
  task's seeds with replacement, the same draw for all optimizers and axes
  (their runs share inits and batches), and keeps the best Adam
  configuration and the best tuning-free baseline fixed. Also sets each
  task's `ratio_ci95` (the "adam" axis) and `ci95[axis]`.
  """
  axes, idx = {}, None
  for axis in AXES:
    pairs = [axis_seeds(t, axis) for t in tasks]
    if any(p is None for p in pairs):
      continue
    learned = np.stack([np.asarray(p[0], np.float64) for p in pairs])
    ref = np.stack([np.asarray(p[1], np.float64) for p in pairs])
    if idx is None:
      idx = resample_seeds(*learned.shape, num_bootstrap)
    # Diverged runs make inf and NaN ratios: quantiles of them are fine as
    # inf or NaN (null in the JSON), not worth a warning.
    with np.errstate(invalid="ignore", divide="ignore"):
      stats = {
        k: float(v) for k, v in _stats(learned.mean(-1) / ref.mean(-1)).items()
      }
      boot = resampled_ratios(learned, ref, idx)
      for k, v in _stats(boot).items():
        stats[f"{k}_ci95"] = [float(np.quantile(v, q)) for q in (0.025, 0.975)]
      bounds = np.quantile(boot, [0.025, 0.975], axis=0)
    for t, lo, hi in zip(tasks, *bounds):
      t.setdefault("ci95", {})[axis] = [float(lo), float(hi)]
    axes[axis] = stats
  out = dict(axes["adam"])
  for t in tasks:
    t["ratio_ci95"] = t["ci95"]["adam"]
  never = [t["adam_never_reached"] for t in tasks]
  speeds = [math.inf if n else t["speedup"] for t, n in zip(tasks, never)]
  med = float(np.median(speeds))
  out.update(
    num_tasks=len(tasks),
    speedup_win_fraction=float(np.mean(never)),
    median_speedup=med if math.isfinite(med) else None,
    median_speedup_censored=not math.isfinite(med),
    failure_fraction=float(np.mean([t["learned"]["failed"] for t in tasks])),
    axes=axes,
  )
  return out


def _binned(curve, num: int = CURVE_POINTS) -> tuple[list, list]:
  parts = np.array_split(np.arange(len(curve)), min(num, len(curve)))
  return [float(p.mean()) for p in parts], [
    float(curve[p].mean()) for p in parts
  ]


def _means(scores: dict) -> dict[str, float]:
  return {k: float(np.mean(v)) for k, v in scores.items()}


def _seeds(scores: dict) -> dict[str, np.ndarray]:
  return {f"per_seed_{k}": scores[k] for k in PER_SEED}


def _against_baselines(learned: dict, baselines: dict) -> dict:
  """A task's fields on the baselines (see `score_task`)."""
  sections, ratios, finals = {}, {}, {}
  for name, b in baselines.items():
    sections[name] = dict(
      _means(b["per_seed"]), **_seeds(b["per_seed"]), cached=b["cached"]
    )
    ratios[name], finals[name] = (
      ratio_of_means(learned[k], b["per_seed"][k])
      for k in ("mean_train_loss", "final_train_loss")
    )
  free = [n for n in baselines if n in baselines_lib.TUNING_FREE]
  best = None
  if free:
    means = [baselines[n]["per_seed"]["mean_train_loss"] for n in free]
    best = free[lowest_mean(means)]
    ratios["tuning_free"], finals["tuning_free"] = ratios[best], finals[best]
  return {
    "baselines": sections,
    "ratios": ratios,
    "final_ratios": finals,
    "tuning_free_best": best,
  }


def score_task(spec, lrn: dict, adam_: dict, lrs, baselines=None) -> dict:
  """One task's section of the report, from the optimizers' runs.

  Args:
    spec: the task's `SuiteTask`.
    lrn: the learned optimizer's `train_models` output.
    adam_: the tuned-Adam result (`evaluation.tuned_adam`).
    lrs: Adam's learning-rate grid (to flag a best lr on its edge).
    baselines: name -> a baseline's result (`evaluation.baseline`), or
      None for none.

  Returns:
    `ratio`, `final_ratio`, `speedup`, ... against tuned Adam (the
    `evaluation` module docstring); `test_loss_ratio` (learned test loss
    over tuned Adam's); `baselines[name]` (a baseline's seed means and
    `per_seed_*` scores); `ratios[name]` and `final_ratios[name]` (mean and
    final training-loss ratios against it), also under "tuning_free" for
    the better tuning-free baseline, named by `tuning_free_best` (None
    without one); and the binned `curves`.
  """
  baselines = baselines or {}
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
      **_seeds(learned),
      failed=bool(failed.any()),
      failure_rate=float(failed.mean()),
    ),
    "adam": {
      "best": dict(
        a_mean,
        schedule=best["schedule"],
        learning_rate=best["learning_rate"],
        **_seeds(best["per_seed"]),
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
    "test_loss_ratio": ratio_of_means(
      learned["test_loss"], best["per_seed"]["test_loss"]
    ),
    **_against_baselines(learned, baselines),
    "curves": {
      "steps": steps,
      "learned": l_curve,
      "adam": a_curve,
      "baselines": {n: _binned(b["curve"])[1] for n, b in baselines.items()},
    },
  }
