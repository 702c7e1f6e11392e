"""lopt's figures: estimator comparisons, loss curves, variance against W.

matplotlib is set up here only, with the non-interactive Agg backend (the
figures are files; lopt runs on machines without a display), and imported
on first use, so that training never pays for it.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np


@functools.cache
def pyplot():
  """`matplotlib.pyplot` on the Agg backend."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def band(
  runs: list[dict[str, Any]],
  x_key: str,
  y_key: str = "meta_loss",
  num: int = 200,
  log_x: bool = False,
):
  """(grid, mean, low, high) of the runs' curves on a common x grid.

  Each seed's curve is interpolated linearly onto a grid up to the smallest
  final x of the seeds (no extrapolation), evenly spaced, or geometrically
  from the smallest positive x with `log_x`; low/high are the min/max over
  seeds. Non-finite values stay NaN.
  """
  end = min(r[x_key][-1] for r in runs)
  if end <= 0:
    grid = np.zeros(1)
  elif log_x:
    first = min(x for r in runs for x in r[x_key] if x > 0)
    grid = np.concatenate([[0.0], np.geomspace(min(first, end), end, num)])
  else:
    grid = np.linspace(0.0, end, num)
  ys = []
  for r in runs:
    x = np.asarray(r[x_key], np.float64)
    y = np.asarray([np.nan if v is None else v for v in r[y_key]], np.float64)
    ys.append(np.interp(grid, x, y))
  ys = np.asarray(ys)
  with np.errstate(all="ignore"):
    return grid, ys.mean(0), ys.min(0), ys.max(0)


def comparison(
  result: dict[str, Any],
  path: str,
  title: str = "",
  yscale: str = "log",
  xscale: str = "linear",
  theta_x: str = "steps",
) -> str:
  """Writes the comparison figure; returns its path.

  Panels: meta-loss against total inner steps, against sequential inner
  steps (the steps one particle runs one after another: W per update for
  the online estimators, T for FullES), against wall-clock seconds of this
  machine and, where the runs have it, against the estimated wall-clock of
  a machine that runs every particle at once (`parallel_seconds`:
  sequential steps x the measured time of one step of one particle); mean
  over seeds, min-max band, `result["targets"]` as dotted lines; for a
  learned optimizer's log-scale meta-loss, at most 10x the worst starting
  value is shown (diverged runs leave the top). With a
  known `theta_true`, one more panel against `theta_x` ('steps' or
  'outer_steps'): theta itself (scalar theta, the truth dashed) or the
  distance |theta - theta*|. At most three panels a row.
  """
  plt = pyplot()
  truth = (
    np.asarray(result["theta_true"], np.float64)
    if "theta_true" in result
    else None
  )
  scalar = truth is not None and truth.size == 1
  panels = [("steps", "total inner unroll steps")]
  runs = [r for e in result["estimators"].values() for r in e["runs"]]
  if all("sequential_steps" in r for r in runs):
    panels.append(("sequential_steps", "sequential inner steps per particle"))
  panels.append(("seconds", "wall-clock seconds (timed region)"))
  if all("parallel_seconds" in r for r in runs):
    panels.append(
      (
        "parallel_seconds",
        "estimated seconds, all particles in parallel\n"
        "(sequential steps x one particle's step time)",
      )
    )
  num_panels = len(panels) + (truth is not None)
  cols = min(3, num_panels)
  rows = -(-num_panels // cols)
  fig, grid = plt.subplots(
    rows, cols, figsize=(5.2 * cols, 4.2 * rows), squeeze=False
  )
  axes = list(grid.ravel())
  for ax in axes[num_panels:]:
    ax.remove()
  axes = axes[:num_panels]
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  log_x = xscale == "log"

  def draw(ax, runs, x_key, y_key, color, label, log_x=log_x):
    grid, mean, low, high = band(runs, x_key, y_key, log_x=log_x)
    ax.plot(grid, mean, color=color, label=label)
    if len(runs) > 1:
      ax.fill_between(grid, low, high, color=color, alpha=0.2, lw=0)

  for i, (label, entry) in enumerate(result["estimators"].items()):
    color = colors[i % len(colors)]
    runs = entry["runs"]
    for ax, (x_key, _) in zip(axes, panels):
      draw(ax, runs, x_key, "meta_loss", color, label)
    if truth is not None:
      shown = [
        dict(
          r,
          _theta=[
            float(np.ravel(t)[0])
            if scalar
            else float(np.linalg.norm(np.asarray(t) - truth))
            for t in r["theta"]
          ],
        )
        for r in runs
      ]
      draw(
        axes[-1],
        shown,
        theta_x,
        "_theta",
        color,
        label,
        log_x=log_x and theta_x == "steps",
      )
  num_seeds = len(result["seeds"])
  spread = (
    f"mean of {num_seeds} seeds, band = min..max" if num_seeds > 1 else "1 seed"
  )
  ylabel = (
    "meta-loss (unperturbed theta)"
    if result.get("kind") == "toy"
    else "meta-loss: eval mean train loss"
  )
  # A diverged learned-optimizer run climbs by orders of magnitude and
  # would flatten every other curve: the axes stop at 10x the worst start.
  starts = [
    r["meta_loss"][0]
    for e in result["estimators"].values()
    for r in e["runs"]
    if r["meta_loss"][0] is not None
  ]
  top = None
  if result.get("kind") != "toy" and yscale == "log" and starts:
    top = 10 * max(starts)
  for ax, (_, xlabel) in zip(axes, panels):
    ax.set(xlabel=xlabel, ylabel=ylabel, yscale=yscale, xscale=xscale)
    if top is not None and ax.get_ylim()[1] > top:
      ax.set_ylim(top=top)
    for target in result.get("targets", ()):
      ax.axhline(target, color="gray", ls=":", lw=1)
  if truth is not None:
    ax = axes[-1]
    if theta_x == "steps":
      ax.set(xlabel="total inner unroll steps", xscale=xscale)
    else:
      ax.set(xlabel="outer steps")
    if scalar:
      ax.axhline(
        float(truth[0]),
        color="k",
        ls="--",
        lw=1,
        label=f"theta* = {float(truth[0]):.4g}",
      )
      ax.set_yscale("symlog", linthresh=1.0)
      ax.set(ylabel="theta (symlog)")
      ax.set_ylim(bottom=min(-1.0, float(truth[0]) - 0.5))
      ax.legend(fontsize="small")
    else:
      ax.set(ylabel="|theta - theta*|", yscale="log")
  for ax in axes:
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize="small")
  fig.suptitle(f"{title} ({spread})" if title else spread)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def loss_curves(curves: dict[str, np.ndarray], path: str, title: str) -> str:
  """Writes the training-loss curves (smoothed) to a PNG; returns its path."""
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for label, curve in curves.items():
    width = max(1, len(curve) // 50)
    smooth = np.convolve(curve, np.ones(width) / width, mode="valid")
    ax.plot(np.arange(len(smooth)) + width // 2, smooth, label=label)
  ax.set(
    xlabel="training step",
    ylabel="training loss (batch)",
    yscale="log",
    title=title,
  )
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def variance_vs_unroll_length(result: dict[str, Any], path: str) -> str:
  """Writes the variance-vs-W figure (two panels); returns its path."""
  plt = pyplot()
  w = np.asarray(result["unroll_lengths"])
  exact, mc = result["exact"], result["monte_carlo"]
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10.5, 4.2))
  for name, color in (("pes", "C1"), ("nres", "C0")):
    ax1.plot(w, exact[name], color=color, label=f"{name.upper()} exact")
    ax1.errorbar(
      w,
      mc[name],
      yerr=2 * np.asarray(mc[f"{name}_se"]),
      fmt="o",
      color=color,
      ms=4,
      capsize=2,
      label=f"{name.upper()} Monte Carlo (±2 SE)",
    )
  ax1.set(
    xscale="log",
    xlabel="truncation length W",
    ylabel="trace variance of one estimate",
    title=f"per-estimate variance, T = {result['horizon']}",
  )
  ax1.legend(fontsize="small")
  ax2.plot(w, exact["ratio"], color="k", label="exact (lopt.analysis)")
  ax2.errorbar(
    w,
    mc["ratio"],
    yerr=2 * np.asarray(mc["ratio_se"]),
    fmt="o",
    color="C3",
    ms=4,
    capsize=2,
    label="Monte Carlo (±2 SE)",
  )
  known = [(x, r) for x, r in zip(w, result["oracle_ratio"]) if r]
  if known:
    ax2.plot(*zip(*known), "x", color="k", ms=7, label="algorithms.md O2 table")
  ax2.axhline(1.0, color="gray", lw=0.8, ls=":")
  ax2.set(
    xscale="log",
    xlabel="truncation length W",
    ylabel="Var(PES) / Var(NRES)",
    title="PES / NRES variance ratio",
  )
  ax2.legend(fontsize="small")
  for ax in (ax1, ax2):
    ax.grid(alpha=0.3)
  fig.suptitle(
    f"Linear-quadratic system (algorithms.md O2), "
    f"{result['num_samples']:,} samples per point"
  )
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
