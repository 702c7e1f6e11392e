"""Test accuracy of a suite's learned optimizer against tuned Adam's, in points.

    python docs/wide/accuracy.py docs/wide/step500_heldout/suite_heldout.json

Writes `accuracy.json` beside the suite JSON: per task the test-accuracy
difference learned - tuned Adam (percentage points, seed means), the number
of tasks below tuned Adam, and the median, lowest and highest difference.
"""

import json
import os
import sys

import numpy as np


def main(path: str) -> None:
  with open(path) as f:
    summary = json.load(f)
  diffs = {
    t["name"]: 100.0
    * (t["learned"]["test_accuracy"] - t["adam"]["best"]["test_accuracy"])
    for t in summary["tasks"]
  }
  values = np.asarray(list(diffs.values()))
  result = {
    "suite": summary["suite"],
    "points_learned_minus_adam": diffs,
    "tasks": len(values),
    "tasks_below_adam": int(np.sum(values < 0)),
    "median_points": float(np.median(values)),
    "lowest_points": float(values.min()),
    "highest_points": float(values.max()),
  }
  out = os.path.join(os.path.dirname(path), "accuracy.json")
  with open(out, "w") as f:
    json.dump(result, f, indent=1)
  print(
    json.dumps(
      {k: v for k, v in result.items() if k != "points_learned_minus_adam"}
    )
  )


if __name__ == "__main__":
  main(sys.argv[1])
