"""How different the per-step losses of a family's tasks are, and after the
`adam` normaliser, from a finished meta-training run.

    python docs/family/loss_scales.py --workdir=/tmp/wide \
        --output=docs/family/wide/loss_scales.json

Reads the run's checkpoint config (each task's normaliser scale L_ref:
tuned Adam's mean training loss over its horizon) and its metrics.jsonl
(each task's mean per-step loss as the estimator saw it, `<task>/meta_loss`,
at every log point), and writes per task: L_ref, the normalised loss over
the run, and the raw loss it stands for (normalised x L_ref); then the
ratio of the largest to the smallest across tasks, raw and normalised. A
family whose raw losses span orders of magnitude (a 256-way next-byte
cross-entropy beside a pixel MSE) is comparable after normalisation when
that ratio is near 1.
"""

import json
import os
import sys

import numpy as np
from absl import app, flags

REPO = os.path.dirname(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
sys.path.insert(0, REPO)

from lopt import checkpoint, metrics  # noqa: E402

_WORKDIR = flags.DEFINE_string(
  "workdir", None, "A family's meta-training workdir."
)
_OUTPUT = flags.DEFINE_string(
  "output", "docs/family/wide/loss_scales.json", "Where the JSON goes."
)


def main(argv) -> None:
  del argv
  _, saved = checkpoint.load_meta(os.path.join(_WORKDIR.value, "checkpoints"))
  scales = {n: v["scale"] for n, v in saved["loss_normalization"].items()}
  rows = [r for r in metrics.read_metrics(_WORKDIR.value) if "meta_loss" in r]
  tasks = {}
  for name, scale in sorted(scales.items()):
    normalised = float(np.mean([r[f"{name}/meta_loss"] for r in rows]))
    tasks[name] = {
      "reference_loss": scale,
      "normalised_loss": normalised,
      "raw_loss": normalised * scale,
    }
  raw = [t["raw_loss"] for t in tasks.values()]
  norm = [t["normalised_loss"] for t in tasks.values()]
  result = {
    "normalizer": saved["config"]["family"]["normalizer"],
    "log_points": [r["step"] for r in rows],
    "tasks": tasks,
    "raw_max_over_min": max(raw) / min(raw),
    "normalised_max_over_min": max(norm) / min(norm),
  }
  os.makedirs(os.path.dirname(_OUTPUT.value), exist_ok=True)
  with open(_OUTPUT.value, "w") as f:
    json.dump(result, f, indent=1)
  print(
    f"raw losses span {result['raw_max_over_min']:.0f}x; normalised "
    f"{result['normalised_max_over_min']:.2f}x"
  )


if __name__ == "__main__":
  app.run(main)
