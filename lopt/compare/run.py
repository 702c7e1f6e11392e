"""Compare gradient estimators under one budget: meta-loss vs time and steps.

    python -m lopt.compare --config=configs/lorenz.py \
        --estimators=nres,pes,tes,full_es,tbptt --budget_steps=8e7 \
        --seeds=0,1,2 --output_dir=docs/figures
    python -m lopt.compare --config=configs/default.py \
        --estimators=nres,pes,tes --budget_outer_steps=200 \
        --workdir=/tmp/lopt_compare --output_dir=docs/figures

Every estimator starts from the same theta (for a given seed) and runs until
its budget is spent: `--budget_seconds` (wall-clock of the timed region),
`--budget_steps` (total inner unroll steps, the sum of the estimator's
`info["steps"]`: every antithetic member counted) or `--budget_outer_steps`.
Writes `<name>.json` and `<name>.png` into `--output_dir`: the meta-loss of
every (estimator, seed) run against total inner steps, sequential inner
steps (W per update for the online estimators, T for FullES) and wall-clock
seconds, and a plot of the mean over seeds with the min-max band. Estimator
labels are estimator names or names that `config.overrides.<label>` maps to
one with its own settings (e.g. `tbptt_w10`, or per-estimator learning
rates); a label's settings are built by `lopt.experiment` like any run's.

Two kinds of config, each with its runner:

* Toy systems (a config with a `system` section, e.g. configs/lorenz.py,
  configs/influence_balancing.py): `lopt.compare.toy`.
* Learned-optimizer configs (configs/default.py and the like: a config with
  a `task` section): `lopt.compare.learned`, one
  `lopt.train.train_and_evaluate` run per (estimator, seed).

Steps and seconds exclude the estimator's burn-in (the T-step warm-up of
step-unlocked particles in `init`); the JSON records its cost separately as
`burn_in_steps` (and `burn_in_seconds` for toy systems).

The statistics over seeds are `lopt.compare.stats`, the JSON, figure and
tables `lopt.compare.report`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np
from absl import flags, logging
from ml_collections import config_flags

from lopt import console, estimators, validation
from lopt.compare import learned as compare_lopt
from lopt.compare import toy as compare_toy
from lopt.compare.budget import BUDGET_FIELDS, Budget, label_budget
from lopt.compare.report import format_table, write
from lopt.compare.stats import CI_LEVEL, summarize, to_target

#: What the JSON says the meta-loss is, per kind of config.
META_LOSS_DEFINITIONS = {
  "toy": (
    "unperturbed objective at the current theta, evaluated outside "
    "the timed region: the {reduce} per-step loss of full episodes "
    "of the test system, averaged over {num_inits} test initial "
    "conditions"
  ),
  "lopt": (
    "eval/learned/mean_train_loss of each checkpointed theta, "
    "evaluated after training: fresh models trained for T steps on "
    "the held-out eval seeds with the learned optimizer, mean "
    "training loss"
  ),
}


def is_toy(config: ml_collections.ConfigDict) -> bool:
  """Whether the config describes a toy system (else a learned optimizer)."""
  return "system" in config


def settings(config: ml_collections.ConfigDict, label: str) -> dict[str, Any]:
  """The estimator and outer settings of one label, overrides applied.

  A label is an estimator name (`nres`, `pes`, ...) or any name that
  `config.overrides.<label>.name` maps to one (e.g. `tbptt_w10`). Fields of
  `config.overrides.<label>` replace those of `config.estimator` and
  `config.outer`; it may also give the label its own budget
  (`BUDGET_FIELDS`, e.g. `budget_outer_steps`), which replaces the run-wide
  one for that label.

  Raises:
    ValueError: for a label that names no estimator, or an unknown field.
  """
  fields = (
    validation.ESTIMATOR_FIELDS + validation.OUTER_FIELDS + tuple(BUDGET_FIELDS)
  )
  merged = {
    k: config.estimator[k]
    for k in validation.ESTIMATOR_FIELDS
    if k in config.estimator
  }
  merged.update(
    {k: config.outer[k] for k in validation.OUTER_FIELDS if k in config.outer}
  )
  merged["name"] = label
  overrides = config.get("overrides", None)
  if overrides is not None and label in overrides:
    extra = dict(overrides[label])
    unknown = sorted(set(extra) - set(fields))
    if unknown:
      raise validation.ConfigError(
        f"overrides.{label} has unknown fields {unknown}; "
        f"allowed: {list(fields)}"
      )
    merged.update(extra)
  if merged["name"] not in estimators.REGISTRY:
    raise validation.ConfigError(
      f"{label!r} is not an estimator (one of "
      f"{sorted(estimators.REGISTRY)}) and config.overrides.{label}.name "
      f"does not name one"
    )
  merged["label"] = label
  return merged


def compare(
  config: ml_collections.ConfigDict,
  labels: Sequence[str],
  seeds: Sequence[int],
  budget: Budget,
  workdir: str | None = None,
  budget_scale: float = 1.0,
) -> dict[str, Any]:
  """Runs every (label, seed) and returns the JSON-able comparison.

  Args:
    config: a toy-system or learned-optimizer config.
    labels: estimator labels, e.g. ["nres", "pes", "tes"].
    seeds: seeds; each label runs once per seed.
    budget: per-run budget, for labels without their own (`label_budget`).
    workdir: learned-optimizer configs only: where the runs' workdirs go
      (`<workdir>/<label>/seed<k>`); a temporary directory by default.
    budget_scale: every budget (also the labels' own) times this.

  Returns:
    {"kind", "budget", "budget_scale", "meta_loss_definition", "labels",
    "seeds", "config", "wall_seconds" (the whole comparison), "estimators":
    {label: {"settings", "budget", "runs": [curve per seed], "summary"}},
    "targets": [target loss, ...], "to_target": {label: [per target:
    {"target", axis: stats}]}} (see `to_target`).
  """
  start = time.perf_counter()
  toy = is_toy(config)
  result = {
    "kind": "toy" if toy else "lopt",
    "budget": dataclasses.asdict(budget),
    "budget_scale": float(budget_scale),
    "labels": list(labels),
    "seeds": [int(s) for s in seeds],
    "config": json.loads(config.to_json_best_effort()),
    "estimators": {},
  }
  if toy:
    ev = config.eval
    result["meta_loss_definition"] = META_LOSS_DEFINITIONS["toy"].format(
      reduce="final" if ev.get("reduce", "mean") == "last" else "mean",
      num_inits=ev.get("num_inits", 1),
    )
    evaluate = compare_toy.make_evaluator(config)
  else:
    result["meta_loss_definition"] = META_LOSS_DEFINITIONS["lopt"]
    workdir = workdir or tempfile.mkdtemp(prefix="lopt_compare_")
  progress = console.Progress(len(labels) * len(seeds), "compare")
  for label in labels:
    s = settings(config, label)
    own = label_budget(budget, s, budget_scale)
    runs = []
    runner = compare_toy.ToyRunner(config, label, s) if toy else None
    for seed in seeds:
      progress.step(f"{label} ({s['name']}), seed {seed}")
      if toy:
        runs.append(runner.run(int(seed), own, evaluate))
      else:
        run_dir = os.path.join(workdir, label, f"seed{seed}")
        runs.append(compare_lopt.run(config, s, int(seed), own, run_dir))
    result["estimators"][label] = {
      "settings": s,
      "budget": dataclasses.asdict(own),
      "runs": runs,
      "summary": summarize(runs),
    }
  if toy and "theta_true" in config:
    result["theta_true"] = [float(x) for x in np.ravel(config.theta_true)]
  result["targets"] = targets(config, result)
  result["to_target"] = {
    label: [to_target(entry["runs"], t) for t in result["targets"]]
    for label, entry in result["estimators"].items()
  }
  # Everything: compiling, burn-in, training, evaluation (the study's cost).
  result["wall_seconds"] = time.perf_counter() - start
  result["ci_level"] = CI_LEVEL
  return result


def targets(config: ml_collections.ConfigDict, result) -> list[float]:
  """The target meta-losses of `result`: fixed ones, then one near the best.

  `config.compare.targets` lists fixed targets (e.g. Lorenz's 60). With
  `config.compare.target_near_best = m` (> 0), one more target is
  (1 + m) x the best (lowest) mean final meta-loss of the labels: a level
  that the best label reaches at the end and that shows which others do.
  With `config.compare.target_progress = f` (in (0, 1]), one more is the
  loss f of the way from the start (the mean first meta-loss) down to that
  best final one: for objectives that move little relative to their size
  (learned optimizers), where (1 + m) x the best can lie above the start.
  Targets are rounded to 3 significant digits.
  """
  defaults = config.get("compare", ml_collections.ConfigDict())
  chosen = [float(t) for t in defaults.get("targets", ())]
  margin = float(defaults.get("target_near_best", 0.0))
  progress = float(defaults.get("target_progress", 0.0))
  entries = list(result["estimators"].values())
  finals = [e["summary"]["final_meta_loss"]["mean"] for e in entries]
  finals = [f for f in finals if f is not None]
  starts = [r["meta_loss"][0] for e in entries for r in e["runs"]]
  starts = [s for s in starts if s is not None and np.isfinite(s)]
  if margin > 0 and finals:
    chosen.append(float(f"{(1 + margin) * min(finals):.3g}"))
  if progress > 0 and finals and starts:
    start = float(np.mean(starts))
    chosen.append(float(f"{start - progress * (start - min(finals)):.3g}"))
  return chosen


# -- command line -------------------------------------------------------------


def define_flags() -> dict[str, flags.FlagHolder]:
  """The command-line flags (see `lopt.console.run_program`)."""
  return {
    "config": config_flags.DEFINE_config_file(
      "config",
      None,
      "A toy-system or learned-optimizer config file.",
      lock_config=False,
    ),
    "estimators": flags.DEFINE_list(
      "estimators",
      None,
      "Estimator labels; default: "
      "config.compare.estimators, else nres,pes,tes.",
    ),
    "seeds": flags.DEFINE_list(
      "seeds", None, "Seeds, e.g. 0,1,2; default: config.compare.seeds, else 0."
    ),
    "budget_seconds": flags.DEFINE_float(
      "budget_seconds", 0.0, "Per-run wall-clock budget (toy systems)."
    ),
    "budget_steps": flags.DEFINE_float(
      "budget_steps", 0.0, "Per-run budget of total inner unroll steps."
    ),
    "budget_outer_steps": flags.DEFINE_integer(
      "budget_outer_steps", 0, "Per-run budget of outer steps."
    ),
    "budget_scale": flags.DEFINE_float(
      "budget_scale",
      1.0,
      "Multiplies every budget, also the labels' own "
      "(config.overrides.<label>.budget_*): a scaled-down run of a preset.",
    ),
    "table": flags.DEFINE_string(
      "table", None, "Also write the Markdown tables to this file."
    ),
    "output_dir": flags.DEFINE_string(
      "output_dir", ".", "Where <name>.json and <name>.png go."
    ),
    "num_points": flags.DEFINE_integer(
      "num_points",
      0,
      "Evaluation points per run (0: the config's "
      "eval.num_points, or 10 for learned-optimizer configs).",
    ),
    "name": flags.DEFINE_string(
      "name", None, "Output file stem; default: the config's stem."
    ),
    "workdir": flags.DEFINE_string(
      "workdir",
      None,
      "Learned-optimizer configs: the runs' workdirs "
      "(<workdir>/<estimator>/seed<k>); a temporary directory by "
      "default. Finished runs there are reused.",
    ),
  }


def main(f: dict[str, Any]) -> None:
  config = f["config"]
  defaults = config.get("compare", ml_collections.ConfigDict())
  labels = f["estimators"] or list(
    defaults.get("estimators", ("nres", "pes", "tes"))
  )
  seeds = [int(s) for s in (f["seeds"] or defaults.get("seeds", (0,)))]
  if f["budget_seconds"] or f["budget_steps"] or f["budget_outer_steps"]:
    # A budget on the command line replaces the config's.
    budget = Budget(
      seconds=f["budget_seconds"],
      steps=f["budget_steps"],
      outer_steps=f["budget_outer_steps"],
    )
  else:
    budget = Budget(
      seconds=defaults.get("budget_seconds", 0.0),
      steps=defaults.get("budget_steps", 0.0),
      outer_steps=defaults.get("budget_outer_steps", 0),
    )
  if f["num_points"]:
    if is_toy(config):
      config.eval.num_points = f["num_points"]
    else:
      config.compare = ml_collections.ConfigDict(
        dict(defaults, num_points=f["num_points"])
      )
  name = (
    f["name"]
    or os.path.splitext(
      os.path.basename(config_flags.get_config_filename(flags.FLAGS["config"]))
    )[0]
  )
  try:
    result = compare(
      config,
      labels,
      seeds,
      budget,
      workdir=f["workdir"],
      budget_scale=f["budget_scale"],
    )
  except compare_lopt.Interrupted as e:
    sys.exit(f"Stopped: {e}")
  json_path, png_path = write(result, f["output_dir"], name)
  table = format_table(result)
  print(table)
  if f["table"]:
    with open(f["table"], "w") as fh:
      fh.write(table + "\n")
  logging.info("Wrote %s and %s", json_path, png_path)
