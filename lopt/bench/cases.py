"""The cases of `lopt.bench`: one measurement each, run in its own process.

Every case times the production program
(`lopt.train.step.sharded_functions`, what `lopt.main` runs) on configs
loaded by path, so the numbers are those of real meta-training, not of a
stand-in. `lopt.bench.run.run_case` starts each in a fresh process, so that
its compile time and peak resident memory are its own; `lopt.bench.run`'s
docstring says what each figure means.
"""

from __future__ import annotations

import math
import os
import statistics
import tempfile
import time
from typing import Any, NamedTuple

from lopt.bench import measure

#: The repository root: its configs/ are the bench's defaults.
REPO = os.path.dirname(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)


def repo_config(name: str) -> str:
  """The path of `configs/<name>.py` in the repository."""
  return os.path.join(REPO, "configs", f"{name}.py")


def _load_config(spec: dict):
  from lopt import (
    experiment,  # pylint: disable=g-import-not-at-top
  )

  config = experiment.load_config(spec.get("config") or repo_config("default"))
  config.task.data_dir = spec.get("data_dir", "")
  return config


def _digits_config(spec: dict):
  config = _load_config(spec)
  config.estimator.name = spec["estimator"]
  config.estimator.num_particles = spec["num_particles"]
  config.estimator.unroll_length = spec["unroll_length"]
  config.lopt.kind = spec["lopt"]
  if spec.get("activation_dtype"):
    config.lopt.activation_dtype = spec["activation_dtype"]
  # Enough work per dispatch that dispatch overhead does not dominate.
  config.outer.steps_per_dispatch = max(1, 100 // spec["unroll_length"])
  # Throughput does not depend on where particles sit in their episodes;
  # lockstep particles spare each case a T-step burn-in.
  config.estimator.step_unlocked = False
  return config


def _production(config):
  """What `lopt.main` builds: data, experiment and its jitted functions."""
  from lopt import (
    experiment,  # pylint: disable=g-import-not-at-top
    validation,
  )
  from lopt.train import step as train_step

  validation.check_config(config)
  data, dataset = experiment.load_data(config)
  exp = experiment.build(config, dataset)
  init_fn, steps_fn, _, _ = train_step.sharded_functions(exp, data)
  return exp, data, init_fn, steps_fn


def digits_case(spec: dict) -> dict:
  """Throughput of the digits learned-optimizer task under one estimator."""
  import jax  # pylint: disable=g-import-not-at-top

  reps = spec.get("reps", 5)
  config = _digits_config(spec)
  exp, data, init_fn, steps_fn = _production(config)
  run_state = init_fn(data)

  # FLOPs of one inner step of one trajectory.
  system = exp.system(data)
  theta = run_state["theta"]
  key = jax.random.key(0)
  inner_state = system.init(key)
  step = jax.jit(system.step).lower(theta, inner_state, 0, key).compile()
  flops = measure.xla_flops(step)

  start = time.perf_counter()
  compiled = steps_fn.lower(data, run_state).compile()
  compile_seconds = time.perf_counter() - start
  times = measure.dispatch_seconds(compiled, data, run_state, reps)
  per_dispatch = statistics.median(times)
  est = exp.estimator(data)
  k = config.outer.steps_per_dispatch
  inner_steps = est.members * est.num_particles * est.unroll_length * k
  rate = inner_steps / per_dispatch
  moved = measure.inner_step_bytes(exp.task, exp.lopt)
  result = {
    "name": (
      f"digits_{spec['lopt']}_{spec['estimator']}"
      f"_n{spec['num_particles']}_w{spec['unroll_length']}"
      + ("_bf16" if exp.lopt.activation_dtype == "bfloat16" else "")
    ),
    "activation_dtype": exp.lopt.activation_dtype,
    "estimator": spec["estimator"],
    "lopt": spec["lopt"],
    "lopt_params": sum(x.size for x in jax.tree.leaves(theta)),
    "inner_params": exp.task.num_params,
    "num_particles": spec["num_particles"],
    "trajectories": est.members * est.num_particles,
    "unroll_length": spec["unroll_length"],
    "compile_seconds": compile_seconds,
    "inner_steps_per_sec": rate,
    "outer_iters_per_sec": k / per_dispatch,
    "flops_per_inner_step": flops,
    "analytic_matmul_flops": measure.analytic_matmul_flops(
      exp.task, exp.lopt, theta, config.task.batch_size
    ),
    "achieved_gflops": rate * flops / 1e9,
    "min_bytes_per_inner_step": moved["min_bytes"],
    "state_bytes_per_inner_step": moved["state_bytes"],
    "inner_step_bytes": moved,
    "achieved_gbs": rate * moved["min_bytes"] / 1e9,
    "peak_rss_mb": measure.peak_rss_mb(),
    "rss_mb": measure.rss_mb(),
    "device_peak_mb": measure.device_peak_mb(),
    "timed_dispatches": reps,
    "dispatch_seconds": times,
  }
  # Last, so that its arrays count in no memory figure above.
  result["memory_bandwidth_gbs"] = measure.memory_bandwidth_gbs()
  return result


def lorenz_case(spec: dict) -> dict:
  """NRES on Lorenz parameter learning (NRES paper settings)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from lopt import estimators, systems  # pylint: disable=g-import-not-at-top

  system = systems.Lorenz(horizon=spec.get("horizon", 2000))
  est = estimators.NRES(
    system,
    num_particles=spec["num_particles"],
    unroll_length=spec["unroll_length"],
    sigma=0.04,
  )
  theta = jnp.asarray(systems.lorenz.INIT_THETA)
  state = jax.jit(est.init)(theta, jax.random.key(0))
  key = jax.random.key(1)
  flops = measure.xla_flops(
    jax.jit(system.step).lower(theta, system.init(key), 0, key).compile()
  )
  estimate = jax.jit(est.estimate)
  start = time.perf_counter()
  compiled = estimate.lower(theta, state, key).compile()
  compile_seconds = time.perf_counter() - start
  times = []
  for i in range(spec.get("reps", 5) + 1):
    start = time.perf_counter()
    grad, state, _ = compiled(theta, state, jax.random.fold_in(key, i))
    jax.block_until_ready((grad, state))
    times.append(time.perf_counter() - start)
  per_call = statistics.median(times[1:])
  rate = 2 * est.num_particles * est.unroll_length / per_call
  return {
    "name": f"lorenz_nres_n{est.num_particles}_w{est.unroll_length}",
    "estimator": "nres",
    "num_particles": est.num_particles,
    "trajectories": 2 * est.num_particles,
    "unroll_length": est.unroll_length,
    "compile_seconds": compile_seconds,
    "inner_steps_per_sec": rate,
    "outer_iters_per_sec": 1 / per_call,
    "flops_per_inner_step": flops,
    "achieved_gflops": rate * flops / 1e9,
    "peak_rss_mb": measure.peak_rss_mb(),
  }


class _TimedRun(NamedTuple):
  """What `_meta_train_for` did."""

  exp: Any
  config: Any
  data: Any
  theta0: Any  # theta before the first outer step
  run_state: Any  # after the last
  outer_steps: int
  # After every dispatch: (seconds since start, current RSS in MB).
  samples: list[tuple[float, float]]


def _meta_train_for(
  seconds: float, spec: dict, min_dispatches: int = 1
) -> _TimedRun:
  """Meta-trains the config `spec['config']` for `seconds` of wall-clock.

  The clock starts before data loading, so compilation counts. At least
  `min_dispatches` dispatches run, however long they take.
  """
  import jax  # pylint: disable=g-import-not-at-top

  start = time.perf_counter()
  config = _load_config(spec)
  exp, data, init_fn, steps_fn = _production(config)
  run_state = init_fn(data)
  k = config.outer.steps_per_dispatch
  theta0 = jax.tree.map(lambda x: x.copy(), run_state["theta"])  # donated below
  outer_steps, samples = 0, []
  while time.perf_counter() - start < seconds or len(samples) < min_dispatches:
    run_state, _ = steps_fn(data, run_state)
    jax.block_until_ready(run_state)
    outer_steps += k
    samples.append((time.perf_counter() - start, measure.rss_mb()))
  return _TimedRun(exp, config, data, theta0, run_state, outer_steps, samples)


def budget_case(spec: dict) -> dict:
  """Meta-trains the default config for a wall-clock budget, then scores it."""
  import jax  # pylint: disable=g-import-not-at-top

  from lopt import (
    experiment,  # pylint: disable=g-import-not-at-top
  )
  from lopt.learned import optimizers

  budget = spec["seconds"]
  run = _meta_train_for(budget, spec)
  config = run.config
  keys = experiment.eval_keys(config)

  @jax.jit
  def score(theta):
    tx = optimizers.learned_optimizer(theta, run.exp.lopt, config.inner.horizon)
    losses = experiment.evaluate_optimizer(run.exp, run.data, tx, keys)
    return losses["losses"].mean()

  return {
    "name": "budget_60s",
    "estimator": config.estimator.name,
    "lopt": config.lopt.kind,
    "num_particles": config.estimator.num_particles,
    "unroll_length": config.estimator.unroll_length,
    "budget_seconds": budget,
    "elapsed_seconds": run.samples[-1][0],
    "outer_steps": run.outer_steps,
    "meta_objective_initial": float(score(run.theta0)),
    "meta_objective": float(score(run.run_state["theta"])),
    "eval_seeds": int(keys.shape[0]),
    "peak_rss_mb": measure.peak_rss_mb(),
  }


def soak_case(spec: dict) -> dict:
  """Resident memory over a long meta-training run: does it grow per step?

  `rss_growth_mb_per_min` is the least-squares slope of the current RSS
  over the second half of the dispatches after the first (which compiles);
  the first half lets the allocator warm up.
  """
  run = _meta_train_for(spec["seconds"], spec, min_dispatches=10)
  samples = run.samples
  late = samples[1:][(len(samples) - 1) // 2 :]  # at least 5 samples
  slope, _ = statistics.linear_regression(*zip(*late))
  stride = max(1, len(samples) // 50)
  return {
    "name": "memory_soak",
    "config": os.path.splitext(os.path.basename(spec["config"]))[0],
    "seconds": spec["seconds"],
    "outer_steps": run.outer_steps,
    "rss_mb_start": samples[0][1],
    "rss_mb_end": samples[-1][1],
    "rss_mb_max": max(r for _, r in samples),
    "rss_growth_mb_per_min": 60 * slope,
    "rss_samples": [[round(t, 1), round(r, 1)] for t, r in samples[::stride]],
    "device_peak_mb": measure.device_peak_mb(),
  }


def memory_scaling(cases: list[dict]) -> dict | None:
  """Steady-state RSS against particle count (MLPLOpt, NRES, W=10).

  Returns the least-squares line through (num_particles, rss_mb) and the
  largest deviation from it relative to the RSS, or None with fewer than
  three particle counts.
  """
  points = sorted(
    (c["num_particles"], c["rss_mb"])
    for c in cases
    if c["name"].startswith("digits_mlp_nres_")
    and c["unroll_length"] == 10
    and "rss_mb" in c
  )
  if len({n for n, _ in points}) < 3:
    return None
  fit = linear_fit(*zip(*points))
  return {
    "rss_mb_by_particles": {str(n): r for n, r in points},
    "mb_per_particle": fit["slope"],
    "intercept_mb": fit["intercept"],
    "max_relative_deviation": fit["max_relative_residual"],
  }


def linear_fit(xs, ys) -> dict[str, float]:
  """The least-squares line y = intercept + slope x through the points.

  Args:
    xs: the abscissae (at least two distinct values).
    ys: the ordinates, none zero.

  Returns:
    `slope`, `intercept` and `max_relative_residual`: the largest
    |y - (intercept + slope x)| / |y| over the points (0 on a line).
  """
  xs, ys = [float(x) for x in xs], [float(y) for y in ys]
  slope, intercept = statistics.linear_regression(xs, ys)
  residual = max(
    abs(y - (intercept + slope * x)) / abs(y) for x, y in zip(xs, ys)
  )
  return {
    "slope": slope,
    "intercept": intercept,
    "max_relative_residual": residual,
  }


def _dispatch_config(spec: dict):
  """The config of the checkpoint and sharding cases: 10 steps a dispatch."""
  config = _digits_config(dict(spec, estimator="nres", lopt="nominal"))
  config.outer.steps_per_dispatch = 10
  return config


def checkpoint_case(spec: dict) -> dict:
  """Outer-step time with async checkpoints every 10 steps vs none, and
  what a save costs at the config's clock cadence (`every_seconds`).

  A shared machine's speed can drift by tens of percent within seconds, so
  the two are interleaved finely: `blocks` times, a few dispatches without
  saves then a few with a save after each, the first of every run of
  dispatches discarded (it carries the other mode's tail). Each block gives
  a ratio of its two mean dispatch times (adjacent in time, so drift
  cancels); the overhead is the median ratio minus one, with a bootstrap
  95 % interval over blocks. `wall_seconds` keeps every timed dispatch.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from lopt import checkpoint  # pylint: disable=g-import-not-at-top

  config = _dispatch_config(spec)
  exp, data, init_fn, steps_fn = _production(config)
  run_state, _ = steps_fn(data, init_fn(data))
  jax.block_until_ready(run_state)
  saved = exp.saved_config()

  def timed(ckpt, rounds):
    """Wall and process CPU seconds of each of `rounds` dispatches, each
    followed by a save, as `lopt.train.loop` does, when `ckpt` is given."""
    nonlocal run_state
    if ckpt is not None:
      ckpt.wait_until_finished()
    times = []
    for _ in range(rounds + 1):
      start, start_cpu = time.perf_counter(), time.process_time()
      run_state, _ = steps_fn(data, run_state)
      if ckpt is not None:
        ckpt.save(int(run_state["step"]), run_state, saved)
      jax.block_until_ready(run_state)
      times.append(
        (time.perf_counter() - start, time.process_time() - start_cpu)
      )
    return times[1:]

  blocks, rounds = spec.get("blocks", 20), 2
  without, with_saves, cpu = [], [], []
  with tempfile.TemporaryDirectory() as directory:
    with checkpoint.Checkpointer(directory, every_steps=10, keep=2) as ckpt:
      for _ in range(blocks):
        without.append(timed(None, rounds))
        with_saves.append(timed(ckpt, rounds))
      # The CPU of one save, all threads, with nothing else running.
      step = int(run_state["step"])
      for i in range(max(3, blocks // 2)):
        start = time.process_time()
        ckpt.save(step + 10 * (i + 1), run_state, saved)
        ckpt.wait_until_finished()
        cpu.append(time.process_time() - start)
  wall = np.asarray([without, with_saves])[..., 0]  # (2, blocks, rounds)
  process_cpu = np.asarray([without, with_saves])[..., 1]

  ratios = wall[1].mean(1) / wall[0].mean(1)  # per block
  rng = np.random.default_rng(0)
  draws = rng.integers(0, blocks, (1000, blocks))
  resampled = np.median(ratios[draws], axis=1)
  median_without = float(np.median(wall[0]))
  per_save = float(np.median(wall[1])) - median_without
  # The config's own cadence, by the clock: one save per `every` seconds of
  # training costs per_save / every of it.
  every = float(config.checkpoint.get("every_seconds", 0.0))
  save_costs = wall[1].mean(1) - wall[0].mean(1)  # per block, seconds
  return {
    "name": "checkpoint_overhead",
    "checkpoint_overhead": float(np.median(ratios) - 1),
    "checkpoint_overhead_interval": [
      float(q - 1) for q in np.quantile(resampled, [0.025, 0.975])
    ],
    "blocks": blocks,
    "dispatches_per_mode": blocks * rounds,
    "seconds_per_save": per_save,
    "cpu_seconds_per_save": statistics.median(cpu),
    # The same ratio in CPU time (all threads) rather than wall-clock: what
    # the saves take from the cores.
    "checkpoint_cpu_overhead": float(
      process_cpu[1].sum() / process_cpu[0].sum() - 1
    ),
    "cpu_seconds_per_10_steps_without": float(np.median(process_cpu[0])),
    # The config's cadence (configs/default.py: every 60 s), from the
    # measured cost of a save, with the blocks' bootstrap interval.
    "default_every_seconds": every,
    "checkpoint_overhead_default_cadence": per_save / every if every else None,
    "checkpoint_overhead_default_cadence_interval": (
      [
        float(q) / every
        for q in np.quantile(
          np.median(save_costs[draws], axis=1), [0.025, 0.975]
        )
      ]
      if every
      else None
    ),
    "seconds_per_10_steps_without": median_without,
    "seconds_per_10_steps_with": float(np.median(wall[1])),
    "checkpoint_mb": tree_bytes(run_state) / 1e6,
    # [without, with][block][dispatch], seconds.
    "wall_seconds": wall.tolist(),
  }


def sharding_case(spec: dict) -> dict:
  """Seconds for a fixed amount of outer steps on this process's devices."""
  import jax  # pylint: disable=g-import-not-at-top

  _, data, init_fn, steps_fn = _production(_dispatch_config(spec))
  times = measure.dispatch_seconds(
    steps_fn, data, init_fn(data), spec.get("reps", 5)
  )
  return {
    "name": f"sharding_{jax.device_count()}dev",
    "backend": jax.default_backend(),
    "devices": jax.device_count(),
    "seconds_per_10_steps": statistics.median(times),
  }


def tree_bytes(tree) -> int:
  """Bytes of a pytree's leaves, arrays or abstract values alike.

  Typed PRNG keys count as their key data (what a checkpoint stores).
  """
  import jax  # pylint: disable=g-import-not-at-top

  total = 0
  for x in jax.tree.leaves(tree):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.eval_shape(jax.random.key_data, x)
    total += math.prod(x.shape) * x.dtype.itemsize
  return total


CASES = {
  "digits": digits_case,
  "lorenz": lorenz_case,
  "budget": budget_case,
  "soak": soak_case,
  "checkpoint": checkpoint_case,
  "sharding": sharding_case,
}
