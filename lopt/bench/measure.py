"""What the benchmark measures with: the machine's ceilings and the cost model.

The float32 matmul peak and the streaming memory bandwidth of the default
backend (measured in the calling process), resident memory, XLA's FLOP
count of a compiled program, the hand counts of an inner step's matmul
FLOPs and of the bytes it must move at the least, and the roofline that
puts a measured rate against both ceilings. `lopt.bench` uses them; each
is small enough to check by hand (tests/test_bench.py does).
"""

from __future__ import annotations

import math
import os
import platform
import resource
import statistics
import time


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


def on_accelerator() -> bool:
  import jax  # pylint: disable=g-import-not-at-top

  return jax.default_backend() != "cpu"


def median_seconds(fn, *args, reps: int) -> float:
  """Median wall-clock of `fn(*args)` after one warm-up call."""
  import jax  # pylint: disable=g-import-not-at-top

  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def dispatch_seconds(steps_fn, data, run_state, reps: int) -> list[float]:
  """Wall-clock of `reps` chained dispatches of `steps_fn(data, run_state)`
  after one warm-up dispatch. Each dispatch consumes (donates) the state the
  previous one returned, as the training loop's do."""
  import jax  # pylint: disable=g-import-not-at-top

  run_state, _ = steps_fn(data, run_state)
  jax.block_until_ready(run_state)
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    run_state, _ = steps_fn(data, run_state)
    jax.block_until_ready(run_state)
    times.append(time.perf_counter() - start)
  return times


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

  n = n or (8192 if on_accelerator() else 2048)
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  matmul = jax.jit(lambda a, b: jnp.dot(a, b, precision=precision))
  return 2 * n**3 / median_seconds(matmul, a, b, reps=reps) / 1e9


def memory_bandwidth_gbs(megabytes: int | None = None, reps: int = 10) -> float:
  """Median streaming bandwidth of the default device, GB/s (STREAM triad).

  `a = b + 3 c` over float32 arrays of `megabytes` each (by default 256 MB
  on a CPU, far beyond its caches, and 2 GB on an accelerator), jitted,
  with `a` donated so that the output reuses its buffer (no fresh pages per
  call). Counted as STREAM counts it: 3 arrays moved per call.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  megabytes = megabytes or (2048 if on_accelerator() else 256)
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


def peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
  """The process's resident memory now (Linux), else its peak so far."""
  try:
    with open("/proc/self/statm") as f:
      pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
  except (OSError, ValueError, IndexError):
    return peak_rss_mb()


def device_peak_mb() -> float | None:
  """Peak memory of the first device (accelerators report it), else None."""
  import jax  # pylint: disable=g-import-not-at-top

  stats = jax.local_devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return None if peak is None else peak / 2**20


def xla_flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float(cost.get("flops", math.nan)) if cost else math.nan


def analytic_matmul_flops(task, lopt_cfg, lopt_theta, batch_size: int) -> float:
  """Hand count of one inner step's matmuls (2 FLOPs per multiply-add).

  The learned optimizer's step-count features are the same for every
  parameter, so lopt folds their product with the first layer into its bias:
  only the per-parameter rows of the first kernel count per parameter.
  """
  import jax  # pylint: disable=g-import-not-at-top

  from lopt.learned import (
    features,  # pylint: disable=g-import-not-at-top
  )
  from lopt.learned.config import ADAM_KINDS

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
  shared = len(features.TIME_SCALES) + (lopt_cfg.kind in ADAM_KINDS)
  lopt_kernels[0][0] -= shared
  learned = 2 * task.num_params * sum(a * b for a, b in lopt_kernels)
  learned *= mlp_runs(lopt_cfg)
  return float(forward + backward + learned)


def mlp_runs(lopt_cfg) -> int:
  """How often an inner step runs the per-parameter MLP on every parameter:
  twice for the adaptive kind (on x and -x, `network.reflection_symmetric`)."""
  return 2 if lopt_cfg.kind == "adaptive" else 1


def _layer_outputs(task) -> list[int]:
  """Elements of each layer's output for ONE example of the inner model."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  text = task.objective == "language_model"
  x = jax.ShapeDtypeStruct(
    (1, *task.input_shape), jnp.int32 if text else jnp.float32
  )
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
  optimizer's per-parameter feature rows (8, Adam kinds 10), h_l its
  hidden widths:

  | part | read | written |
  |---|---|---|
  | inner data | the batch: B x (input + label) | |
  | inner model | parameters twice (forward, backward) | the gradient, P |
  | inner activations | each layer's output (B x width) once, its gradient once | the same |
  | lopt state | parameters, gradient, K momenta (Adam kinds: + v; adaptive: + last step) | parameters, K momenta (+ v, + last step) |
  | lopt activations | features F x P, each hidden layer h_l x P, the output 2 x P, once each | the same |

  The hidden layers count at 2 bytes an element when the learned optimizer
  stores them in bfloat16 (`LOptConfig.activation_dtype`); the activations
  count twice for the adaptive kind, whose MLP runs on x and -x
  (`mlp_runs`).

  `min_bytes` is the sum: a step that writes each layer's activation to
  memory once and reads it back once, which is how XLA runs the per-
  parameter MLP here (one activation per layer of all parameters of all
  trajectories). `state_bytes` leaves the activations out: the floor of a
  step fused so that no activation leaves the cache.

  Args:
    task: the inner task (`lopt.tasks.models.Task`).
    lopt_cfg: the learned optimizer (`lopt.learned.config.LOptConfig`).
    dtype_bytes: bytes per element.

  Returns:
    A dict of byte counts: `inner_data`, `inner_model`, `inner_activations`,
    `lopt_state`, `lopt_activations`, `min_bytes` and `state_bytes`.
  """
  from lopt.learned import features
  from lopt.learned.config import ADAM_KINDS

  p, b = task.num_params, task.batch_size
  momenta = len(features.MOMENTUM_DECAYS)
  nominal = lopt_cfg.kind in ADAM_KINDS
  feature_rows = 2 + momenta + 2 * nominal
  # Extra per-parameter state: Adam's v; the adaptive kind's last step.
  extra = nominal + (lopt_cfg.kind == "adaptive")
  hidden_bytes = 2 if lopt_cfg.activation_dtype == "bfloat16" else dtype_bytes
  parts = {
    "inner_data": b * (math.prod(task.input_shape) + 1),
    "inner_model": 2 * p + p,
    "inner_activations": 4 * b * sum(_layer_outputs(task)),
    "lopt_state": (2 + momenta + extra) * p + (1 + momenta + extra) * p,
    "lopt_activations": 2 * p * (feature_rows + 2),
  }
  parts = {k: v * dtype_bytes for k, v in parts.items()}
  parts["lopt_activations"] += 2 * p * sum(lopt_cfg.hidden) * hidden_bytes
  parts["lopt_activations"] *= mlp_runs(lopt_cfg)
  parts["min_bytes"] = sum(parts.values())
  parts["state_bytes"] = (
    parts["min_bytes"] - parts["inner_activations"] - parts["lopt_activations"]
  )
  return parts


def add_roofline(case: dict, peak_gflops: float, bandwidth_gbs: float) -> None:
  """Adds a digits or kinds case's roofline, in place.

  `arithmetic_intensity` is FLOPs per byte of the layer-wise minimum; the
  roofline is min(peak, intensity x bandwidth), and `bound` says which of
  the two limits the case (the ridge point is peak / bandwidth).

  Args:
    case: a `digits_case` or `kinds.kinds_case` result.
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
