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

    python -m lopt.evaluate --workdir=/tmp/lopt --suite=heldout

scores it instead on a fixed suite of held-out tasks against Adam tuned per
task (`lopt.suite`; `heldout` or the one-minute `quick`), and writes
`suite_<name>.json`, `.md` and `.png`. Tuned-Adam results are cached in
`--adam_cache_dir`, so a second optimizer on the same suite skips Adam.
"""

import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags

from lopt import console, experiment, export, jsonio, plots, validation
from lopt.learned import optimizers
from lopt.suite import evaluation as suite_lib
from lopt.suite import report as suite_report
from lopt.suite import tasks as suite_tasks
from lopt.tasks import family

#: Adam learning rates of the sweep: 1e-4 .. 1e-1, three per decade.
LEARNING_RATES = tuple(
  round(m * 10.0**e, 6) for e in range(-4, -1) for m in (1, 2, 5)
) + (0.1,)
SCHEDULES = ("constant", "linear")


def _rank(score: dict) -> tuple[bool, float]:
  """Sort key: finite losses first (a diverged run is never the best)."""
  return (not math.isfinite(score["mean_train_loss"]), score["mean_train_loss"])


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
  if family.declared(config):
    # A generalist is scored here on its base task (`config.task`); the
    # held-out tasks are `--suite`'s.
    del config["family"]
  config.eval.num_seeds = num_seeds
  num_steps = num_steps or config.inner.horizon
  config.inner.horizon = num_steps
  data, dataset = experiment.load_data(config)
  exp = experiment.build(config, dataset)
  keys = experiment.eval_keys(config)

  @jax.jit
  def learned(theta):
    tx = optimizers.learned_optimizer(theta, lopt_cfg, num_steps)
    return experiment.evaluate_optimizer(exp, data, tx, keys)

  result = learned(theta)
  summary = {
    "num_seeds": num_seeds,
    "num_steps": num_steps,
    "dataset": dataset.name,
    "learned": experiment.summarize_eval(result),
  }
  curves = {"learned optimizer": np.asarray(result["losses"]).mean(0)}
  progress = console.Progress(len(SCHEDULES) * len(LEARNING_RATES), "Adam")
  for schedule in SCHEDULES:
    run = jax.jit(
      lambda lr, s=schedule: experiment.evaluate_optimizer(
        exp, data, optimizers.adam_baseline(lr, num_steps, s), keys
      )
    )
    sweep, curves_of_sweep = [], []
    for lr in LEARNING_RATES:
      progress.step(f"{schedule} lr {lr:g}")
      out = run(jnp.float32(lr))
      sweep.append(dict(experiment.summarize_eval(out), learning_rate=lr))
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
  jsonio.dump(summary, os.path.join(output, "eval.json"), indent=2)
  summary["plot"] = plots.loss_curves(
    curves,
    os.path.join(output, "eval.png"),
    title=f"{dataset.name}: {num_seeds} held-out seeds",
  )
  return summary


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


def define_flags() -> dict[str, flags.FlagHolder]:
  """The command-line flags (see `lopt.console.run_program`)."""
  return {
    "workdir": flags.DEFINE_string("workdir", None, "A meta-training workdir."),
    "num_seeds": flags.DEFINE_integer("num_seeds", 8, "Models per optimizer."),
    "num_steps": flags.DEFINE_integer(
      "num_steps", 0, "Training steps per model; 0 = the meta-training horizon."
    ),
    "output": flags.DEFINE_string(
      "output",
      "",
      "Directory for eval.json and eval.png (suite_<name>.* with --suite); "
      "default: workdir.",
    ),
    "suite": flags.DEFINE_string(
      "suite",
      "",
      "Score on this held-out suite against per-task tuned Adam instead "
      f"(one of {sorted(suite_tasks.SUITES)}); --num_seeds/--num_steps are "
      "then the suite's.",
    ),
    "adam_cache_dir": flags.DEFINE_string(
      "adam_cache_dir",
      suite_lib.DEFAULT_ADAM_CACHE_DIR,
      "With --suite: cache of tuned-Adam results; '' turns it off.",
    ),
  }


def run_suite(f: dict) -> None:
  """`--suite`: the held-out suite, its table and where the outputs went.

  `--workdir` may also name an optimizer shipped with lopt (`--workdir=
  generalist`); its outputs then need `--output`.
  """
  validation.check_choice("--suite", f["suite"], suite_tasks.SUITES)
  learned = f["workdir"]
  if export.is_shipped(learned):
    if not f["output"]:
      raise validation.ConfigError(
        f"--output is required with a shipped optimizer (--workdir={learned})"
      )
    learned = export.load_shipped(learned)[:2]
  summary = suite_lib.evaluate_suite(
    learned,
    f["suite"],
    output=f["output"] or f["workdir"],
    adam_cache_dir=f["adam_cache_dir"] or None,
  )
  print(suite_report.format_table(summary))
  print()
  print(suite_report.summary_line(summary))
  print()
  print(suite_report.loss_lines(summary))
  paths = summary["outputs"]
  print(
    f"Outputs ({console.duration(summary['seconds'])}): {paths['md']}, "
    f"{paths['json']}, {paths['png']}"
  )


def main(f: dict) -> None:
  if f.get("suite"):
    run_suite(f)
    return
  summary = evaluate(
    f["workdir"],
    num_seeds=f["num_seeds"],
    num_steps=f["num_steps"],
    output=f["output"],
  )
  print(
    f"Mean training loss over {summary['num_steps']} steps, "
    f"{summary['num_seeds']} held-out seeds ({summary['dataset']}):"
  )
  print(format_table(summary))
  output = f["output"] or f["workdir"]
  print(f"Loss curves: {summary['plot']}; numbers: {output}/eval.json")


if __name__ == "__main__":
  console.run_program(main, define_flags, required=["workdir"])
