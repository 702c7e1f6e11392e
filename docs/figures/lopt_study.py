"""The learned-optimizer estimator study: NRES, PES, TES, FullES and GPES-K.

    .venv/bin/python docs/figures/lopt_study.py                 # ~2 h, 2 cores
    .venv/bin/python docs/figures/lopt_study.py --run_seconds=300 \\
        --sweep_seconds=100 --seeds=0,1,2,3,4          # a bigger machine

Meta-trains the papers' MLPLOpt on digits (configs/digits_mlp_study.py)
from scratch, in four phases, each through `lopt.compare` (so every curve
has total steps, sequential steps, seconds and the estimated parallel
seconds):

The `study` section of the config (configs/digits_mlp_study.py) names the
methods, the sweep's learning rates and the GPES periods.

1. pilot: each label runs `--pilot_steps` outer steps to measure its CPU
   seconds per outer step here (`train_seconds`, compilation excluded).
2. sweep: each method at every rate of `study.sweep_rates`, one seed,
   `--sweep_seconds` of CPU each; the rate with the lowest final
   meta-loss is the method's tuned rate (a best rate at the grid's edge
   grows that method's grid by a half-decade past it, up to
   `--max_grid_extensions` times), and the median seconds per outer
   step of the method's sweep runs replaces the pilot's.
3. main: each method at its tuned rate, `--seeds`, `--run_seconds` of CPU
   each (budgets in outer steps from the pilot's rates: equal CPU, not
   equal steps); then tuned Adam on the same held-out seeds (the
   `lopt.evaluate` sweep, constant schedule), the reference a learned
   optimizer has to beat.
4. gpes: GPES-K (W = 1, K in `study.gpes_periods`) at NRES's tuned rate
   scaled by the ratio of the windows (W = 1 against NRES's 10, so each
   inner step moves theta as far as under NRES; at NRES's own rate GPES
   with W = 1 diverges), `--gpes_seeds`, `--run_seconds` each (equal
   outer steps: K does not change the cost of a step).

Timed budgets are equal by intent, not by construction: a run's seconds
per step vary with the machine's load. So the main runs are also compared
at the CPU time every one of them reached (`at_equal_seconds`: each run's
meta-loss at its newest checkpoint within that time).

Writes `lopt_study_sweep.json` / `.png` (the sweep's final meta-loss
against the rate), `lopt_study.json` / `.png` (with an `adam` entry),
`lopt_study_gpes.json` / `.png` and the Markdown tables `lopt_study.md`
into `--output_dir`. The runs' workdirs go to `--workdir`; finished runs
there are reused, so an interrupted study resumes. `--plot_only` redraws
`lopt_study.png` and `lopt_study_sweep.png` from their JSON and runs
nothing.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging

REPO = os.path.dirname(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
sys.path.insert(0, REPO)

from lopt import evaluate, experiment, jsonio, plots  # noqa: E402
from lopt.compare import learned as compare_lopt  # noqa: E402
from lopt.compare import report as compare_report  # noqa: E402
from lopt.compare import run as compare  # noqa: E402
from lopt.compare import stats as compare_stats  # noqa: E402
from lopt.compare.budget import Budget  # noqa: E402
from lopt.learned import optimizers  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string(
  "config",
  os.path.join(REPO, "configs", "digits_mlp_study.py"),
  "The study's config (its `study` section names methods, rates, periods).",
)
flags.DEFINE_list(
  "methods",
  None,
  "Methods of the pilot, sweep and main phases; default: the config's "
  "study.methods.",
)
flags.DEFINE_float("run_seconds", 150.0, "CPU seconds of each main run.")
flags.DEFINE_float("sweep_seconds", 50.0, "CPU seconds of each sweep run.")
flags.DEFINE_integer(
  "max_grid_extensions",
  2,
  "Times a method's sweep grid may grow by a half-decade past a best rate "
  "at its edge.",
)
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of the main runs.")
flags.DEFINE_list("gpes_seeds", ["0", "1"], "Seeds of the GPES-K runs.")
flags.DEFINE_integer("pilot_steps", 20, "Outer steps of each pilot run.")
flags.DEFINE_list(
  "phases", ["pilot", "sweep", "main", "gpes"], "Phases to run, in order."
)
flags.DEFINE_string(
  "output_dir", os.path.join(REPO, "docs", "figures"), "Where results go."
)
flags.DEFINE_string("workdir", "/tmp/lopt_study", "The runs' workdirs.")
flags.DEFINE_bool(
  "plot_only",
  False,
  "Only redraw lopt_study.png and lopt_study_sweep.png from the JSON in "
  "--output_dir; runs nothing.",
)


def _outer_steps(seconds: float, rate: float, dispatch: int) -> int:
  """Outer steps (a multiple of `dispatch`) that take `seconds` at `rate`."""
  return dispatch * max(1, round(seconds / rate / dispatch))


def _sweep_label(method: str, lr: float) -> str:
  return f"{method}_lr{lr:.0e}"


def _next_rate(lr: float, up: bool) -> float:
  """The neighbour of `lr` on the 1, 3, 10, 30 ... grid (half-decades)."""
  exponent = math.floor(math.log10(lr) + 1e-9)
  mantissa = round(lr / 10**exponent)  # 1 or 3
  if up:
    return 3 * 10**exponent if mantissa == 1 else 10 ** (exponent + 1)
  return 10 ** (exponent - 1) * 3 if mantissa == 1 else 10**exponent


def tuned_rate(sweep, method: str, grid) -> float:
  """The rate of `grid` with the lowest final meta-loss of `method`."""
  finals = {
    lr: sweep["estimators"][_sweep_label(method, lr)]["summary"][
      "final_meta_loss"
    ]["mean"]
    for lr in grid
  }
  finals = {lr: v for lr, v in finals.items() if v is not None}
  return min(finals, key=finals.get)


def _with_labels(config, labels: dict[str, dict]) -> ml_collections.ConfigDict:
  """`config` with `labels` ({label: override fields}) added to overrides."""
  config = ml_collections.ConfigDict(config.to_dict())
  for label, fields in labels.items():
    config.overrides[label] = fields
  return config


def _run(config, labels, seeds, workdir, name=None, title=""):
  result = compare.compare(
    config, list(labels), seeds, Budget(outer_steps=1), workdir=workdir
  )
  if name:
    compare_report.write(result, FLAGS.output_dir, name, title=title)
  return result


def pilot(config) -> dict[str, float]:
  """Seconds per outer step of every label (methods and GPES), measured."""
  labels = (*config.study.methods, "gpes_k1")
  fields = {
    label: dict(config.overrides[label], budget_outer_steps=FLAGS.pilot_steps)
    for label in labels
  }
  result = _run(
    _with_labels(config, fields),
    fields,
    [0],
    os.path.join(FLAGS.workdir, "pilot"),
  )
  rates = {}
  for label, entry in result["estimators"].items():
    run = entry["runs"][0]
    rates[label] = run["seconds"][-1] / run["outer_steps"][-1]
  # Every GPES-K has GPES-1's cost per step.
  for k in config.study.gpes_periods:
    rates[f"gpes_k{k}"] = rates["gpes_k1"]
  return rates


def sweep_seconds_per_step(sweep, methods) -> dict[str, float]:
  """Per method: the median seconds per outer step of its sweep runs."""
  out = {}
  for method in methods:
    per_step = [
      run["seconds"][-1] / run["outer_steps"][-1]
      for entry in sweep["estimators"].values()
      if entry["settings"]["name"] == method
      for run in entry["runs"]
    ]
    if per_step:
      out[method] = float(np.median(per_step))
  return out


def adam_reference(config, seeds) -> dict:
  """Tuned Adam (constant rate, `lopt.evaluate`'s sweep) per seed."""
  per_seed = []
  for seed in seeds:
    settings = compare.settings(config, "nres")
    cfg = compare_lopt.run_config(config, settings, seed, 1, 1)
    data, dataset = experiment.load_data(cfg)
    exp = experiment.build(cfg, dataset)
    keys = experiment.eval_keys(cfg)

    @jax.jit
    def score(lr, data=data, exp=exp, keys=keys):
      tx = optimizers.adam_baseline(lr)
      losses = experiment.evaluate_optimizer(exp, data, tx, keys)["losses"]
      return jnp.mean(losses)

    sweep = [
      jsonio.finite_or_none(float(score(jnp.float32(lr))))
      for lr in evaluate.LEARNING_RATES
    ]
    finite = [(v, lr) for v, lr in zip(sweep, evaluate.LEARNING_RATES) if v]
    best, best_lr = min(finite)
    per_seed.append(
      {
        "seed": seed,
        "sweep": sweep,
        "best_learning_rate": best_lr,
        "mean_train_loss": best,
      }
    )
  return {
    "learning_rates": list(evaluate.LEARNING_RATES),
    "schedule": "constant",
    "per_seed": per_seed,
    "mean_train_loss": compare_stats.interval(
      [p["mean_train_loss"] for p in per_seed]
    ),
  }


def ratios_to_adam(result) -> dict:
  """Per label: final meta-loss / tuned Adam's, seed by seed, with interval."""
  adam = {p["seed"]: p["mean_train_loss"] for p in result["adam"]["per_seed"]}
  out = {}
  for label, entry in result["estimators"].items():
    values = [
      r["meta_loss"][-1] / adam[r["seed"]]
      if r["meta_loss"][-1] is not None
      else None
      for r in entry["runs"]
    ]
    out[label] = {"values": values, **compare_stats.interval(values)}
  return out


def at_equal_seconds(result) -> dict:
  """Per label: the meta-loss each run had at the CPU time all runs reached.

  The time is the shortest final `seconds` over every run of `result`; a
  run's meta-loss there is its newest checkpoint's at or before it (the
  theta it had then), so no curve is extrapolated.
  """
  runs = [r for e in result["estimators"].values() for r in e["runs"]]
  seconds = min(r["seconds"][-1] for r in runs)
  out = {"seconds": seconds, "estimators": {}}
  for label, entry in result["estimators"].items():
    values = []
    for r in entry["runs"]:
      reached = [i for i, s in enumerate(r["seconds"]) if s <= seconds]
      values.append(r["meta_loss"][reached[-1]])
    out["estimators"][label] = {
      "values": values,
      **compare_stats.interval(values),
    }
  return out


def gpes_learning_rate(config, nres_rate: float) -> float:
  """NRES's tuned rate times W_gpes / W_nres: the same step per inner step."""
  gpes = config.overrides[f"gpes_k{config.study.gpes_periods[0]}"]
  nres = config.overrides["nres"].get(
    "unroll_length", config.estimator.unroll_length
  )
  return nres_rate * gpes["unroll_length"] / nres


def adam_table(result) -> str:
  equal = result["at_equal_seconds"]
  lines = [
    "| estimator | final meta-loss / tuned Adam's (95 % interval) | "
    f"meta-loss at {equal['seconds']:.3g} CPU s | "
    "learning rate | outer steps | CPU seconds |",
    "|---|---|---|---|---|---|",
  ]
  for label, entry in result["estimators"].items():
    s = entry["summary"]
    lines.append(
      f"| {label} | {compare_report.fmt_interval(result['ratio_to_adam'][label])} | "
      f"{compare_report.fmt_interval(equal['estimators'][label])} | "
      f"{entry['settings']['learning_rate']:g} | "
      f"{s['total_outer_steps']['mean']:.4g} | "
      f"{s['total_seconds']['mean']:.3g} |"
    )
  adam = result["adam"]
  lines.append("")
  lines.append(
    "Tuned Adam: mean train loss "
    f"{compare_report.fmt_interval(adam['mean_train_loss'])}, learning rates "
    + ", ".join(f"{p['best_learning_rate']:g}" for p in adam["per_seed"])
  )
  return "\n".join(lines)


def main_title(result) -> str:
  return (
    "Learned optimizer (MLPLOpt) on digits, budgets of "
    f"{result['run_seconds']:g} s per run"
  )


def plot_main(result, path: str) -> str:
  """The main runs' curves (lopt.plots.comparison), titled by budget."""
  return plots.comparison(result, path, title=main_title(result))


def plot_sweep(sweep, path: str) -> str:
  """Final meta-loss against the outer learning rate, one line a method.

  The tuned rate (the lowest final meta-loss) of each method is ringed.
  """
  plt = plots.pyplot()
  fig, ax = plt.subplots(figsize=(6.4, 4.6))
  for method in sweep["config"]["study"]["methods"]:
    points = sorted(
      (e["settings"]["learning_rate"], e["summary"]["final_meta_loss"]["mean"])
      for e in sweep["estimators"].values()
      if e["settings"]["name"] == method
    )
    points = [(lr, v) for lr, v in points if v is not None]
    if not points:
      continue
    steps = next(
      e["budget"]["outer_steps"]
      for e in sweep["estimators"].values()
      if e["settings"]["name"] == method
    )
    (line,) = ax.plot(
      *zip(*points), marker="o", label=f"{method} ({steps} outer steps)"
    )
    best = min(points, key=lambda p: p[1])
    ax.plot(*best, marker="o", ms=14, mfc="none", color=line.get_color())
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("outer Adam learning rate")
  ax.set_ylabel("final meta-loss: eval mean train loss")
  seeds = ", ".join(str(s) for s in sweep["seeds"])
  ax.set_title(
    f"Outer learning-rate sweep, seed {seeds} (ringed: the tuned rate)",
    fontsize=10,
  )
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def gpes_title(result) -> str:
  rate = next(iter(result["estimators"].values()))["settings"]["learning_rate"]
  return f"GPES-K (W = 1) on digits, NRES's settings, outer rate {rate:g}"


def plot_gpes(result, path: str) -> str:
  return plots.comparison(result, path, title=gpes_title(result))


def replot():
  """--plot_only: the PNGs again from the committed JSON."""
  for name, draw in (
    ("lopt_study", plot_main),
    ("lopt_study_sweep", plot_sweep),
    ("lopt_study_gpes", plot_gpes),
  ):
    path = os.path.join(FLAGS.output_dir, f"{name}.json")
    if os.path.exists(path):
      with open(path) as f:
        draw(json.load(f), path[: -len(".json")] + ".png")
      logging.info("Redrew %s.png", name)


def main(argv):
  del argv
  if FLAGS.plot_only:
    replot()
    return
  os.makedirs(FLAGS.output_dir, exist_ok=True)
  os.makedirs(FLAGS.workdir, exist_ok=True)
  start = time.time()
  config = experiment.load_config(FLAGS.config)
  if FLAGS.methods:
    config.study.methods = tuple(FLAGS.methods)
  methods = tuple(config.study.methods)
  sweep_rates = tuple(config.study.sweep_rates)
  periods = tuple(config.study.gpes_periods)
  dispatch = config.outer.steps_per_dispatch
  seeds = [int(s) for s in FLAGS.seeds]
  state_path = os.path.join(FLAGS.workdir, "study_state.json")
  state = {}
  if os.path.exists(state_path):
    with open(state_path) as f:
      state = json.load(f)

  def save():
    jsonio.dump(state, state_path)

  if "pilot" in FLAGS.phases:
    state["seconds_per_outer_step"] = pilot(config)
    save()
  rates = state["seconds_per_outer_step"]

  if "sweep" in FLAGS.phases:
    grid = {method: list(sweep_rates) for method in methods}
    for _ in range(1 + FLAGS.max_grid_extensions):
      fields = {}
      for method in methods:
        steps = _outer_steps(FLAGS.sweep_seconds, rates[method], dispatch)
        for lr in grid[method]:
          fields[_sweep_label(method, lr)] = dict(
            config.overrides[method],
            learning_rate=lr,
            budget_outer_steps=steps,
          )
      sweep = _run(
        _with_labels(config, fields),
        fields,
        [seeds[0]],
        os.path.join(FLAGS.workdir, "sweep"),
        name="lopt_study_sweep",
        title="Learned optimizer (MLPLOpt, digits): outer learning-rate sweep",
      )
      tuned = {m: tuned_rate(sweep, m, grid[m]) for m in methods}
      # A best rate at the grid's edge may not be the best rate: the grid
      # grows past it, one half-decade at a time.
      edges = {
        m: lr for m, lr in tuned.items() if lr in (min(grid[m]), max(grid[m]))
      }
      if not edges:
        break
      for method, lr in edges.items():
        grid[method].append(_next_rate(lr, up=lr == max(grid[method])))
    plot_sweep(sweep, os.path.join(FLAGS.output_dir, "lopt_study_sweep.png"))
    state["tuned_learning_rate"] = tuned
    save()
  tuned = state["tuned_learning_rate"]
  # The sweep's runs are longer than the pilot's: their seconds per outer
  # step set the main budgets.
  sweep_path = os.path.join(FLAGS.output_dir, "lopt_study_sweep.json")
  if os.path.exists(sweep_path):
    with open(sweep_path) as f:
      rates.update(sweep_seconds_per_step(json.load(f), methods))

  tables = []
  if "main" in FLAGS.phases:
    fields = {
      method: dict(
        config.overrides[method],
        learning_rate=tuned[method],
        budget_outer_steps=_outer_steps(
          FLAGS.run_seconds, rates[method], dispatch
        ),
      )
      for method in methods
    }
    study = _with_labels(config, fields)
    result = compare.compare(
      study,
      list(methods),
      seeds,
      Budget(outer_steps=1),
      workdir=os.path.join(FLAGS.workdir, "main"),
    )
    result["adam"] = adam_reference(study, seeds)
    result["ratio_to_adam"] = ratios_to_adam(result)
    result["at_equal_seconds"] = at_equal_seconds(result)
    result["tuned_learning_rate"] = tuned
    result["seconds_per_outer_step"] = rates
    result["run_seconds"] = FLAGS.run_seconds
    compare_report.write(
      result, FLAGS.output_dir, "lopt_study", title=main_title(result)
    )
    tables += [
      "## Main: tuned rates, equal CPU",
      "",
      compare_report.format_table(result),
      "",
      adam_table(result),
    ]

  if "gpes" in FLAGS.phases:
    steps = _outer_steps(FLAGS.run_seconds, rates["gpes_k1"], dispatch)
    gpes_rate = gpes_learning_rate(config, tuned["nres"])
    fields = {
      f"gpes_k{k}": dict(
        config.overrides[f"gpes_k{k}"],
        learning_rate=gpes_rate,
        budget_outer_steps=steps,
      )
      for k in periods
    }
    result = compare.compare(
      _with_labels(config, fields),
      list(fields),
      [int(s) for s in FLAGS.gpes_seeds],
      Budget(outer_steps=1),
      workdir=os.path.join(FLAGS.workdir, "gpes"),
    )
    compare_report.write(
      result,
      FLAGS.output_dir,
      "lopt_study_gpes",
      title=gpes_title(result),
    )
    tables += ["", "## GPES-K, W = 1", "", compare_report.format_table(result)]

  if tables:
    with open(os.path.join(FLAGS.output_dir, "lopt_study.md"), "w") as f:
      f.write("\n".join(tables) + "\n")
  logging.info("Study done in %.0f s", time.time() - start)


if __name__ == "__main__":
  app.run(main)
