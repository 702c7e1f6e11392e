"""The family case of `lopt.bench`: a task family against one task.

A family of three tasks of about equal cost (the base config's task under
each of `FAMILY_ACTIVATIONS`) against that task alone with the same total
number of trajectories, both through the production step
(`lopt.train.step.sharded_functions`): inner steps/s, compile time,
run-state bytes per group, and XLA's memory analysis at several particle
counts with a linear fit. Equal trajectories and near-equal cost per step
make the throughput ratio the overhead of running a family, nothing else.
Run in its own process by `lopt.bench.run.run_case`, like the cases of
`lopt.bench.cases`.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

from lopt.bench import measure
from lopt.bench.cases import _load_config, _production, linear_fit, tree_bytes

#: The family section's three tasks: the base config's task under each of
#: these activations (the same shapes and matmuls, so about the same cost
#: per step); the single task it is compared with is the base task itself.
FAMILY_ACTIVATIONS = ("gelu", "relu", "tanh")


def run_state_bytes(exp, abstract_state) -> dict:
  """A run state's bytes: in all, per task group, and shared by the groups.

  Args:
    exp: the experiment (`lopt.experiment.Experiment`).
    abstract_state: its run state (`jax.eval_shape` of `init_run_state`),
      or the state itself.

  Returns:
    `total`; `groups`, each group's estimator state by task name (the single
    task's is `lopt.tasks.family.SINGLE`); `shared`: the rest (theta, the outer
    optimizer's state, the step and the key), which no group owns.
  """
  estimator_state = abstract_state["estimator_state"]
  if exp.is_family:
    groups = {g.name: tree_bytes(estimator_state[g.name]) for g in exp.groups}
  else:
    groups = {exp.groups[0].name: tree_bytes(estimator_state)}
  rest = {k: v for k, v in abstract_state.items() if k != "estimator_state"}
  return {
    "total": tree_bytes(abstract_state),
    "groups": groups,
    "shared": tree_bytes(rest),
  }


def abstract_run_state(config):
  """`(exp, data, steps_fn, abstract_state)` of `config`, nothing compiled."""
  import jax  # pylint: disable=g-import-not-at-top

  exp, data, init_fn, steps_fn = _production(config)
  return exp, data, steps_fn, jax.eval_shape(init_fn, data)


def xla_memory(compiled) -> dict[str, int] | None:
  """XLA's buffer sizes of a compiled program (None where not reported).

  `total_bytes` = arguments + outputs - aliased (donated buffers that the
  outputs reuse) + temporaries: what the program holds while it runs.
  """
  stats = compiled.memory_analysis()
  if stats is None:
    return None
  memory = {
    "argument_bytes": int(stats.argument_size_in_bytes),
    "output_bytes": int(stats.output_size_in_bytes),
    "alias_bytes": int(stats.alias_size_in_bytes),
    "temp_bytes": int(stats.temp_size_in_bytes),
  }
  memory["total_bytes"] = (
    memory["argument_bytes"]
    + memory["output_bytes"]
    - memory["alias_bytes"]
    + memory["temp_bytes"]
  )
  return memory


def family_configs(spec: dict, particles: int):
  """The family section's `(single, family)` configs.

  Both start from `spec['config']` (NRES, `spec['unroll_length']`,
  `spec['steps_per_dispatch']` outer steps a dispatch, lockstep particles
  as in the digits cases, any family of that config dropped). The family
  has one task per `FAMILY_ACTIVATIONS` entry, the base task under that
  activation, `particles` particles each, losses not normalised (the
  normaliser does not change the cost, and `adam` would train reference
  runs first); the single task is the base task with as many particles as
  the family has in all.
  """
  import ml_collections  # pylint: disable=g-import-not-at-top

  configs = []
  for is_family in (False, True):
    config = _load_config(spec)
    if "family" in config:
      del config["family"]
    config.estimator.name = "nres"
    config.estimator.unroll_length = spec["unroll_length"]
    config.estimator.step_unlocked = False
    config.outer.steps_per_dispatch = spec["steps_per_dispatch"]
    config.estimator.num_particles = particles * (
      1 if is_family else len(FAMILY_ACTIVATIONS)
    )
    if is_family:
      config.family = ml_collections.ConfigDict()
      config.family.normalizer = "none"
      config.family.tasks = ml_collections.ConfigDict(
        {
          a: ml_collections.ConfigDict(dict(activation=a))
          for a in FAMILY_ACTIVATIONS
        }
      )
    configs.append(config)
  return tuple(configs)


def _inner_steps_per_dispatch(exp, data) -> int:
  """Perturbed inner steps of all trajectories of one dispatch."""
  est = exp.estimator(data)
  groups = [e for _, e, _ in est.groups] if exp.is_family else [est]
  steps = sum(e.members * e.num_particles * e.unroll_length for e in groups)
  return steps * exp.config.outer.steps_per_dispatch


def _group_step_flops(exp, data, theta, cache: dict) -> dict[str, float]:
  """XLA's FLOPs of one inner step of one trajectory, per task group.

  `cache` maps a task (its spec without name, particles and weight, none of
  which changes a step) to its count, so that a task is compiled once.
  """
  import jax  # pylint: disable=g-import-not-at-top

  flops = {}
  for group in exp.groups:
    task = dataclasses.replace(group.spec, name="", num_particles=0, weight=0)
    if task not in cache:
      system = exp.system(exp.group_data(data, group.name), group.name)
      key = jax.random.key(0)
      step = jax.jit(system.step).lower(theta, system.init(key), 0, key)
      cache[task] = measure.xla_flops(step.compile())
    flops[group.name] = cache[task]
  return flops


def family_case(spec: dict) -> dict:
  """A 3-task family against one task with as many trajectories.

  Throughput: `spec['particles']` particles per family task against
  3 x that on the single task (`family_configs`), both the production
  program (`lopt.train.step.sharded_functions`' steps function) compiled
  ahead of time, then `spec['reps']` timed dispatches of each, interleaved
  so that drift in the machine's load hits both alike. `ratio` is the family's
  median inner steps/s over the single task's, `ratio_min`/`ratio_max` the
  range of the per-repeat ratios (family over the single run just
  before it).

  Memory: at each of `spec['memory_particles']` particles per task, the
  family's run-state bytes (from `jax.eval_shape`, per group), the single
  task's at as many particles in all, and, where `spec['compile_memory']`
  (always at the throughput count, compiled anyway), XLA's memory analysis
  of the compiled steps function; each with a line fitted against the
  total particle count and its largest relative residual.
  """
  import jax  # pylint: disable=g-import-not-at-top

  n = spec["particles"]
  programs = {}
  for label, config in zip(("single", "family"), family_configs(spec, n)):
    exp, data, init_fn, steps_fn = _production(config)
    run_state = init_fn(data)
    start = time.perf_counter()
    compiled = steps_fn.lower(data, run_state).compile()
    compile_seconds = time.perf_counter() - start
    run_state, _ = compiled(data, run_state)  # warm-up
    jax.block_until_ready(run_state)
    programs[label] = dict(
      exp=exp,
      data=data,
      compiled=compiled,
      run_state=run_state,
      compile_seconds=compile_seconds,
      times=[],
    )
  for _ in range(spec["reps"]):
    for program in programs.values():
      start = time.perf_counter()
      program["run_state"], _ = program["compiled"](
        program["data"], program["run_state"]
      )
      jax.block_until_ready(program["run_state"])
      program["times"].append(time.perf_counter() - start)

  results, flops_cache = {}, {}
  for label, program in programs.items():
    exp, data = program["exp"], program["data"]
    steps = _inner_steps_per_dispatch(exp, data)
    rates = [steps / t for t in program["times"]]
    theta = program["run_state"]["theta"]
    flops = _group_step_flops(exp, data, theta, flops_cache)
    groups = {
      g.name: {
        "hidden": list(g.spec.hidden),
        "activation": g.spec.activation,
        "batch_size": g.spec.batch_size,
        "num_particles": g.spec.num_particles,
        "flops_per_inner_step": flops[g.name],
      }
      for g in exp.groups
    }
    particles = sum(g.spec.num_particles for g in exp.groups)
    results[label] = {
      "num_particles": particles,
      "trajectories": 2 * particles,
      "groups": groups,
      "compile_seconds": program["compile_seconds"],
      "inner_steps_per_dispatch": steps,
      "inner_steps_per_sec": statistics.median(rates),
      "inner_steps_per_sec_min": min(rates),
      "inner_steps_per_sec_max": max(rates),
      "dispatch_seconds": program["times"],
      # Every group has as many trajectories: the plain mean is the
      # family's cost per step.
      "flops_per_inner_step": statistics.mean(flops.values()),
      "state_bytes": run_state_bytes(exp, program["run_state"]),
      "xla_memory": xla_memory(program["compiled"]),
      # The dataset's arrays, one argument per task: tasks on the same data
      # share its buffers, but XLA's argument bytes count each.
      "data_bytes": tree_bytes(data),
    }
  single, fam = results["single"], results["family"]
  paired = [
    s / f for s, f in zip(single["dispatch_seconds"], fam["dispatch_seconds"])
  ]  # equal work per dispatch: the rate ratio is the time ratio inverted
  throughput = {
    "particles_per_task": n,
    "unroll_length": spec["unroll_length"],
    "steps_per_dispatch": spec["steps_per_dispatch"],
    "timed_dispatches": spec["reps"],
    "single": single,
    "family": fam,
    "ratio": fam["inner_steps_per_sec"] / single["inner_steps_per_sec"],
    "ratio_paired": paired,
    "ratio_min": min(paired),
    "ratio_max": max(paired),
    "flops_ratio": fam["flops_per_inner_step"] / single["flops_per_inner_step"],
    "target_ratio": 0.85,
  }
  throughput["meets_target"] = throughput["ratio"] >= throughput["target_ratio"]
  peak_rss = measure.peak_rss_mb()
  return {
    "name": "family",
    "tasks": list(FAMILY_ACTIVATIONS),
    "throughput": throughput,
    "memory": _family_memory(spec, fam),
    "peak_rss_mb": peak_rss,
    "device_peak_mb": measure.device_peak_mb(),
  }


def _family_memory(spec: dict, measured: dict) -> dict:
  """The memory half of `family_case`; `measured` is the timed family."""
  points = []
  for n in sorted(set(spec["memory_particles"])):
    single_config, family_config = family_configs(spec, n)
    exp, data, steps_fn, abstract = abstract_run_state(family_config)
    point = {
      "particles_per_task": n,
      "total_particles": sum(g.spec.num_particles for g in exp.groups),
      "state_bytes": run_state_bytes(exp, abstract),
      "single_state_bytes": tree_bytes(abstract_run_state(single_config)[3]),
      "xla_memory": None,
    }
    if n == spec["particles"]:
      point["xla_memory"] = measured["xla_memory"]
    elif spec.get("compile_memory", True):
      point["xla_memory"] = xla_memory(steps_fn.lower(data, abstract).compile())
    points.append(point)

  def fit(value):
    xy = [(p["total_particles"], value(p)) for p in points]
    xy = [(x, y) for x, y in xy if y is not None]
    return linear_fit(*zip(*xy)) if len({x for x, _ in xy}) >= 3 else None

  return {
    "points": points,
    "state_fit": fit(lambda p: p["state_bytes"]["total"]),
    "xla_total_fit": fit(
      lambda p: p["xla_memory"] and p["xla_memory"]["total_bytes"]
    ),
    "xla_temp_fit": fit(
      lambda p: p["xla_memory"] and p["xla_memory"]["temp_bytes"]
    ),
  }
