"""The learned-optimizer runner of `lopt.compare`: one estimator, one seed.

Each (estimator, seed) runs `lopt.train.train_and_evaluate` in its own
workdir with the label's estimator and outer settings, its seed, and a
budget in outer steps; it checkpoints theta every interval and evaluates
nothing in the loop. Afterwards every checkpointed theta is scored, outside
the timed region, with the same function as the run's own evaluation
(`eval/learned/mean_train_loss`: fresh models trained for T steps on the
held-out eval seeds, mean training loss). Wall-clock is the run's own
`train_seconds` (its dispatches and checkpoint saves, not compilation or
evaluation), which `lopt.train.loop` logs at every log point; the compare
config logs at every checkpoint. A finished run of the same config already
in the workdir is reused, not rerun, and so is its scored curve
(`curve.json`); an interrupted one (SIGTERM) raises `Interrupted`, which
ends the comparison, and is resumed by the next.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from lopt import (
  checkpoint,
  experiment,
  export,
  jsonio,
  metrics,
  sharding,
  train,
  validation,
)
from lopt.compare import toy as compare_toy
from lopt.compare.budget import Budget
from lopt.learned import optimizers
from lopt.train import step as train_step


def run_config(
  config: ml_collections.ConfigDict,
  settings: Mapping[str, Any],
  seed: int,
  num_steps: int,
  interval: int,
) -> ml_collections.ConfigDict:
  """The `train_and_evaluate` config of one (estimator, seed) run."""
  cfg = copy.deepcopy(config)
  cfg.unlock()
  for k in validation.ESTIMATOR_FIELDS:
    if k in settings:
      cfg.estimator[k] = settings[k]
  for k in validation.OUTER_FIELDS:
    if k in settings:
      cfg.outer[k] = settings[k]
  cfg.seed = int(seed)
  cfg.outer.num_steps = num_steps
  cfg.checkpoint.every_steps = interval
  cfg.checkpoint.every_seconds = 0.0  # the curve's steps, and only those
  cfg.checkpoint.keep = num_steps // interval + 2
  cfg.log.every_steps = interval
  cfg.eval.every_steps = 0  # every checkpoint is evaluated afterwards
  for k in ("overrides", "compare"):
    if k in cfg:
      del cfg[k]
  return cfg


def _budget_steps(
  config, per_update: int, budget: Budget, num_points: int
) -> tuple[int, int]:
  """(outer steps, checkpoint interval), multiples of steps_per_dispatch."""
  if budget.seconds:
    raise ValueError(
      "--budget_seconds needs a toy-system config; for learned optimizers "
      "use --budget_outer_steps or --budget_steps."
    )
  dispatch = config.outer.steps_per_dispatch
  outer_steps = budget.outer_steps or math.ceil(budget.steps / per_update)
  if budget.outer_steps and budget.steps:
    outer_steps = min(outer_steps, math.ceil(budget.steps / per_update))
  outer_steps = dispatch * max(1, math.ceil(outer_steps / dispatch))
  every = int(config.get("compare", {}).get("eval_every_outer_steps", 0))
  if not every:
    every = math.ceil(outer_steps / num_points)
  interval = dispatch * max(1, round(every / dispatch))
  return outer_steps, min(interval, outer_steps)


class Interrupted(RuntimeError):
  """A run stopped before its budget (SIGTERM, preemption): not scored."""


def _saved_step(ckpt_dir: str, saved_config: dict) -> int | None:
  """The newest checkpoint's step if it is a run of exactly this config.

  `saved_config` is the run's config as JSON, as its checkpoints hold it.
  """
  if not os.path.isdir(ckpt_dir):
    return None
  try:
    meta, saved = checkpoint.load_meta(ckpt_dir)
  except (FileNotFoundError, ValueError, KeyError):
    return None
  if saved.get("config") != saved_config:
    return None
  return int(np.asarray(meta["step"]))


def run(
  config: ml_collections.ConfigDict,
  settings: Mapping[str, Any],
  seed: int,
  budget: Budget,
  workdir: str,
) -> dict[str, Any]:
  """Meta-trains a learned optimizer with one estimator; returns its curve.

  Args:
    config: a learned-optimizer config.
    settings: the label's estimator and outer settings
      (`lopt.compare.run.settings`).
    seed: the run's seed.
    budget: outer steps or total inner steps (not seconds).
    workdir: the run's workdir; a finished run of the same config there is
      reused.

  Returns:
    The curve: per checkpoint `outer_steps`, `steps` (total inner steps),
    `sequential_steps`, `seconds` (`train_seconds`), `parallel_seconds`
    (an estimate for a machine that runs every particle at once:
    sequential steps x `step_seconds`), `meta_loss`, `train_loss`,
    `grad_snr`; and `seed`, `workdir`, `burn_in_steps`, `steps_per_update`,
    `step_seconds` (`one_particle_step_seconds`).
  """
  num_points = int(config.get("compare", {}).get("num_points", 10))
  # The budget, the data and the scoring do not depend on the run's length.
  cfg = run_config(config, settings, seed, 1, 1)
  data, dataset = experiment.load_data(cfg)
  exp = experiment.build(cfg, dataset)
  est = exp.estimator(data)
  per_update = est.steps_per_estimate
  num_steps, interval = _budget_steps(config, per_update, budget, num_points)
  cfg = run_config(config, settings, seed, num_steps, interval)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  # The scored curve of a finished run, kept beside it: scoring every
  # checkpoint costs more than a short run's training.
  curve_path = os.path.join(workdir, "curve.json")
  saved_config = json.loads(cfg.to_json())
  saved_step = _saved_step(ckpt_dir, saved_config)
  if saved_step == num_steps:
    if os.path.exists(curve_path):
      with open(curve_path) as f:
        cached = json.load(f)
      if cached["config"] == saved_config:
        logging.info("Reusing the finished, scored run in %s", workdir)
        return cached["curve"]
    logging.info("Reusing the finished run in %s", workdir)
  else:
    if saved_step is None:  # another config's run, or none: start afresh
      shutil.rmtree(workdir, ignore_errors=True)
    # Otherwise an interrupted run of this config: train resumes it.
    state = train.train_and_evaluate(cfg, workdir)
    reached = int(sharding.to_host(state["step"]))
    if reached < num_steps:
      raise Interrupted(
        f"The run in {workdir} stopped at outer step {reached} of "
        f"{num_steps}; its checkpoint is kept, and running the comparison "
        "again resumes it."
      )
  logged = {}
  for row in metrics.read_metrics(workdir):
    if "train_seconds" in row:  # a resumed run repeats steps: keep the last
      logged[row["step"]] = row
  logged[0] = {"train_seconds": 0.0}

  # Every checkpointed theta (and the initial one), scored like the run's
  # own evaluation.
  keys = experiment.eval_keys(cfg)

  @jax.jit
  def score(data, theta):
    tx = optimizers.learned_optimizer(theta, exp.lopt, cfg.inner.horizon)
    losses = experiment.evaluate_optimizer(exp, data, tx, keys)["losses"]
    return jnp.mean(losses)

  with checkpoint.Checkpointer(
    ckpt_dir, every_steps=1, keep=cfg.checkpoint.keep
  ) as ckpt:
    steps = [s for s in ckpt.all_steps() if s in logged]
  points = [(0, float(score(data, train_step.initial_theta(exp))))]
  for step in steps:
    theta, _, _ = export.load_theta(workdir, step)
    points.append((step, float(score(data, theta))))
  sequential = [s * est.unroll_length for s, _ in points]
  step_seconds = one_particle_step_seconds(
    config, settings, seed, data, dataset
  )
  curve = {
    "seed": seed,
    "workdir": workdir,
    "outer_steps": [s for s, _ in points],
    "steps": [s * per_update for s, _ in points],
    "sequential_steps": sequential,
    "parallel_seconds": [n * step_seconds for n in sequential],
    "step_seconds": step_seconds,
    "seconds": [float(logged[s]["train_seconds"]) for s, _ in points],
    "meta_loss": [jsonio.finite_or_none(loss) for _, loss in points],
    "train_loss": [logged[s].get("meta_loss") for s, _ in points],
    "grad_snr": [logged[s].get("grad_snr") for s, _ in points],
    "burn_in_steps": est.burn_in_steps,
    "steps_per_update": per_update,
  }
  jsonio.dump({"config": saved_config, "curve": curve}, curve_path)
  return curve


def one_particle_step_seconds(
  config: ml_collections.ConfigDict,
  settings: Mapping[str, Any],
  seed: int,
  data,
  dataset,
) -> float:
  """Measured seconds of one inner step of one particle of this run.

  The label's estimator with a single particle, unsharded, timed by
  `lopt.compare.toy.one_particle_step_seconds`; runs that differ only in
  their seed or outer optimizer share one measurement.
  """
  cfg = run_config(config, dict(settings, num_particles=1), seed, 1, 1)
  # Measured once per process for every run with the same estimator and
  # inner task: the seed and the outer optimizer change the numbers that
  # flow through a step, not its cost.
  key = json.dumps(
    {k: cfg[k].to_dict() for k in ("task", "inner", "lopt", "estimator")},
    sort_keys=True,
    default=str,
  )
  if key not in _STEP_SECONDS:
    exp = experiment.build(cfg, dataset)
    est = experiment.make_estimator(cfg.estimator, exp.system(data))
    _STEP_SECONDS[key] = compare_toy.one_particle_step_seconds(
      est, train_step.initial_theta(exp), jax.random.key(seed)
    )
  return _STEP_SECONDS[key]


#: `one_particle_step_seconds` of the labels measured so far in this process.
_STEP_SECONDS: dict[str, float] = {}
