"""Train fresh models with a meta-trained optimizer and with tuned Adam.

    python -m lopt.evaluate --workdir=/tmp/lopt [--num_seeds=8]

Loads the newest checkpoint of the workdir and trains `num_seeds` new models
on held-out seeds for the meta-training horizon: with the learned optimizer,
and with Adam over a learning-rate sweep from 1e-4 to 1e-1 (three points per
decade), both constant and decayed linearly to zero. Every optimizer is
scored by `inner.train_model` on the same seeds and batches. The headline
number is the mean training loss over the horizon (the meta-objective);
final loss and test accuracy are reported beside it. Writes `eval.json` and
`eval.png` (loss curves of the learned optimizer and the best Adams).
"""

import json
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags

from lopt import export, optimizers, train

_WORKDIR = flags.DEFINE_string("workdir", None, "A meta-training workdir.")
_NUM_SEEDS = flags.DEFINE_integer("num_seeds", 8, "Models per optimizer.")
_NUM_STEPS = flags.DEFINE_integer(
  "num_steps", 0, "Training steps per model; 0 = the meta-training horizon."
)
_OUTPUT = flags.DEFINE_string(
  "output", "", "Directory for eval.json and eval.png; default: workdir."
)

#: Adam learning rates of the sweep: 1e-4 .. 1e-1, three per decade.
LEARNING_RATES = tuple(
  round(m * 10.0**e, 6) for e in range(-4, -1) for m in (1, 2, 5)
) + (0.1,)
SCHEDULES = ("constant", "linear")


def _rank(score: dict) -> tuple[bool, float]:
  """Sort key: finite losses first (a diverged run is never the best)."""
  return (not math.isfinite(score["mean_train_loss"]), score["mean_train_loss"])


def _scores(result) -> dict[str, float]:
  losses = np.asarray(result["losses"])
  return {
    "mean_train_loss": float(losses.mean()),
    "final_train_loss": float(losses[:, -10:].mean()),
    "test_accuracy": float(np.mean(result["test_accuracy"])),
    "test_loss": float(np.mean(result["test_loss"])),
  }


def evaluate(
  workdir: str, *, num_seeds: int = 8, num_steps: int = 0, output: str = ""
) -> dict:
  """Runs the comparison and writes eval.json and eval.png.

  Returns:
    The eval.json content: per optimizer the mean training loss over the
    horizon, the final training loss and the test accuracy; the full Adam
    sweeps with their best points; and the learned optimizer's ratio to the
    best Adam of each schedule (below 1 means the learned one is better).
  """
  theta, lopt_cfg, saved = export.load_theta(workdir)
  config = ml_collections.ConfigDict(saved["config"])
  config.eval.num_seeds = num_seeds
  num_steps = num_steps or config.inner.horizon
  config.inner.horizon = num_steps
  data, dataset = train.load_data(config)
  exp = train.build(config, dataset)
  keys = train.eval_keys(config)

  @jax.jit
  def learned(theta):
    tx = optimizers.learned_optimizer(theta, lopt_cfg, num_steps)
    return train.evaluate_optimizer(exp, data, tx, keys)

  result = learned(theta)
  summary = {
    "num_seeds": num_seeds,
    "num_steps": num_steps,
    "dataset": dataset.name,
    "learned": _scores(result),
  }
  curves = {"learned optimizer": np.asarray(result["losses"]).mean(0)}
  for schedule in SCHEDULES:
    run = jax.jit(
      lambda lr, s=schedule: train.evaluate_optimizer(
        exp, data, optimizers.adam_baseline(lr, num_steps, s), keys
      )
    )
    sweep, curves_of_sweep = [], []
    for lr in LEARNING_RATES:
      out = run(jnp.float32(lr))
      sweep.append(dict(_scores(out), learning_rate=lr))
      curves_of_sweep.append(np.asarray(out["losses"]).mean(0))
    best_index = min(range(len(sweep)), key=lambda i: _rank(sweep[i]))
    best, best_curve = sweep[best_index], curves_of_sweep[best_index]
    summary[f"adam_{schedule}"] = {"best": best, "sweep": sweep}
    summary["learned"][f"ratio_to_best_adam_{schedule}"] = (
      summary["learned"]["mean_train_loss"] / best["mean_train_loss"]
    )
    curves[f"Adam {schedule}, lr {best['learning_rate']:g}"] = best_curve

  output = output or workdir
  os.makedirs(output, exist_ok=True)
  with open(os.path.join(output, "eval.json"), "w") as f:
    json.dump(summary, f, indent=2)
  summary["plot"] = plot(
    curves,
    os.path.join(output, "eval.png"),
    title=f"{dataset.name}: {num_seeds} held-out seeds",
  )
  return summary


def plot(curves: dict[str, np.ndarray], path: str, title: str) -> str:
  """Writes the training-loss curves (smoothed) to a PNG; returns its path."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

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


def format_table(summary: dict) -> str:
  """The comparison as a Markdown table."""
  rows = [("learned optimizer", summary["learned"])]
  for schedule in SCHEDULES:
    best = summary[f"adam_{schedule}"]["best"]
    rows.append((f"Adam {schedule}, best lr {best['learning_rate']:g}", best))
  lines = [
    "| optimizer | mean train loss | final train loss | test acc |",
    "|---|---|---|---|",
  ]
  for name, s in rows:
    lines.append(
      f"| {name} | {s['mean_train_loss']:.4f} | "
      f"{s['final_train_loss']:.4f} | {s['test_accuracy']:.3f} |"
    )
  learned = summary["learned"]
  lines.append("")
  for schedule in SCHEDULES:
    lines.append(
      f"learned / best Adam {schedule}: "
      f"{learned[f'ratio_to_best_adam_{schedule}']:.3f}"
    )
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  summary = evaluate(
    _WORKDIR.value,
    num_seeds=_NUM_SEEDS.value,
    num_steps=_NUM_STEPS.value,
    output=_OUTPUT.value,
  )
  print(
    f"Mean training loss over {summary['num_steps']} steps, "
    f"{summary['num_seeds']} held-out seeds ({summary['dataset']}):"
  )
  print(format_table(summary))
  print(f"Loss curves: {summary['plot']}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
