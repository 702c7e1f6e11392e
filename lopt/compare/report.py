"""The outputs of `lopt.compare`: its JSON, figure and Markdown tables."""

from __future__ import annotations

import os
from typing import Any

from lopt import jsonio, plots
from lopt.compare.stats import AXES, CI_LEVEL


def write(
  result: dict[str, Any], output_dir: str, name: str, title: str = ""
) -> tuple[str, str]:
  """Writes `<name>.json` and `<name>.png`; returns their paths."""
  os.makedirs(output_dir, exist_ok=True)
  json_path = jsonio.dump(result, os.path.join(output_dir, f"{name}.json"))
  config = result.get("config", {})
  plot_cfg = config.get("plot", {}) or {}
  if not title and result.get("kind") == "lopt":
    task = config.get("task", {})
    title = (
      f"Learned-optimizer meta-training, {task.get('dataset')} "
      f"{task.get('model')} {tuple(task.get('hidden', ()))}, "
      f"T = {config.get('inner', {}).get('horizon')}"
    )
  png_path = plots.comparison(
    result,
    os.path.join(output_dir, f"{name}.png"),
    title=title or plot_cfg.get("title", name),
    yscale=plot_cfg.get("yscale", "log"),
    xscale=plot_cfg.get("xscale", "linear"),
    theta_x=plot_cfg.get("theta_x", "steps"),
  )
  return json_path, png_path


def fmt_interval(d: dict[str, Any] | None, digits: int = 3) -> str:
  """`mean [low, high]` with `digits` significant digits; `n/a` if unset."""
  if not d or d["mean"] is None:
    return "n/a"
  if d["low"] is None:
    return f"{d['mean']:.{digits}g}"
  return (
    f"{d['mean']:.{digits}g} [{d['low']:.{digits}g}, {d['high']:.{digits}g}]"
  )


def format_table(result: dict[str, Any]) -> str:
  """The final numbers per estimator as a Markdown table.

  Then, for every target of `result["targets"]`, a table of how far each
  label got before its meta-loss fell below it, on every axis of `AXES`:
  the mean over the seeds that got there and its 95 % interval, with how
  many seeds did.
  """

  def fmt(d: dict[str, Any], spread: bool = True) -> str:
    if d["mean"] is None:
      return "n/a"
    if spread:
      return f"{d['mean']:.4g} ± {d['std']:.2g}"
    return f"{d['mean']:.4g}"

  lines = [
    "| estimator | final meta-loss (mean ± std) | 95 % interval | "
    "best meta-loss | outer steps | inner steps | seconds | final theta |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for label, entry in result["estimators"].items():
    s = entry["summary"]
    theta = s.get("final_theta_mean")
    theta = (
      ""
      if theta is None
      else "("
      + ", ".join("nan" if t is None else f"{t:.4g}" for t in theta)
      + ")"
    )
    ci = s.get("final_meta_loss_ci")
    ci = (
      "n/a"
      if not ci or ci["low"] is None
      else f"[{ci['low']:.4g}, {ci['high']:.4g}]"
    )
    lines.append(
      f"| {label} | {fmt(s['final_meta_loss'])} | {ci} | "
      f"{fmt(s['best_meta_loss'], False)} | "
      f"{fmt(s['total_outer_steps'], False)} | "
      f"{fmt(s['total_steps'], False)} | "
      f"{fmt(s['total_seconds'], False)} | {theta} |"
    )
  for i, target in enumerate(result.get("targets", ())):
    rows = {label: r[i] for label, r in result["to_target"].items()}
    axes = [a for a in AXES if all(a in r for r in rows.values())]
    lines += [
      "",
      f"Meta-loss below {target:.4g}: mean over the seeds that got there "
      f"[{CI_LEVEL:.0%} interval]",
      "",
      "| estimator | seeds | " + " | ".join(AXES[a] for a in axes) + " |",
      "|---|---|" + "---|" * len(axes),
    ]
    for label, r in rows.items():
      cells = [fmt_interval(r[a]) for a in axes]
      lines.append(
        f"| {label} | {r['reached']}/{r['num_runs']} | "
        + " | ".join(cells)
        + " |"
      )
  return "\n".join(lines)
