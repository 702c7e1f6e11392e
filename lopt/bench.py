"""Throughput, efficiency and memory benchmark of meta-training.

    python -m lopt.bench [--quick] [--output=bench.json]
    python -m lopt.bench --particles=16,64,256,1024 --unroll_lengths=10 \
        --sections=digits,checkpoint --output=gpu.json   # on an accelerator

It times what `lopt.main` runs: the jitted, sharded functions of
`lopt.train.sharded_functions`, on the default backend (a GPU or TPU when
there is one), for configs loaded by path (`--config`, by default the
repository's configs/default.py). Every case runs in its own subprocess, so
its compile time and peak resident memory are its own. Figures:

* `inner_steps_per_sec`: perturbed inner training steps per second, every
  trajectory counted (the + and - members of a pair are two), at steady
  state after compilation: the median over timed dispatches of
  `outer.steps_per_dispatch` outer steps each. `compile_seconds`: the
  wall-clock of compiling that dispatch (no compilation cache).
* `flops_per_inner_step`: XLA's cost analysis of ONE compiled inner step of
  one trajectory (`InnerTraining.step`: batch sampling, forward and
  backward of the inner model, the learned optimizer). Costing the step
  itself avoids the trap that XLA counts a `lax.scan` body once, not once
  per iteration. `analytic_matmul_flops` beside it counts the matmuls by
  hand as a check.
* `achieved_gflops` = inner_steps_per_sec x flops_per_inner_step, against
  `matmul_peak_gflops`: a float32 matmul (2048^3 on a CPU, 8192^3 on an
  accelerator) at JAX's default precision, the one the program's matmuls
  use, measured in the same run; `matmul_peak_gflops_highest` is the same
  at `Precision.HIGHEST` (true float32 where the default allows TF32).
* The memory roofline, per digits case (`inner_step_bytes`): the bytes one
  inner step of one trajectory must move at the least, counted from the
  shapes (the table in `inner_step_bytes`), and `achieved_gbs` =
  inner_steps_per_sec x min_bytes_per_inner_step, against
  `memory_bandwidth_gbs`: a streaming triad `a = b + s * c` over arrays
  far larger than any cache, in jit, measured in the case's own process
  after its timing (the report's figure is the median over the cases). With the
  FLOP peak this gives each case's roofline (`arithmetic_intensity`,
  `roofline_gflops`, `bound`: memory or compute, and the achieved fraction
  of it). Activations that stay in cache can make `memory_bandwidth_fraction`
  exceed 1.
* `budget_60s`: meta-trains the default config for 60 s of wall-clock,
  compilation and burn-in included, then scores the final theta by the
  meta-objective: the mean training loss of full T-step inner runs on
  held-out seeds.
* `memory`: `particles` fits the steady-state resident memory (`rss_mb`,
  after the timed dispatches) of the MLPLOpt NRES W=10 cases against their
  particle count (a line, and the largest deviation from it); `soak`
  meta-trains the default config for `--soak_seconds` (10 minutes) and
  reports the RSS growth per minute over its second half. On an
  accelerator `device_peak_mb` is the device's own peak memory.
* `checkpoint_overhead`: outer-step time with an async checkpoint every 10
  steps over the time without, minus one; `checkpoint_cpu_overhead` is the
  same ratio in process CPU time (all threads), which other load on the
  machine disturbs far less; `cpu_seconds_per_save` is the CPU time of one
  save and its background work, measured with nothing else running.
* `sharding_overhead_8dev`: wall-clock of the same total work on 8
  simulated CPU devices over 1 device (an overhead, not a speed-up, on a
  2-core machine). It always runs on the CPU backend.
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

from lopt import console

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTIONS = ("digits", "lorenz", "budget", "soak", "checkpoint", "sharding")


def _repo_config(name: str) -> str:
  return os.path.join(REPO, "configs", f"{name}.py")


def define_flags() -> dict[str, flags.FlagHolder]:
  """The command-line flags (see `lopt.console.run_program`)."""
  return {
    "quick": flags.DEFINE_bool(
      "quick", False, "A few-minute subset: one digits case, short runs."
    ),
    "output": flags.DEFINE_string("output", "bench.json", "Where to write."),
    "case": flags.DEFINE_string("case", "", "Internal: run one case (JSON)."),
    "config": flags.DEFINE_string(
      "config",
      _repo_config("default"),
      "The config file (a path) that the digits, budget, soak, checkpoint "
      "and sharding cases start from.",
    ),
    "particles": flags.DEFINE_list(
      "particles",
      None,
      "Particle counts of the digits cases (default 4,16,64; --quick: 16), "
      "e.g. 16,64,256,1024 on an accelerator.",
    ),
    "unroll_lengths": flags.DEFINE_list(
      "unroll_lengths",
      None,
      "Unroll lengths W of the digits cases (default 1,10; --quick: 10).",
    ),
    "sections": flags.DEFINE_list(
      "sections",
      list(SECTIONS),
      f"Which parts to run, of {','.join(SECTIONS)}.",
    ),
    "budget_seconds": flags.DEFINE_float(
      "budget_seconds", 60.0, "Wall-clock budget of the budget case."
    ),
    "soak_seconds": flags.DEFINE_float(
      "soak_seconds",
      600.0,
      "Length of the memory soak run of the default config (0 skips it; "
      "--quick soaks configs/tiny.py for 15 s).",
    ),
  }


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
    "device_kind": jax.devices()[0].device_kind,
    "devices": jax.device_count(),
  }


def _on_accelerator() -> bool:
  import jax  # pylint: disable=g-import-not-at-top

  return jax.default_backend() != "cpu"


def _median_seconds(fn, *args, reps: int) -> float:
  """Median wall-clock of `fn(*args)` after one warm-up call."""
  import jax  # pylint: disable=g-import-not-at-top

  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def matmul_peak_gflops(
  n: int | None = None, reps: int = 10, precision=None
) -> float:
  """Median float32 GFLOP/s of a jitted n x n matmul on the default device.

  Args:
    n: the size; by default 2048 on a CPU, 8192 on an accelerator (enough
      work that dispatch does not count).
    reps: timed calls.
    precision: `jax.lax.Precision`; None is JAX's default, the precision of
      the program's own matmuls.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  n = n or (8192 if _on_accelerator() else 2048)
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  matmul = jax.jit(lambda a, b: jnp.dot(a, b, precision=precision))
  return 2 * n**3 / _median_seconds(matmul, a, b, reps=reps) / 1e9


def memory_bandwidth_gbs(megabytes: int | None = None, reps: int = 10) -> float:
  """Median streaming bandwidth of the default device, GB/s (STREAM triad).

  `a = b + 3 c` over float32 arrays of `megabytes` each (by default 256 MB
  on a CPU, far beyond its caches, and 2 GB on an accelerator), jitted,
  with `a` donated so that the output reuses its buffer (no fresh pages per
  call). Counted as STREAM counts it: 3 arrays moved per call.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  megabytes = megabytes or (2048 if _on_accelerator() else 256)
  n = megabytes * 2**20 // 4
  # keep_unused: `a` is only the output's buffer; without it jit drops the
  # unused argument, and with it the donation.
  triad = jax.jit(
    lambda a, b, c: b + 3.0 * c, donate_argnums=0, keep_unused=True
  )
  a = jnp.zeros((n,), jnp.float32)
  b = jnp.full((n,), 1.0, jnp.float32)
  c = jnp.full((n,), 2.0, jnp.float32)
  a = triad(a, b, c)  # compiles
  times = []
  for _ in range(reps + 1):
    start = time.perf_counter()
    a = triad(a, b, c)
    a.block_until_ready()
    times.append(time.perf_counter() - start)
  return 3 * 4 * n / statistics.median(times[1:]) / 1e9


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


def _device_peak_mb() -> float | None:
  """Peak memory of the first device (accelerators report it), else None."""
  import jax  # pylint: disable=g-import-not-at-top

  stats = jax.local_devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return None if peak is None else peak / 2**20


def _xla_flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float(cost.get("flops", math.nan)) if cost else math.nan


def _load_config(spec: dict):
  from lopt import experiment  # pylint: disable=g-import-not-at-top

  config = experiment.load_config(spec.get("config") or _repo_config("default"))
  config.task.data_dir = spec.get("data_dir", "")
  return config


def _digits_config(spec: dict):
  config = _load_config(spec)
  config.estimator.name = spec["estimator"]
  config.estimator.num_particles = spec["num_particles"]
  config.estimator.unroll_length = spec["unroll_length"]
  config.lopt.kind = spec["lopt"]
  # Enough work per dispatch that dispatch overhead does not dominate.
  config.outer.steps_per_dispatch = max(1, 100 // spec["unroll_length"])
  # Throughput does not depend on where particles sit in their episodes;
  # lockstep particles spare each case a T-step burn-in.
  config.estimator.step_unlocked = False
  return config


def _production(config):
  """What `lopt.main` builds: data, experiment and its jitted functions."""
  from lopt import experiment, train  # pylint: disable=g-import-not-at-top

  experiment.check_config(config)
  data, dataset = experiment.load_data(config)
  exp = experiment.build(config, dataset)
  init_fn, steps_fn, _, _ = train.sharded_functions(exp, data)
  return exp, data, init_fn, steps_fn


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


def _layer_outputs(task) -> list[int]:
  """Elements of each layer's output for ONE example of the inner model."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  x = jax.ShapeDtypeStruct((1, *task.input_shape), jnp.float32)
  _, state = jax.eval_shape(
    lambda p, x: task.model.apply(
      {"params": p}, x, capture_intermediates=True, mutable=["intermediates"]
    ),
    task.param_shapes,
    x,
  )
  outputs = dict(state["intermediates"])
  outputs.pop("__call__", None)  # the model's output: its last layer's
  return [math.prod(o.shape) for o in jax.tree.leaves(outputs)]


def inner_step_bytes(task, lopt_cfg, dtype_bytes: int = 4) -> dict[str, int]:
  """The bytes one inner step of one trajectory must move, at the least.

  Counted from the shapes, every array float32, P the inner model's
  parameter count, B the batch size, K = 6 momenta, F the learned
  optimizer's per-parameter feature rows (8, nominal kind 10), h_l its
  hidden widths:

  | part | read | written |
  |---|---|---|
  | inner data | the batch: B x (input + label) | |
  | inner model | parameters twice (forward, backward) | the gradient, P |
  | inner activations | each layer's output (B x width) once, its gradient once | the same |
  | lopt state | parameters, gradient, K momenta (nominal: + v) | parameters, K momenta (+ v) |
  | lopt activations | features F x P, each hidden layer h_l x P, the output 2 x P, once each | the same |

  `min_bytes` is the sum: a step that writes each layer's activation to
  memory once and reads it back once, which is how XLA runs the per-
  parameter MLP here (one activation per layer of all parameters of all
  trajectories). `state_bytes` leaves the activations out: the floor of a
  step fused so that no activation leaves the cache.

  Args:
    task: the inner task (`lopt.tasks.Task`).
    lopt_cfg: the learned optimizer (`lopt.optimizers.LOptConfig`).
    dtype_bytes: bytes per element.

  Returns:
    A dict of byte counts: `inner_data`, `inner_model`, `inner_activations`,
    `lopt_state`, `lopt_activations`, `min_bytes` and `state_bytes`.
  """
  from lopt import optimizers  # pylint: disable=g-import-not-at-top

  p, b = task.num_params, task.batch_size
  momenta = len(optimizers.MOMENTUM_DECAYS)
  nominal = lopt_cfg.kind == "nominal"
  feature_rows = 2 + momenta + 2 * nominal
  parts = {
    "inner_data": b * (math.prod(task.input_shape) + 1),
    "inner_model": 2 * p + p,
    "inner_activations": 4 * b * sum(_layer_outputs(task)),
    "lopt_state": (2 + momenta + nominal) * p + (1 + momenta + nominal) * p,
    "lopt_activations": 2 * p * (feature_rows + sum(lopt_cfg.hidden) + 2),
  }
  parts = {k: v * dtype_bytes for k, v in parts.items()}
  parts["min_bytes"] = sum(parts.values())
  parts["state_bytes"] = (
    parts["min_bytes"] - parts["inner_activations"] - parts["lopt_activations"]
  )
  return parts


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
  flops = _xla_flops(step)

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
  k = config.outer.steps_per_dispatch
  inner_steps = est.members * est.num_particles * est.unroll_length * k
  rate = inner_steps / per_dispatch
  moved = inner_step_bytes(exp.task, exp.lopt)
  result = {
    "name": (
      f"digits_{spec['lopt']}_{spec['estimator']}"
      f"_n{spec['num_particles']}_w{spec['unroll_length']}"
    ),
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
    "analytic_matmul_flops": _analytic_matmul_flops(
      exp.task, exp.lopt, theta, config.task.batch_size
    ),
    "achieved_gflops": rate * flops / 1e9,
    "min_bytes_per_inner_step": moved["min_bytes"],
    "state_bytes_per_inner_step": moved["state_bytes"],
    "inner_step_bytes": moved,
    "achieved_gbs": rate * moved["min_bytes"] / 1e9,
    "peak_rss_mb": _peak_rss_mb(),
    "rss_mb": _rss_mb(),
    "device_peak_mb": _device_peak_mb(),
    "timed_dispatches": reps,
    "dispatch_seconds": times,
  }
  # Last, so that its arrays count in no memory figure above.
  result["memory_bandwidth_gbs"] = memory_bandwidth_gbs()
  return result


def add_roofline(case: dict, peak_gflops: float, bandwidth_gbs: float) -> None:
  """Adds a digits case's roofline, in place.

  `arithmetic_intensity` is FLOPs per byte of the layer-wise minimum; the
  roofline is min(peak, intensity x bandwidth), and `bound` says which of
  the two limits the case (the ridge point is peak / bandwidth).

  Args:
    case: a `digits_case` result.
    peak_gflops: the matmul peak of this run.
    bandwidth_gbs: the memory bandwidth (the case's own measurement).
  """
  intensity = case["flops_per_inner_step"] / case["min_bytes_per_inner_step"]
  memory_limit = intensity * bandwidth_gbs
  roofline = min(peak_gflops, memory_limit)
  case.update(
    memory_bandwidth_fraction=case["achieved_gbs"] / bandwidth_gbs,
    arithmetic_intensity=intensity,
    roofline_gflops=roofline,
    roofline_fraction=case["achieved_gflops"] / roofline,
    bound="memory" if memory_limit < peak_gflops else "compute",
  )


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
    samples.append((time.perf_counter() - start, _rss_mb()))
  return _TimedRun(exp, config, data, theta0, run_state, outer_steps, samples)


def budget_case(spec: dict) -> dict:
  """Meta-trains the default config for a wall-clock budget, then scores it."""
  import jax  # pylint: disable=g-import-not-at-top

  from lopt import experiment, optimizers  # pylint: disable=g-import-not-at-top

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
    "peak_rss_mb": _peak_rss_mb(),
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
    "device_peak_mb": _device_peak_mb(),
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


def _dispatch_config(spec: dict):
  """The config of the checkpoint and sharding cases: 10 steps a dispatch."""
  config = _digits_config(dict(spec, estimator="nres", lopt="nominal"))
  config.outer.steps_per_dispatch = 10
  return config


def checkpoint_case(spec: dict) -> dict:
  """Outer-step time with async checkpoints every 10 steps vs none."""
  import jax  # pylint: disable=g-import-not-at-top

  from lopt import checkpoint  # pylint: disable=g-import-not-at-top

  exp, data, init_fn, steps_fn = _production(_dispatch_config(spec))
  run_state, _ = steps_fn(data, init_fn(data))
  jax.block_until_ready(run_state)
  saved = exp.saved_config()

  def timed(ckpt, rounds, times, cpu_times):
    nonlocal run_state
    for _ in range(rounds):
      start, start_cpu = time.perf_counter(), time.process_time()
      run_state, _ = steps_fn(data, run_state)
      if ckpt is not None:
        ckpt.save(int(run_state["step"]), run_state, saved)
      jax.block_until_ready(run_state)
      times.append(time.perf_counter() - start)
      cpu_times.append(time.process_time() - start_cpu)
    if ckpt is not None:
      # The last save's background work belongs to this block.
      start_cpu = time.process_time()
      ckpt.wait_until_finished()
      cpu_times[-1] += time.process_time() - start_cpu

  rounds = spec.get("reps", 10)
  without, with_saves, cpu = [], [], []
  cpu_without, cpu_with = [], []
  with tempfile.TemporaryDirectory() as directory:
    with checkpoint.Checkpointer(directory, every_steps=10, keep=2) as ckpt:
      for _ in range(2):  # interleaved, so machine drift hits both alike
        timed(None, rounds, without, cpu_without)
        timed(ckpt, rounds, with_saves, cpu_with)
      # The CPU of one save, all threads, with nothing else running.
      step = int(run_state["step"])
      for i in range(max(3, rounds // 2)):
        start = time.process_time()
        ckpt.save(step + 10 * (i + 1), run_state, saved)
        ckpt.wait_until_finished()
        cpu.append(time.process_time() - start)
  overhead = statistics.median(with_saves) / statistics.median(without) - 1
  per_save = statistics.median(with_saves) - statistics.median(without)
  return {
    "name": "checkpoint_overhead",
    "checkpoint_overhead": overhead,
    "seconds_per_save": per_save,
    "cpu_seconds_per_save": statistics.median(cpu),
    # The same ratio in CPU time (all threads) rather than wall-clock: what
    # the saves take from the cores, much less sensitive to other load.
    "checkpoint_cpu_overhead": sum(cpu_with) / sum(cpu_without) - 1,
    "cpu_seconds_per_10_steps_without": statistics.median(cpu_without),
    # The default config saves every 100 steps, not every 10.
    "checkpoint_overhead_every_100_steps": per_save
    / (10 * statistics.median(without)),
    "seconds_per_10_steps_without": statistics.median(without),
    "seconds_per_10_steps_with": statistics.median(with_saves),
    "checkpoint_mb": sum(
      x.nbytes
      for x in jax.tree.leaves(
        jax.tree.map(
          lambda x: (
            jax.random.key_data(x)
            if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
            else x
          ),
          run_state,
        )
      )
    )
    / 1e6,
  }


def sharding_case(spec: dict) -> dict:
  """Seconds for a fixed amount of outer steps on this process's devices."""
  import jax  # pylint: disable=g-import-not-at-top

  _, data, init_fn, steps_fn = _production(_dispatch_config(spec))
  run_state, _ = steps_fn(data, init_fn(data))
  jax.block_until_ready(run_state)
  times = []
  for _ in range(spec.get("reps", 5)):
    start = time.perf_counter()
    run_state, _ = steps_fn(data, run_state)
    jax.block_until_ready(run_state)
    times.append(time.perf_counter() - start)
  return {
    "name": f"sharding_{jax.device_count()}dev",
    "backend": jax.default_backend(),
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


def run_case(spec: dict, cpu_devices: int | None = None) -> dict:
  """Runs one case in a fresh subprocess; returns its JSON result.

  Args:
    spec: the case (`kind` and its arguments).
    cpu_devices: run on the CPU backend with this many simulated devices,
      whatever the default backend; None: the default backend.
  """
  env = dict(os.environ)
  if cpu_devices is not None:
    env["JAX_PLATFORMS"] = "cpu"
    env.pop("JAX_NUM_CPU_DEVICES", None)  # would win over the XLA flag
    env["XLA_FLAGS"] = (
      env.get("XLA_FLAGS", "")
      + f" --xla_force_host_platform_device_count={cpu_devices}"
    ).strip()
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
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


def plan(
  quick: bool,
  particles: list[int] | None = None,
  unroll_lengths: list[int] | None = None,
  config: str = "",
) -> list[dict]:
  """The digits cases of a full or quick run.

  Args:
    quick: one estimator and learned optimizer, 2 timed dispatches.
    particles: the particle counts; default (4, 16, 64), quick (16,).
    unroll_lengths: the unroll lengths; default (1, 10), quick (10,).
    config: the config file the cases start from.
  """
  particles = particles or ([16] if quick else [4, 16, 64])
  unroll_lengths = unroll_lengths or ([10] if quick else [1, 10])
  kinds = (
    [("mlp", "nres")]
    if quick
    else [(lopt, est) for lopt in ("mlp", "nominal") for est in ("nres", "pes")]
  )
  return [
    dict(
      kind="digits",
      config=config,
      estimator=est,
      lopt=lopt,
      num_particles=n,
      unroll_length=w,
      reps=2 if quick else 5,
    )
    for lopt, est in kinds
    for n in particles
    for w in unroll_lengths
  ]


def format_table(report: dict) -> str:
  peak = report["matmul_peak_gflops"]
  bandwidth = report["memory_bandwidth_gbs"]
  lines = [
    f"{report['machine']['backend']} ({report['machine']['device_kind']}): "
    f"matmul peak {peak:.1f} GFLOP/s "
    f"({report['matmul_peak_gflops_highest']:.1f} at HIGHEST precision)"
    + (f", memory bandwidth {bandwidth:.1f} GB/s (triad)" if bandwidth else ""),
    "| case | traj | compile s | inner steps/s | outer it/s | "
    "MFLOP/step | GFLOP/s | % peak | min KB/step | GB/s | % BW | bound | "
    "% roofline | RSS MB |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for c in report["cases"]:
    if "inner_steps_per_sec" not in c:
      continue
    memory = ["-"] * 5
    if "min_bytes_per_inner_step" in c:
      memory = [
        f"{c['min_bytes_per_inner_step'] / 1e3:.0f}",
        f"{c['achieved_gbs']:.1f}",
        f"{100 * c['memory_bandwidth_fraction']:.0f}",
        c["bound"],
        f"{100 * c['roofline_fraction']:.0f}",
      ]
    lines.append(
      f"| {c['name']} | {c['trajectories']} | {c['compile_seconds']:.1f} | "
      f"{c['inner_steps_per_sec']:.0f} | {c['outer_iters_per_sec']:.2f} | "
      f"{c['flops_per_inner_step'] / 1e6:.2f} | "
      f"{c['achieved_gflops']:.1f} | "
      f"{100 * c['achieved_gflops'] / peak:.1f} | {' | '.join(memory)} | "
      f"{c['peak_rss_mb']:.0f} |"
    )
  for c in report["cases"]:
    if c["name"] == "budget_60s":
      lines.append(
        f"budget {c['budget_seconds']:.0f}s: {c['outer_steps']} outer "
        f"steps, meta-objective {c['meta_objective_initial']:.4f} -> "
        f"{c['meta_objective']:.4f}"
      )
  memory = report.get("memory", {})
  scaling = memory.get("particles")
  if scaling:
    lines.append(
      f"memory: RSS {scaling['intercept_mb']:.0f} MB + "
      f"{scaling['mb_per_particle']:.2f} MB per particle, largest "
      "deviation from that line "
      f"{100 * scaling['max_relative_deviation']:.1f} %"
    )
  soak = memory.get("soak")
  if soak:
    lines.append(
      f"memory soak {soak['config']} {soak['seconds']:.0f}s "
      f"({soak['outer_steps']} outer "
      f"steps): RSS {soak['rss_mb_start']:.0f} -> {soak['rss_mb_end']:.0f} "
      f"MB, growth over the second half "
      f"{soak['rss_growth_mb_per_min']:+.2f} MB/min"
    )
  detail = report.get("checkpoint_detail")
  if detail:
    lines.append(
      f"checkpoint_overhead: {report['checkpoint_overhead']:+.3f} "
      f"(every 10 steps; {detail['seconds_per_save'] * 1e3:.0f} ms per save, "
      f"{detail['cpu_seconds_per_save'] * 1e3:.0f} ms of CPU, CPU overhead "
      f"{detail['checkpoint_cpu_overhead']:+.3f}; "
      f"{detail['checkpoint_overhead_every_100_steps']:+.3f} at the default "
      "every 100 steps)"
    )
  if "sharding_overhead_8dev" in report:
    lines.append(
      f"sharding_overhead_8dev: {report['sharding_overhead_8dev']:.3f}"
    )
  return "\n".join(lines)


def main(f: dict) -> None:
  if f["case"]:  # a subprocess running one case
    import jax  # pylint: disable=g-import-not-at-top

    # compile_seconds means compiling; a persistent cache that the
    # environment turns on (JAX_COMPILATION_CACHE_DIR) would hide it.
    jax.config.update("jax_enable_compilation_cache", False)
    spec = json.loads(f["case"])
    print(json.dumps(CASES[spec.pop("kind")](spec)))
    return
  unknown = sorted(set(f["sections"]) - set(SECTIONS))
  if unknown:
    raise app.UsageError(
      f"--sections: unknown {unknown}; valid: {list(SECTIONS)}"
    )
  sections = set(f["sections"])
  quick, config = f["quick"], os.path.abspath(f["config"])
  import jax  # pylint: disable=g-import-not-at-top

  report = {
    "machine": machine_info(),
    "quick": quick,
    "config": config,
    "matmul_peak_gflops": matmul_peak_gflops(),
    "matmul_peak_gflops_highest": matmul_peak_gflops(
      precision=jax.lax.Precision.HIGHEST
    ),
    # Measured by each digits case in its own process; the median of them.
    "memory_bandwidth_gbs": None,
  }
  cases = []
  if "digits" in sections:
    digits = plan(
      quick,
      [int(n) for n in f["particles"] or []],
      [int(w) for w in f["unroll_lengths"] or []],
      config,
    )
    progress = console.Progress(len(digits), "digits cases")
    for spec in digits:
      progress.step(
        f"{spec['lopt']} {spec['estimator']} N={spec['num_particles']} "
        f"W={spec['unroll_length']}"
      )
      case = run_case(spec)
      add_roofline(
        case, report["matmul_peak_gflops"], case["memory_bandwidth_gbs"]
      )
      cases.append(case)
    report["memory_bandwidth_gbs"] = statistics.median(
      c["memory_bandwidth_gbs"] for c in cases
    )
  if "lorenz" in sections and not quick:
    cases.append(
      run_case(dict(kind="lorenz", num_particles=200, unroll_length=100))
    )
  if "budget" in sections:
    seconds = 10.0 if quick else f["budget_seconds"]
    cases.append(run_case(dict(kind="budget", config=config, seconds=seconds)))
  report["cases"] = cases
  report["memory"] = {"particles": memory_scaling(cases), "soak": None}
  if "soak" in sections:
    soak = (
      dict(kind="soak", config=_repo_config("tiny"), seconds=15.0)
      if quick
      else dict(kind="soak", config=config, seconds=f["soak_seconds"])
    )
    if soak["seconds"] > 0:
      report["memory"]["soak"] = run_case(soak)
  reps = 2 if quick else 10
  if "checkpoint" in sections:
    detail = run_case(
      dict(
        kind="checkpoint",
        config=config,
        num_particles=16,
        unroll_length=10,
        reps=reps,
      )
    )
    report["checkpoint_overhead"] = detail["checkpoint_overhead"]
    report["checkpoint_detail"] = detail
  if "sharding" in sections:
    spec = dict(
      kind="sharding",
      config=config,
      num_particles=16,
      unroll_length=10,
      reps=reps // 2 + 1,
    )
    sharding = {d: run_case(spec, cpu_devices=d) for d in (1, 8)}
    report["sharding_overhead_8dev"] = (
      sharding[8]["seconds_per_10_steps"] / sharding[1]["seconds_per_10_steps"]
    )
    report["sharding_detail"] = sharding
  with open(f["output"], "w") as out:
    json.dump(report, out, indent=2)
  print(format_table(report))
  print(f"Wrote {f['output']}")


if __name__ == "__main__":
  console.run_program(main, define_flags)
