"""The task-kind cases of `lopt.bench`: what each kind of inner task costs.

One case per kind of configs/task_kinds.py (transformer, autoencoder,
regression, ResNet) and one for a whole family (configs/wide_generalist.py
by default), each through the production step
(`lopt.train.step.sharded_functions`), as `lopt.main` runs it:

* `inner_steps_per_sec`: perturbed inner steps per second over all groups;
* `flops_per_outer_step`: XLA's cost analysis of ONE inner step of each
  group (costing the step itself, not the scanned dispatch, whose loop body
  XLA counts once), times that group's trajectories and unroll length;
  `achieved_gflops` divides it by the measured outer-step time;
* the memory roofline, as for the digits cases (`measure.add_roofline`,
  against the digits cases' median bandwidth): the least bytes of an inner
  step of each group (`measure.inner_step_bytes`, from the shapes);
* where the time goes: each group's share of those FLOPs, and for a single
  kind the learned optimizer's share of one inner step's time, measured as
  1 - t(Adam) / t(learned) on the same model, batches and steps
  (`lopt.tasks.inner.train_model`, one trajectory, jitted).

Run in its own process by `lopt.bench.run.run_case`, like the other cases.
"""

from __future__ import annotations

import os
import statistics
import time

from lopt.bench import measure
from lopt.bench.cases import _load_config, _production, repo_config

#: The task kinds the `kinds` section benches, then the wide family.
TASK_KINDS = ("transformer", "autoencoder", "regression", "resnet")


def _config(spec: dict):
  """The case's config: a kind of configs/task_kinds.py, or a family file."""
  from lopt import experiment  # pylint: disable=g-import-not-at-top

  if spec.get("task_kind"):
    config = experiment.load_config(
      repo_config("task_kinds"), spec["task_kind"]
    )
    config.task.data_dir = spec.get("data_dir", "")
  else:
    config = _load_config(spec)
  config.estimator.num_particles = spec["num_particles"]
  config.estimator.unroll_length = spec["unroll_length"]
  config.outer.steps_per_dispatch = spec.get("steps_per_dispatch", 2)
  # Throughput does not depend on where particles sit in their episodes;
  # lockstep particles spare each case a T-step burn-in.
  config.estimator.step_unlocked = False
  if config.get("family"):
    config.family.normalizer = "none"  # no reference runs: not timed
  return config


def _lopt_time_share(exp, data, theta, steps: int = 50) -> float:
  """The learned optimizer's share of one trajectory's inner-step time."""
  import functools  # pylint: disable=g-import-not-at-top

  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  from lopt.learned import optimizers  # pylint: disable=g-import-not-at-top
  from lopt.tasks import inner  # pylint: disable=g-import-not-at-top

  group = exp.groups[0]
  key = jax.random.key(0)

  def seconds(tx):
    run = jax.jit(
      functools.partial(inner.train_model, group.task, tx, num_steps=steps)
    )
    return measure.median_seconds(run, data, key, reps=3)

  learned = seconds(optimizers.learned_optimizer(theta, exp.lopt, steps))
  return max(0.0, 1.0 - seconds(optax.adam(1e-3)) / learned)


def kinds_case(spec: dict) -> dict:
  """Throughput and FLOPs of one task kind, or of a whole family."""
  import jax  # pylint: disable=g-import-not-at-top

  config = _config(spec)
  exp, data, init_fn, steps_fn = _production(config)
  run_state = init_fn(data)
  # A host copy: the dispatches below donate (and so delete) run_state.
  theta = jax.device_get(run_state["theta"])
  key = jax.random.key(0)
  groups = {}
  for group in exp.groups:
    group_data = exp.group_data(data, group.name)
    system = exp.system(group_data, group.name)
    step = jax.jit(system.step).lower(theta, system.init(key), 0, key).compile()
    trajectories = 2 * group.spec.num_particles  # antithetic pairs
    groups[group.name] = {
      "model": group.spec.model,
      "inner_params": group.task.num_params,
      "flops_per_inner_step": measure.xla_flops(step),
      "min_bytes_per_inner_step": measure.inner_step_bytes(
        group.task, exp.lopt
      )["min_bytes"],
      "inner_steps_per_outer_step": trajectories
      * config.estimator.unroll_length,
    }
  start = time.perf_counter()
  compiled = steps_fn.lower(data, run_state).compile()
  compile_seconds = time.perf_counter() - start
  times = measure.dispatch_seconds(
    compiled, data, run_state, spec.get("reps", 5)
  )
  per_outer = statistics.median(times) / config.outer.steps_per_dispatch
  inner_steps = sum(g["inner_steps_per_outer_step"] for g in groups.values())
  flops = sum(
    g["flops_per_inner_step"] * g["inner_steps_per_outer_step"]
    for g in groups.values()
  )
  moved = sum(
    g["min_bytes_per_inner_step"] * g["inner_steps_per_outer_step"]
    for g in groups.values()
  )
  for g in groups.values():
    g["flops_share"] = (
      g["flops_per_inner_step"] * g["inner_steps_per_outer_step"] / flops
    )
  name = spec.get("task_kind") or os.path.basename(spec["config"])[:-3]
  result = {
    "name": f"kind_{name}_n{spec['num_particles']}_w{spec['unroll_length']}",
    "task_kind": name,
    "config": spec.get("config") or repo_config("task_kinds"),
    "num_particles_per_group": spec["num_particles"],
    "unroll_length": config.estimator.unroll_length,
    "groups": groups,
    "compile_seconds": compile_seconds,
    "outer_step_seconds": per_outer,
    "inner_steps_per_sec": inner_steps / per_outer,
    "flops_per_outer_step": flops,
    "achieved_gflops": flops / per_outer / 1e9,
    # Per inner step, averaged over the groups' steps: `add_roofline`'s
    # inputs, as for the digits cases.
    "flops_per_inner_step": flops / inner_steps,
    "min_bytes_per_inner_step": moved / inner_steps,
    "achieved_gbs": moved / per_outer / 1e9,
    "dispatch_seconds": times,
    "peak_rss_mb": measure.peak_rss_mb(),
  }
  if not exp.is_family:
    result["lopt_time_share"] = _lopt_time_share(
      exp, exp.group_data(data, exp.groups[0].name), theta
    )
  return result


def plan(quick: bool) -> list[dict]:
  """One `kinds` case per task kind, then the families users meta-train:
  configs/generalist.py's and configs/wide_generalist.py's.

  Args:
    quick: 4 particles a group, 2 timed dispatches and the seconds-long
      family of configs/tiny_kinds.py alone; else 8 and 5.
  """
  n, reps = (4, 2) if quick else (8, 5)
  specs = [
    dict(
      kind="kinds", task_kind=k, num_particles=n, unroll_length=10, reps=reps
    )
    for k in TASK_KINDS
  ]
  families = ["tiny_kinds"] if quick else ["generalist", "wide_generalist"]
  specs += [
    dict(
      kind="kinds",
      config=repo_config(name),
      num_particles=n,
      unroll_length=10,
      reps=reps,
    )
    for name in families
  ]
  return specs


def table_lines(cases: list[dict]) -> list[str]:
  lines = [
    "| kind | inner params | compile s | inner steps/s | MFLOP/outer step | "
    "GFLOP/s | bound, % roofline | learned optimizer's time share | "
    "largest FLOP share |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for c in cases:
    groups = c["groups"]
    params = sum(g["inner_params"] for g in groups.values())
    top = max(groups, key=lambda n: groups[n]["flops_share"])
    share = c.get("lopt_time_share")
    lines.append(
      f"| {c['task_kind']} | {params:,} | {c['compile_seconds']:.1f} | "
      f"{c['inner_steps_per_sec']:.0f} | {c['flops_per_outer_step'] / 1e6:.0f} "
      f"| {c['achieved_gflops']:.1f} | "
      + (
        f"{c['bound']}, {100 * c['roofline_fraction']:.0f} % | "
        if "roofline_fraction" in c
        else "- | "
      )
      + f"{'-' if share is None else f'{100 * share:.0f} %'} | "
      f"{top} {100 * groups[top]['flops_share']:.0f} % |"
    )
  return lines
