"""The reports of `lopt.suite`: Markdown table, summary line, figure, files."""

from __future__ import annotations

import math
import os

from lopt import jsonio, plots


def _num(x, fmt=".4f") -> str:
  return "diverged" if x is None or not math.isfinite(x) else format(x, fmt)


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
    "loss | ratio | final ratio | speedup | test acc learned / Adam |",
    "|---|---|---|---|---|---|---|---|---|",
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
      f"{_num(best['test_accuracy'], '.3f')} |"
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
  return "\n".join(lines)


def summary_line(summary: dict) -> str:
  """One line: wins, median and worst ratio."""
  a = summary["aggregates"]
  return (
    f"Suite {summary['suite']}: learned beats tuned Adam on "
    f"{round(a['win_fraction'] * a['num_tasks'])}/{a['num_tasks']} tasks "
    f"({a['win_fraction']:.0%}); median ratio {_num(a['median_ratio'], '.3f')}, "
    f"worst {_num(a['worst_ratio'], '.3f')}."
  )


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
    ax.set_yscale("log")
    ax.set_title(f"{t['name']}: ratio {_num(t['ratio'], '.2f')}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  for ax in axes[-1]:
    ax.set_xlabel("training step")
  for ax in axes[:, 0]:
    ax.set_ylabel("train loss (seed mean)")
  fig.suptitle(f"suite {summary['suite']}: learned vs tuned Adam", fontsize=11)
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
