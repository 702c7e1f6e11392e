"""The reports of `lopt.suite`: Markdown table, summary line, figure, files.

Beside tuned Adam, the table and the summary line show the learned
optimizer against Adam at 1e-3 and the best tuning-free optimizer of each
task (`lopt.suite.baselines`: the untuned choices it really competes with),
and its held-out (test) loss against tuned Adam's, so that a faster
training that costs generalisation shows.
"""

from __future__ import annotations

import math
import os

from lopt import jsonio, plots


def _num(x, fmt=".4f") -> str:
  return "diverged" if x is None or not math.isfinite(x) else format(x, fmt)


#: The aggregate axes (`lopt.suite.metrics.AXES`) as the table names them.
AXIS_LABELS = {
  "adam": "tuned Adam: mean train loss",
  "final": "tuned Adam: final train loss",
  "test_loss": "tuned Adam: held-out test loss",
  "adam_1e-3": "Adam 1e-3: mean train loss",
  "tuning_free": "best tuning-free: mean train loss",
}


def _tuning_free(t) -> str:
  """The ratio against the task's best tuning-free baseline, and which."""
  if "tuning_free" not in t.get("ratios", {}):
    return "n/a"
  return f"{_num(t['ratios']['tuning_free'], '.3f')} ({t['tuning_free_best']})"


def _other(t, name) -> str:
  """The ratio against baseline `name`."""
  ratios = t.get("ratios", {})
  return _num(ratios[name], ".3f") if name in ratios else "n/a"


def _with_ci(stats, k, fmt=".3f") -> str:
  lo, hi = (_num(v, fmt) for v in stats[f"{k}_ci95"])
  return f"{_num(stats[k], fmt)} [{lo}, {hi}]"


def _axis_lines(summary: dict) -> list[str]:
  """One row per aggregate axis: wins, median, IQM and worst ratio."""
  axes = summary["aggregates"].get("axes", {})
  if not axes:
    return []
  lines = [
    "",
    "Learned / reference per axis, each with its 95% bootstrap interval "
    "(seeds within tasks):",
    "",
    "| against | wins (ratio < 1) | median ratio | IQM ratio | worst ratio |",
    "|---|---|---|---|---|",
  ]
  for axis, stats in axes.items():
    cells = [_with_ci(stats, "win_fraction", ".2f")] + [
      _with_ci(stats, k) for k in ("median_ratio", "iqm_ratio", "worst_ratio")
    ]
    lines.append(f"| {AXIS_LABELS.get(axis, axis)} | {' | '.join(cells)} |")
  free = summary.get("baselines", {}).get("tuning_free")
  if "tuning_free" in axes and free:
    lines.append(
      f"\nBest tuning-free: the better of {', '.join(free)} per task (at "
      "their optax defaults; schedule-free tested at its averaged iterate)."
    )
  return lines


def _speed(t) -> str:
  if t["adam_never_reached"]:
    return "> 1"
  return _num(t["speedup"], ".2f")


def format_table(summary: dict) -> str:
  """The per-task table and the aggregates, as Markdown."""
  lines = [
    f"Suite `{summary['suite']}` ({len(summary['tasks'])} tasks, "
    f"{len(summary['seeds'])} seeds): learned optimizer {summary['learned']} "
    "vs Adam tuned per task. Ratio = learned / best Adam (< 1: learned "
    "better); speedup = Adam's steps to the learned final loss / T.",
    "",
    "| task | T | learned mean loss | best Adam (lr, schedule) | Adam mean "
    "loss | ratio | final ratio | speedup | test acc learned / Adam | "
    "test loss ratio | ratio vs Adam 1e-3 | ratio vs best tuning-free |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for t in summary["tasks"]:
    lrn, best = t["learned"], t["adam"]["best"]
    flag = " (failed)" if lrn["failed"] else ""
    edge = "*" if t["adam"]["best_on_grid_edge"] else ""
    lines.append(
      f"| {t['name']} | {t['spec']['horizon']} | "
      f"{_num(lrn['mean_train_loss'])}{flag} | "
      f"{best['learning_rate']:g}{edge}, {best['schedule']} | "
      f"{_num(best['mean_train_loss'])} | {_num(t['ratio'], '.3f')} | "
      f"{_num(t['final_ratio'], '.3f')} | {_speed(t)} | "
      f"{_num(lrn['test_accuracy'], '.3f')} / "
      f"{_num(best['test_accuracy'], '.3f')} | "
      f"{_num(t.get('test_loss_ratio'), '.3f')} | "
      f"{_other(t, 'adam_1e-3')} | {_tuning_free(t)} |"
    )
  if any(t["adam"]["best_on_grid_edge"] for t in summary["tasks"]):
    lines.append(
      "\n\\* best learning rate on the edge of the grid: Adam may be "
      "under-tuned there."
    )
  a = summary["aggregates"]

  def ci(k):
    return "[{}, {}]".format(*(_num(v, ".3f") for v in a[f"{k}_ci95"]))

  med_speed = (
    "> 1 (censored)"
    if a["median_speedup_censored"]
    else _num(a["median_speedup"], ".2f")
  )
  lines += [
    "",
    "| aggregate | value | 95% bootstrap interval (seeds within tasks) |",
    "|---|---|---|",
    f"| wins (ratio < 1) | {a['win_fraction']:.2f} | {ci('win_fraction')} |",
    f"| median ratio | {_num(a['median_ratio'], '.3f')} | {ci('median_ratio')} |",
    f"| IQM ratio | {_num(a['iqm_ratio'], '.3f')} | {ci('iqm_ratio')} |",
    f"| worst ratio | {_num(a['worst_ratio'], '.3f')} | {ci('worst_ratio')} |",
    f"| speedup wins (Adam never reaches it) | "
    f"{a['speedup_win_fraction']:.2f} | |",
    f"| median speedup | {med_speed} | |",
    f"| failed tasks | {a['failure_fraction']:.2f} | |",
  ]
  lines += _axis_lines(summary)
  return "\n".join(lines)


def summary_line(summary: dict) -> str:
  """One line: wins, median and worst ratio, against tuned Adam and the
  best tuning-free optimizer."""
  a = summary["aggregates"]
  n = a["num_tasks"]
  line = (
    f"Suite {summary['suite']}: learned beats tuned Adam on "
    f"{round(a['win_fraction'] * n)}/{n} tasks "
    f"({a['win_fraction']:.0%}); median ratio {_num(a['median_ratio'], '.3f')}, "
    f"worst {_num(a['worst_ratio'], '.3f')}."
  )
  free = a.get("axes", {}).get("tuning_free")
  if free:
    line += (
      f" Against the best tuning-free optimizer: wins "
      f"{round(free['win_fraction'] * n)}/{n}, median ratio "
      f"{_num(free['median_ratio'], '.3f')}, worst "
      f"{_num(free['worst_ratio'], '.3f')}."
    )
  return line


def plot(summary: dict, path: str) -> str:
  """One panel per task: learned vs best Adam loss curves, log y."""
  plt = plots.pyplot()
  tasks = summary["tasks"]
  cols = min(4, len(tasks))
  rows = -(-len(tasks) // cols)
  fig, axes = plt.subplots(
    rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False
  )
  for ax in axes.ravel()[len(tasks) :]:
    ax.remove()
  for ax, t in zip(axes.ravel(), tasks):
    c, best = t["curves"], t["adam"]["best"]
    ax.plot(c["steps"], c["learned"], label="learned")
    ax.plot(
      c["steps"],
      c["adam"],
      label=f"Adam {best['schedule']} {best['learning_rate']:g}",
    )
    others = c.get("baselines", {})
    for name, style in (("adam_1e-3", ":"), (t.get("tuning_free_best"), "--")):
      if name in others:
        ax.plot(c["steps"], others[name], style, label=name, lw=1)
    ax.set_yscale("log")
    ax.set_title(f"{t['name']}: ratio {_num(t['ratio'], '.2f')}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  for ax in axes[-1]:
    ax.set_xlabel("training step")
  for ax in axes[:, 0]:
    ax.set_ylabel("train loss (seed mean)")
  fig.suptitle(
    f"suite {summary['suite']}: learned vs tuned Adam and untuned baselines",
    fontsize=11,
  )
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def write_outputs(summary: dict, output: str) -> dict[str, str]:
  """Writes `suite_<name>.{json,md,png}` into `output`; returns the paths."""
  os.makedirs(output, exist_ok=True)
  stem = os.path.join(output, f"suite_{summary['suite']}")
  paths = {"json": f"{stem}.json", "md": f"{stem}.md", "png": f"{stem}.png"}
  jsonio.dump(summary, paths["json"], indent=1)
  with open(paths["md"], "w") as f:
    f.write(format_table(summary) + "\n\n" + summary_line(summary) + "\n")
  plot(summary, paths["png"])
  return paths


def loss_lines(summary: dict) -> str:
  """Each task's mean training loss under the learned optimizer, Adam at
  1e-3 and the better tuning-free optimizer: what a user who tries them
  side by side, untuned, sees."""
  lines = ["Mean training loss (seed mean; lower is better):"]
  for task in summary["tasks"]:
    base = task.get("baselines") or {}
    best = task.get("tuning_free_best")
    parts = [f"learned {task['learned']['mean_train_loss']:.4f}"]
    if "adam_1e-3" in base:
      parts.append(f"Adam 1e-3 {base['adam_1e-3']['mean_train_loss']:.4f}")
    if best:
      parts.append(f"{best} {base[best]['mean_train_loss']:.4f}")
    lines.append(f"  {task['name']}: " + ", ".join(parts))
  return "\n".join(lines)
