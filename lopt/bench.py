"""Throughput, efficiency and memory benchmark of meta-training.

    python -m lopt.bench [--quick] [--output=bench.json]

Every case runs in its own subprocess, so its compile time and peak resident
memory are its own. Figures:

* `inner_steps_per_sec`: perturbed inner training steps per second, every
  trajectory counted (the + and - members of a pair are two), at steady
  state after compilation: the median over timed dispatches of
  `outer.steps_per_dispatch` outer steps each.
* `flops_per_inner_step`: XLA's cost analysis of ONE compiled inner step of
  one trajectory (`InnerTraining.step`: batch sampling, forward and
  backward of the inner model, the learned optimizer). Costing the step
  itself avoids the trap that XLA counts a `lax.scan` body once, not once
  per iteration. `analytic_matmul_flops` beside it counts the matmuls by
  hand as a check.
* `achieved_gflops` = inner_steps_per_sec x flops_per_inner_step, against
  `matmul_peak_gflops`: a 2048^3 float32 matmul measured in the same run.
* `budget_60s`: meta-trains the default config for 60 s of wall-clock,
  compilation and burn-in included, then scores the final theta by the
  meta-objective: the mean training loss of full T-step inner runs on
  held-out seeds.
* `memory`: `particles` fits the steady-state resident memory (`rss_mb`,
  after the timed dispatches) of the MLPLOpt NRES W=10 cases against their
  particle count (a line, and the largest deviation from it); `soak`
  meta-trains the default config for `--soak_seconds` (10 minutes) and
  reports the RSS growth per minute over its second half.
* `checkpoint_overhead`: outer-step time with an async checkpoint every 10
  steps over the time without, minus one.
* `sharding_overhead_8dev`: wall-clock of the same total work on 8
  simulated CPU devices over 1 device (an overhead, not a speed-up, on a
  2-core machine).
"""

import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, NamedTuple

from absl import app, flags

_QUICK = flags.DEFINE_bool("quick", False, "A one-minute subset of the cases.")
_OUTPUT = flags.DEFINE_string("output", "bench.json", "Where to write JSON.")
_CASE = flags.DEFINE_string("case", "", "Internal: run one case (JSON spec).")
_BUDGET = flags.DEFINE_float(
  "budget_seconds", 60.0, "Wall-clock budget of the budget case."
)
_SOAK = flags.DEFINE_float(
  "soak_seconds",
  600.0,
  "Length of the memory soak run of the default config (0 skips it; "
  "--quick soaks configs/tiny.py for 15 s).",
)


def machine_info() -> dict:
  import jax  # pylint: disable=g-import-not-at-top

  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(
        line.split(":", 1)[1].strip()
        for line in f
        if line.startswith("model name")
      )
  except (OSError, StopIteration):
    pass
  return {
    "cpu": cpu,
    "cores": os.cpu_count(),
    "platform": platform.platform(),
    "python": platform.python_version(),
    "jax": jax.__version__,
    "backend": jax.default_backend(),
    "devices": jax.device_count(),
  }


def matmul_peak_gflops(n: int = 2048, reps: int = 10) -> float:
  """Median float32 GFLOP/s of a jitted n x n matmul."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  matmul = jax.jit(jnp.dot)
  matmul(a, b).block_until_ready()
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    matmul(a, b).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2 * n**3 / statistics.median(times) / 1e9


def _peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_mb() -> float:
  """The process's resident memory now (Linux), else its peak so far."""
  try:
    with open("/proc/self/statm") as f:
      pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
  except (OSError, ValueError, IndexError):
    return _peak_rss_mb()


def _xla_flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float(cost.get("flops", math.nan)) if cost else math.nan


def _digits_config(spec: dict):
  from configs import default  # pylint: disable=g-import-not-at-top

  config = default.get_config()
  config.estimator.name = spec["estimator"]
  config.estimator.num_particles = spec["num_particles"]
  config.estimator.unroll_length = spec["unroll_length"]
  config.lopt.kind = spec["lopt"]
  # Enough work per dispatch that dispatch overhead does not dominate.
  config.outer.steps_per_dispatch = max(1, 100 // spec["unroll_length"])
  config.task.data_dir = spec.get("data_dir", "")
  # Throughput does not depend on where particles sit in their episodes;
  # lockstep particles spare each case a T-step burn-in.
  config.estimator.step_unlocked = False
  return config


def _analytic_matmul_flops(
  task, lopt_cfg, lopt_theta, batch_size: int
) -> float:
  """Hand count of one inner step's matmuls (2 FLOPs per multiply-add).

  The learned optimizer's step-count features are the same for every
  parameter, so lopt folds their product with the first layer into its bias:
  only the per-parameter rows of the first kernel count per parameter.
  """
  import jax  # pylint: disable=g-import-not-at-top

  from lopt import optimizers  # pylint: disable=g-import-not-at-top

  kernels = [
    x.shape for x in jax.tree.leaves(task.param_shapes) if len(x.shape) == 2
  ]
  forward = 2 * batch_size * sum(a * b for a, b in kernels)
  # Backward: weight gradients as the forward, plus input gradients of all
  # layers but the first.
  backward = forward + 2 * batch_size * sum(a * b for a, b in kernels[1:])
  lopt_kernels = [
    list(x.shape) for x in jax.tree.leaves(lopt_theta) if len(x.shape) == 2
  ]
  shared = len(optimizers.TIME_SCALES) + (lopt_cfg.kind == "nominal")
  lopt_kernels[0][0] -= shared
  learned = 2 * task.num_params * sum(a * b for a, b in lopt_kernels)
  return float(forward + backward + learned)


def digits_case(spec: dict) -> dict:
  """Throughput of the digits learned-optimizer task under one estimator."""
  import jax  # pylint: disable=g-import-not-at-top

  from lopt import train  # pylint: disable=g-import-not-at-top

  reps = spec.get("reps", 5)
  config = _digits_config(spec)
  data, dataset = train.load_data(config)
  exp = train.build(config, dataset)
  run_state = jax.jit(lambda d: train.init_run_state(exp, d))(data)

  # FLOPs of one inner step of one trajectory.
  system = exp.system(data)
  theta = run_state["theta"]
  key = jax.random.key(0)
  inner_state = system.init(key)
  step = jax.jit(system.step).lower(theta, inner_state, 0, key).compile()
  flops = _xla_flops(step)

  k = config.outer.steps_per_dispatch
  steps_fn = jax.jit(
    lambda d, s: train.train_steps(exp, d, s, num_steps=k), donate_argnums=(1,)
  )
  start = time.perf_counter()
  compiled = steps_fn.lower(data, run_state).compile()
  compile_seconds = time.perf_counter() - start
  run_state, _ = compiled(data, run_state)  # warm-up
  jax.block_until_ready(run_state)
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    run_state, _ = compiled(data, run_state)
    jax.block_until_ready(run_state)
    times.append(time.perf_counter() - start)
  per_dispatch = statistics.median(times)
  est = exp.estimator(data)
  inner_steps = est.members * est.num_particles * est.unroll_length * k
  rate = inner_steps / per_dispatch
  return {
    "name": (
      f"digits_{spec['lopt']}_{spec['estimator']}"
      f"_n{spec['num_particles']}_w{spec['unroll_length']}"
    ),
    "estimator": spec["estimator"],
    "lopt": spec["lopt"],
    "lopt_params": sum(x.size for x in jax.tree.leaves(theta)),
    "num_particles": spec["num_particles"],
    "trajectories": est.members * est.num_particles,
    "unroll_length": spec["unroll_length"],
    "compile_seconds": compile_seconds,
    "inner_steps_per_sec": rate,
    "outer_iters_per_sec": k / per_dispatch,
    "flops_per_inner_step": flops,
    "analytic_matmul_flops": _analytic_matmul_flops(
      exp.task, exp.lopt, theta, config.task.batch_size
    ),
    "achieved_gflops": rate * flops / 1e9,
    "peak_rss_mb": _peak_rss_mb(),
    "rss_mb": _rss_mb(),
    "timed_dispatches": reps,
    "dispatch_seconds": times,
  }


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
  flops = _xla_flops(
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
    "peak_rss_mb": _peak_rss_mb(),
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
  seconds: float,
  data_dir: str = "",
  config_name: str = "default",
  min_dispatches: int = 1,
) -> _TimedRun:
  """Meta-trains `configs/<config_name>.py` for `seconds` of wall-clock.

  The clock starts before data loading, so compilation counts. At least
  `min_dispatches` dispatches run, however long they take.
  """
  import importlib  # pylint: disable=g-import-not-at-top

  import jax  # pylint: disable=g-import-not-at-top

  from lopt import train  # pylint: disable=g-import-not-at-top

  start = time.perf_counter()
  config = importlib.import_module(f"configs.{config_name}").get_config()
  config.task.data_dir = data_dir
  data, dataset = train.load_data(config)
  exp = train.build(config, dataset)
  run_state = jax.jit(lambda d: train.init_run_state(exp, d))(data)
  k = config.outer.steps_per_dispatch
  steps_fn = jax.jit(
    lambda d, s: train.train_steps(exp, d, s, num_steps=k), donate_argnums=(1,)
  )
  theta0 = jax.tree.map(lambda x: x.copy(), run_state["theta"])  # donated below
  outer_steps, samples = 0, []
  while time.perf_counter() - start < seconds or len(samples) < min_dispatches:
    run_state, _ = steps_fn(data, run_state)
    jax.block_until_ready(run_state)
    outer_steps += k
    samples.append((time.perf_counter() - start, _rss_mb()))
  return _TimedRun(exp, config, data, theta0, run_state, outer_steps, samples)


def budget_case(spec: dict) -> dict:
  """Meta-trains the default config for a wall-clock budget, then scores it."""
  import jax  # pylint: disable=g-import-not-at-top

  from lopt import optimizers, train  # pylint: disable=g-import-not-at-top

  budget = spec["seconds"]
  run = _meta_train_for(budget, spec.get("data_dir", ""))
  config = run.config
  keys = train.eval_keys(config)

  @jax.jit
  def score(theta):
    tx = optimizers.learned_optimizer(theta, run.exp.lopt, config.inner.horizon)
    return train.evaluate_optimizer(run.exp, run.data, tx, keys)[
      "losses"
    ].mean()

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
    "peak_rss_mb": _peak_rss_mb(),
  }


def soak_case(spec: dict) -> dict:
  """Resident memory over a long meta-training run: does it grow per step?

  `rss_growth_mb_per_min` is the least-squares slope of the current RSS
  over the second half of the dispatches after the first (which compiles);
  the first half lets the allocator warm up.
  """
  run = _meta_train_for(
    spec["seconds"], spec.get("data_dir", ""), spec["config"], min_dispatches=10
  )
  samples = run.samples
  late = samples[1:][(len(samples) - 1) // 2 :]  # at least 5 samples
  slope, _ = statistics.linear_regression(*zip(*late))
  stride = max(1, len(samples) // 50)
  return {
    "name": "memory_soak",
    "config": spec["config"],
    "seconds": spec["seconds"],
    "outer_steps": run.outer_steps,
    "rss_mb_start": samples[0][1],
    "rss_mb_end": samples[-1][1],
    "rss_mb_max": max(r for _, r in samples),
    "rss_growth_mb_per_min": 60 * slope,
    "rss_samples": [[round(t, 1), round(r, 1)] for t, r in samples[::stride]],
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
  slope, intercept = statistics.linear_regression(*zip(*points))
  deviation = max(abs(r - (intercept + slope * n)) / r for n, r in points)
  return {
    "rss_mb_by_particles": {str(n): r for n, r in points},
    "mb_per_particle": slope,
    "intercept_mb": intercept,
    "max_relative_deviation": deviation,
  }


def checkpoint_case(spec: dict) -> dict:
  """Outer-step time with async checkpoints every 10 steps vs none."""
  import jax  # pylint: disable=g-import-not-at-top

  from lopt import checkpoint, train  # pylint: disable=g-import-not-at-top

  config = _digits_config(dict(spec, estimator="nres", lopt="nominal"))
  config.outer.steps_per_dispatch = 10
  data, dataset = train.load_data(config)
  exp = train.build(config, dataset)
  run_state = jax.jit(lambda d: train.init_run_state(exp, d))(data)
  steps_fn = jax.jit(
    lambda d, s: train.train_steps(exp, d, s, num_steps=10), donate_argnums=(1,)
  )
  run_state, _ = steps_fn(data, run_state)
  jax.block_until_ready(run_state)
  saved = exp.saved_config()

  def timed(ckpt, rounds):
    nonlocal run_state
    times = []
    for _ in range(rounds):
      start = time.perf_counter()
      run_state, _ = steps_fn(data, run_state)
      if ckpt is not None:
        ckpt.save(int(run_state["step"]), run_state, saved)
      jax.block_until_ready(run_state)
      times.append(time.perf_counter() - start)
    return times

  rounds = spec.get("reps", 10)
  without, with_saves = [], []
  with tempfile.TemporaryDirectory() as directory:
    with checkpoint.Checkpointer(directory, every_steps=10, keep=2) as ckpt:
      for _ in range(2):  # interleaved, so machine drift hits both alike
        without += timed(None, rounds)
        with_saves += timed(ckpt, rounds)
      ckpt.wait_until_finished()
  overhead = statistics.median(with_saves) / statistics.median(without) - 1
  per_save = statistics.median(with_saves) - statistics.median(without)
  return {
    "name": "checkpoint_overhead",
    "checkpoint_overhead": overhead,
    "seconds_per_save": per_save,
    # The default config saves every 100 steps, not every 10.
    "checkpoint_overhead_every_100_steps": per_save
    / (10 * statistics.median(without)),
    "seconds_per_10_steps_without": statistics.median(without),
    "seconds_per_10_steps_with": statistics.median(with_saves),
  }


def sharding_case(spec: dict) -> dict:
  """Seconds for a fixed amount of outer steps on this process's devices."""
  import jax  # pylint: disable=g-import-not-at-top

  from lopt import train  # pylint: disable=g-import-not-at-top

  config = _digits_config(dict(spec, estimator="nres", lopt="nominal"))
  config.outer.steps_per_dispatch = 10
  data, dataset = train.load_data(config)
  exp = train.build(config, dataset)
  init = jax.jit(lambda d: train.init_run_state(exp, d))
  steps_fn = jax.jit(
    lambda d, s: train.train_steps(exp, d, s, num_steps=10), donate_argnums=(1,)
  )
  run_state = init(data)
  run_state, _ = steps_fn(data, run_state)
  jax.block_until_ready(run_state)
  times = []
  for _ in range(spec.get("reps", 5)):
    start = time.perf_counter()
    run_state, _ = steps_fn(data, run_state)
    jax.block_until_ready(run_state)
    times.append(time.perf_counter() - start)
  return {
    "name": f"sharding_{jax.device_count()}dev",
    "devices": jax.device_count(),
    "seconds_per_10_steps": statistics.median(times),
  }


CASES = {
  "digits": digits_case,
  "lorenz": lorenz_case,
  "budget": budget_case,
  "soak": soak_case,
  "checkpoint": checkpoint_case,
  "sharding": sharding_case,
}


def run_case(spec: dict, devices: int = 1) -> dict:
  """Runs one case in a fresh subprocess; returns its JSON result."""
  env = dict(os.environ)
  if devices > 1:
    env["XLA_FLAGS"] = (
      env.get("XLA_FLAGS", "")
      + f" --xla_force_host_platform_device_count={devices}"
    )
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
  result = subprocess.run(
    [sys.executable, "-m", "lopt.bench", f"--case={json.dumps(spec)}"],
    env=env,
    capture_output=True,
    text=True,
    check=False,
  )
  if result.returncode != 0:
    raise RuntimeError(f"bench case {spec} failed:\n{result.stderr[-4000:]}")
  return json.loads(result.stdout.strip().splitlines()[-1])


def plan(quick: bool) -> list[dict]:
  """The digits and Lorenz cases of a full or quick run."""
  if quick:
    return [
      dict(
        kind="digits",
        estimator="nres",
        lopt="mlp",
        num_particles=16,
        unroll_length=10,
        reps=2,
      )
    ]
  cases = [
    dict(
      kind="digits",
      estimator=est,
      lopt=lopt,
      num_particles=n,
      unroll_length=w,
      reps=5,
    )
    for lopt in ("mlp", "nominal")
    for est in ("nres", "pes")
    for n in (4, 16, 64)
    for w in (1, 10)
  ]
  cases.append(dict(kind="lorenz", num_particles=200, unroll_length=100))
  return cases


def format_table(report: dict) -> str:
  lines = [
    f"matmul peak: {report['matmul_peak_gflops']:.1f} GFLOP/s",
    "| case | traj | compile s | inner steps/s | outer it/s | "
    "MFLOP/step | GFLOP/s | % peak | RSS MB |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  peak = report["matmul_peak_gflops"]
  for c in report["cases"]:
    if "inner_steps_per_sec" not in c:
      continue
    lines.append(
      f"| {c['name']} | {c['trajectories']} | {c['compile_seconds']:.1f} | "
      f"{c['inner_steps_per_sec']:.0f} | {c['outer_iters_per_sec']:.2f} | "
      f"{c['flops_per_inner_step'] / 1e6:.2f} | "
      f"{c['achieved_gflops']:.1f} | "
      f"{100 * c['achieved_gflops'] / peak:.1f} | {c['peak_rss_mb']:.0f} |"
    )
  for c in report["cases"]:
    if c["name"] == "budget_60s":
      lines.append(
        f"budget {c['budget_seconds']:.0f}s: {c['outer_steps']} outer "
        f"steps, meta-objective {c['meta_objective_initial']:.4f} -> "
        f"{c['meta_objective']:.4f}"
      )
  scaling = report["memory"]["particles"]
  if scaling:
    lines.append(
      f"memory: RSS {scaling['intercept_mb']:.0f} MB + "
      f"{scaling['mb_per_particle']:.2f} MB per particle, largest "
      "deviation from that line "
      f"{100 * scaling['max_relative_deviation']:.1f} %"
    )
  soak = report["memory"]["soak"]
  if soak:
    lines.append(
      f"memory soak {soak['config']} {soak['seconds']:.0f}s "
      f"({soak['outer_steps']} outer "
      f"steps): RSS {soak['rss_mb_start']:.0f} -> {soak['rss_mb_end']:.0f} "
      f"MB, growth over the second half "
      f"{soak['rss_growth_mb_per_min']:+.2f} MB/min"
    )
  detail = report["checkpoint_detail"]
  lines.append(
    f"checkpoint_overhead: {report['checkpoint_overhead']:+.3f} "
    f"(every 10 steps; {detail['seconds_per_save'] * 1e3:.0f} ms per save; "
    f"{detail['checkpoint_overhead_every_100_steps']:+.3f} at the default "
    "every 100 steps)"
  )
  lines.append(
    f"sharding_overhead_8dev: {report['sharding_overhead_8dev']:.3f}"
  )
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _CASE.value:  # a subprocess running one case
    spec = json.loads(_CASE.value)
    print(json.dumps(CASES[spec.pop("kind")](spec)))
    return
  quick = _QUICK.value
  report = {
    "machine": machine_info(),
    "quick": quick,
    "matmul_peak_gflops": matmul_peak_gflops(),
  }
  cases = [run_case(spec) for spec in plan(quick)]
  cases.append(
    run_case(dict(kind="budget", seconds=10.0 if quick else _BUDGET.value))
  )
  report["cases"] = cases
  soak = (
    dict(kind="soak", config="tiny", seconds=15.0)
    if quick
    else dict(kind="soak", config="default", seconds=_SOAK.value)
  )
  report["memory"] = {
    "particles": memory_scaling(cases),
    "soak": run_case(soak) if soak["seconds"] > 0 else None,
  }
  reps = 2 if quick else 10
  checkpoint_case_ = run_case(
    dict(kind="checkpoint", num_particles=16, unroll_length=10, reps=reps)
  )
  report["checkpoint_overhead"] = checkpoint_case_["checkpoint_overhead"]
  report["checkpoint_detail"] = checkpoint_case_
  sharding = {
    d: run_case(
      dict(
        kind="sharding", num_particles=16, unroll_length=10, reps=reps // 2 + 1
      ),
      d,
    )
    for d in (1, 8)
  }
  report["sharding_overhead_8dev"] = (
    sharding[8]["seconds_per_10_steps"] / sharding[1]["seconds_per_10_steps"]
  )
  report["sharding_detail"] = sharding
  with open(_OUTPUT.value, "w") as f:
    json.dump(report, f, indent=2)
  print(format_table(report))
  print(f"Wrote {_OUTPUT.value}")


if __name__ == "__main__":
  app.run(main)
