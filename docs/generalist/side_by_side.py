"""The held-out suite's results of several optimizers side by side.

    python docs/generalist/side_by_side.py NAME=suite.json ... > table.md

Prints a markdown table: per task the ratio of each optimizer's mean
training loss to Adam tuned per task (< 1: better than tuned Adam), then
the suite's aggregates with their 95% bootstrap intervals. The README's
generalist table is this script's output on the committed JSON files.
"""

import json
import sys


def _row(label, values):
  return f"| {label} | " + " | ".join(values) + " |"


def main(argv: list[str]) -> None:
  runs = {}
  for arg in argv:
    name, path = arg.split("=", 1)
    with open(path) as f:
      runs[name] = json.load(f)
  names = list(runs)
  first = runs[names[0]]
  print(_row("held-out task (T)", names))
  print("|---|" + "---|" * len(names))
  for i, task in enumerate(first["tasks"]):
    label = f"{task['name']} ({task['spec']['horizon']})"
    print(_row(label, [f"{runs[n]['tasks'][i]['ratio']:.3f}" for n in names]))
  for key, label, fmt in (
    ("win_fraction", "fraction of tasks won", ".2f"),
    ("median_ratio", "median ratio", ".3f"),
    ("iqm_ratio", "IQM ratio", ".3f"),
    ("worst_ratio", "worst ratio", ".3f"),
  ):
    cells = []
    for n in names:
      a = runs[n]["aggregates"]
      low, high = a[f"{key}_ci95"]
      cells.append(f"{a[key]:{fmt}} [{low:{fmt}}, {high:{fmt}}]")
    print(_row(f"**{label}**", cells))


if __name__ == "__main__":
  main(sys.argv[1:])
