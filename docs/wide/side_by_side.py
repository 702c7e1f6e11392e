"""The wide suite's figures of four optimizers side by side.

    python docs/wide/side_by_side.py

Reads the `suite_wide.json` that `docs/wide/suite.py` wrote for the shipped
wide generalist (`step500`), the digits-only generalist of
configs/generalist.py (`digits_generalist`), the single-task default of
configs/default.py (`default`) and the wide generalist's untrained start
(`theta0`), and writes `side_by_side.{json,md}` here: per axis (tuned Adam,
Adam at 1e-3, the better tuning-free optimizer, tuned Adam's final loss
and its held-out test loss) the win fraction, median, IQM and worst ratio,
each with its 95 % bootstrap interval. Every run used 2 seeds per task and
the same cached baselines.
"""

import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))

#: (directory, label) of each optimizer, in the table's order.
RUNS = (
  ("step500", "wide generalist (shipped)"),
  ("digits_generalist", "digits generalist"),
  ("default", "single-task default"),
  ("theta0", "wide generalist untrained"),
)
#: (axis of suite_wide.json, label).
AXES = (
  ("adam", "tuned Adam"),
  ("adam_1e-3", "Adam at 1e-3"),
  ("tuning_free", "better of Prodigy, schedule-free AdamW"),
  ("final", "tuned Adam, final loss"),
  ("test_loss", "tuned Adam, held-out test loss"),
)
KEYS = ("win_fraction", "median_ratio", "iqm_ratio", "worst_ratio")
#: How the two older optimizers were meta-trained for this comparison
#: (today's code, from scratch; training seconds from their logs).
META_TRAINING = {
  "digits_generalist": {
    "config": "configs/generalist.py",
    "outer_steps": 500,
    "training_seconds": 565,
  },
  "default": {
    "config": "configs/default.py",
    "outer_steps": 1500,
    "training_seconds": 72,
  },
}
ADAM_LEARNING_RATE = 1e-3  # the "Adam at 1e-3" axis


def _show(x: float) -> str:
  """4 significant digits (a ratio of 0.9998 is not 1.000), no exponent."""
  return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.4g}"


def main() -> None:
  table = {}
  for directory, label in RUNS:
    with open(os.path.join(HERE, directory, "suite_wide.json")) as f:
      axes = json.load(f)["aggregates"]["axes"]
    table[directory] = {
      "label": label,
      "axes": {
        axis: {k: axes[axis][k] for k in KEYS}
        | {f"{k}_ci95": axes[axis][f"{k}_ci95"] for k in KEYS}
        for axis, _ in AXES
      },
    }
  lines = [
    "| reference | optimizer | wins | median | IQM | worst |",
    "|---|---|---|---|---|---|",
  ]
  for axis, axis_label in AXES:
    for directory, _ in RUNS:
      row = table[directory]["axes"][axis]

      def cell(key, row=row):
        low, high = row[f"{key}_ci95"]
        return f"{_show(row[key])} [{_show(low)}, {_show(high)}]"

      lines.append(
        f"| {axis_label} | {table[directory]['label']} | "
        f"{row['win_fraction']:.2f} | {cell('median_ratio')} | "
        f"{_show(row['iqm_ratio'])} | {cell('worst_ratio')} |"
      )
  result = {
    "optimizers": table,
    "meta_training": META_TRAINING,
    "adam_learning_rate": ADAM_LEARNING_RATE,
  }
  with open(os.path.join(HERE, "side_by_side.json"), "w") as f:
    json.dump(result, f, indent=1)
  with open(os.path.join(HERE, "side_by_side.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
