"""Estimator diagnostics: the empirical variance of one gradient estimate.

    est = estimators.make("nres", system, num_particles=10_000,
                          unroll_length=10, sigma=0.1)
    v = analysis.estimator_variance(est, theta, jax.random.key(0), 50_000)
    v.trace, v.trace_se, v.variance, v.mean

`estimator_variance` measures the variance of a *single* particle's
estimate at a fixed theta, with no outer update: what the variance analysis
of the NRES paper is about (algorithms.md §7, O2). Samples come from
`particle_estimates` of step-unlocked particles, each at its own uniformly
drawn window of its episode, so that both the within-window noise and the
spread between windows count. The variance of the estimate that an outer
step applies (the mean over N particles) is this over N; `info["grad_var"]`
of `estimate` reports that from a single call.

Run as a program, it makes the NRES-vs-PES variance figure (variance as the
truncation length W varies at fixed T on the linear-quadratic system, Monte
Carlo against the exact values):

    python -m lopt.analysis --output_dir=docs/figures
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging
from jax.flatten_util import ravel_pytree

from lopt import console, estimators, jsonio, plots, systems

PyTree = Any

#: The exact PES/NRES per-estimate variance ratios on the O2 system at
#: T = 100 (algorithms.md §7, O2), by W.
ORACLE_RATIO = {
  1: 2.44,
  2: 2.31,
  5: 2.07,
  10: 1.80,
  20: 1.49,
  25: 1.41,
  50: 1.19,
  100: 1.00,
}


class VarianceEstimate(NamedTuple):
  """The empirical distribution of one particle's gradient estimate.

  Attributes:
    mean: the mean estimate, with theta's structure.
    mean_se: the standard error of `mean`, per coordinate.
    variance: the per-coordinate variance of one estimate (ddof = 1), with
      theta's structure.
    variance_se: its standard error, per coordinate.
    trace: the trace of the covariance of one estimate (sum of `variance`).
    trace_se: the standard error of `trace`.
    num_samples: how many estimates were drawn.
  """

  mean: PyTree
  mean_se: PyTree
  variance: PyTree
  variance_se: PyTree
  trace: float
  trace_se: float
  num_samples: int


def estimate_samples(
  estimator: estimators.Estimator,
  theta: PyTree,
  key: jax.Array,
  num_samples: int,
) -> np.ndarray:
  """Draws `num_samples` independent single-particle estimates at theta.

  Runs ceil(num_samples / N) batches of N = `estimator.num_particles`
  particles, each batch from its own `init` (its own step-unlocking and
  burn-in), then one call of `particle_estimates`. Batches run one after
  another inside one jitted `lax.map`, so memory stays at one batch.

  Returns:
    An array [num_samples, d] of flattened estimates (theta raveled with
    `jax.flatten_util.ravel_pytree`).
  """
  if num_samples < 2:
    raise ValueError(f"num_samples must be >= 2, got {num_samples}")
  if (
    not isinstance(estimator, estimators.FullES) and not estimator.step_unlocked
  ):
    logging.warning(
      "%r has lockstep particles: they all sit at the same window, so "
      "the samples miss the spread between windows. Use step_unlocked="
      "True for the per-estimate variance.",
      estimator,
    )
  batches = math.ceil(num_samples / estimator.num_particles)

  @jax.jit
  def run(theta, keys):
    def batch(batch_key):
      k_init, k_call = jax.random.split(batch_key)
      state = estimator.init(theta, k_init)
      grads, _, _ = estimator.particle_estimates(theta, state, k_call)
      return jax.vmap(lambda g: ravel_pytree(g)[0])(grads)

    return jax.lax.map(batch, keys)

  samples = run(theta, jax.random.split(key, batches))
  return np.asarray(samples).reshape(-1, samples.shape[-1])[:num_samples]


def estimator_variance(
  estimator: estimators.Estimator,
  theta: PyTree,
  key: jax.Array,
  num_samples: int,
) -> VarianceEstimate:
  """The empirical per-estimate variance (and mean) of an estimator.

  Args:
    estimator: any lopt estimator; build it with `step_unlocked=True` (the
      default) so that samples cover every window of the episode. Its
      `num_particles` is the batch size of the sampling, not a statistic.
    theta: the fixed meta-parameters (no outer update is made).
    key: the PRNG key of all samples.
    num_samples: the number of single-particle estimates.

  Returns:
    A `VarianceEstimate`. Standard errors come from the same samples: the
    trace's is std(|g_i - mean|^2) / sqrt(M).
  """
  samples = np.asarray(
    estimate_samples(estimator, theta, key, num_samples), np.float64
  )
  _, unravel = ravel_pytree(theta)
  m = samples.shape[0]
  mean = samples.mean(axis=0)
  centered = samples - mean
  squared = centered**2
  variance = squared.sum(axis=0) / (m - 1)
  per_sample_trace = squared.sum(axis=1)

  def tree(x):
    return jax.tree.map(np.asarray, unravel(jnp.asarray(x)))

  return VarianceEstimate(
    mean=tree(mean),
    mean_se=tree(np.sqrt(variance / m)),
    variance=tree(variance),
    variance_se=tree(squared.std(axis=0, ddof=1) / math.sqrt(m)),
    trace=float(per_sample_trace.sum() / (m - 1)),
    trace_se=float(per_sample_trace.std(ddof=1) / math.sqrt(m)),
    num_samples=m,
  )


def exact_lq_variance(
  system: systems.LinearQuadratic,
  theta,
  unroll_length: int,
  noise_period: int | None = None,
) -> dict[str, float]:
  """Exact per-estimate trace variance of GPES-K on the linear-quadratic system.

  For a step-unlocked particle (its window j uniform over the episode's T/W
  windows) whose credit consists of blocks b with partial gradients
  H_b = (1/W) sum_{t in j} sum_{tau in b} dL_t/dtheta_tau and h = sum_b H_b:
  tr Var(g | j) = B d sum_b |H_b|^2 + |h|^2 (Isserlis), and the total is
  E_j[tr Var(g | j)] + E_j |h_j - g|^2 (algorithms.md O2).

  Args:
    system: the linear-quadratic system (T = system.horizon).
    theta: the point, shape (d,).
    unroll_length: W; must divide T.
    noise_period: K, a multiple of W; None or >= T is NRES (one block), W
      is PES.

  Returns:
    {"trace": total trace variance, "within": E_j tr Var(g|j),
    "between": E_j |h_j - g|^2, "gradient_norm2": |g|^2}.
  """
  big_t, w = system.horizon, unroll_length
  k = big_t if noise_period is None else min(noise_period, big_t)
  if big_t % w or (k < big_t and k % w):
    raise ValueError(
      f"need W | T and K a multiple of W (or K >= T); got "
      f"T={big_t}, W={w}, K={noise_period}"
    )
  partials = system._partials(theta)  # pylint: disable=protected-access
  c2 = float(np.sum(np.asarray(system.c, np.float64) ** 2))
  d = len(system.c)
  steps = np.arange(1, big_t + 1)
  blocks = (steps - 1) // k
  within, means = [], []
  for j in range(big_t // w):
    rows = partials[j * w : (j + 1) * w]  # dL_t/dtheta_tau (scalar factor)
    num_blocks = blocks[(j + 1) * w - 1] + 1
    h_b = np.array([rows[:, blocks == b].sum() / w for b in range(num_blocks)])
    h = h_b.sum()
    within.append(num_blocks * d * c2 * np.sum(h_b**2) + c2 * h**2)
    means.append(h)
  means = np.asarray(means)
  between = c2 * np.mean((means - means.mean()) ** 2)
  within_mean = float(np.mean(within))
  return {
    "trace": within_mean + float(between),
    "within": within_mean,
    "between": float(between),
    "gradient_norm2": float(c2 * means.mean() ** 2),
  }


def variance_vs_unroll_length(
  unroll_lengths: Sequence[int] = tuple(ORACLE_RATIO),
  num_samples: int = 20_000,
  seed: int = 0,
  horizon: int = 100,
  theta: Sequence[float] = (0.2, 0.1),
  sigma: float = 0.1,
  batch: int = 10_000,
) -> dict[str, Any]:
  """NRES vs PES per-estimate variance as W varies at fixed T (O2 system).

  Monte Carlo with `estimator_variance` (float64, step-unlocked) next to the
  exact values of `exact_lq_variance`.

  Returns:
    A JSON-able dict: `unroll_lengths`, `exact` and `monte_carlo` (per
    estimator a list of trace variances, Monte Carlo with `*_se`), the
    ratios PES/NRES (`exact.ratio`, `monte_carlo.ratio`, `.ratio_se`) and
    the oracle ratios of algorithms.md (`oracle_ratio`, where known).
  """
  system = systems.LinearQuadratic(horizon=horizon)
  result = {
    "horizon": horizon,
    "theta": list(theta),
    "sigma": sigma,
    "num_samples": num_samples,
    "unroll_lengths": [int(w) for w in unroll_lengths],
    "exact": {"pes": [], "nres": [], "ratio": []},
    "monte_carlo": {
      "pes": [],
      "pes_se": [],
      "nres": [],
      "nres_se": [],
      "ratio": [],
      "ratio_se": [],
    },
    "oracle_ratio": [
      ORACLE_RATIO.get(int(w)) if horizon == 100 else None
      for w in unroll_lengths
    ],
  }
  key = jax.random.key(seed)
  with jax.enable_x64(True):
    theta_arr = jnp.asarray(theta, jnp.float64)
    for i, w in enumerate(unroll_lengths):
      pes = exact_lq_variance(system, theta, w, w)["trace"]
      nres = exact_lq_variance(system, theta, w, None)["trace"]
      result["exact"]["pes"].append(pes)
      result["exact"]["nres"].append(nres)
      result["exact"]["ratio"].append(pes / nres)
      mc = {}
      for j, name in enumerate(("pes", "nres")):
        est = estimators.make(
          name,
          system,
          num_particles=min(batch, num_samples),
          unroll_length=int(w),
          sigma=sigma,
        )
        mc[name] = estimator_variance(
          est, theta_arr, jax.random.fold_in(key, 2 * i + j), num_samples
        )
        result["monte_carlo"][name].append(mc[name].trace)
        result["monte_carlo"][f"{name}_se"].append(mc[name].trace_se)
      ratio = mc["pes"].trace / mc["nres"].trace
      result["monte_carlo"]["ratio"].append(ratio)
      result["monte_carlo"]["ratio_se"].append(
        ratio
        * math.hypot(
          mc["pes"].trace_se / mc["pes"].trace,
          mc["nres"].trace_se / mc["nres"].trace,
        )
      )
      logging.info(
        "W=%d: PES %.1f (exact %.1f), NRES %.1f (exact %.1f), "
        "ratio %.3f (exact %.3f)",
        w,
        mc["pes"].trace,
        pes,
        mc["nres"].trace,
        nres,
        ratio,
        pes / nres,
      )
  return result


def define_flags() -> dict[str, flags.FlagHolder]:
  """The command-line flags (see `lopt.console.run_program`)."""
  return {
    "output_dir": flags.DEFINE_string(
      "output_dir", ".", "Where variance_vs_w.{json,png} go."
    ),
    "num_samples": flags.DEFINE_integer(
      "num_samples", 20_000, "Single-particle estimates per point."
    ),
    "seed": flags.DEFINE_integer("seed", 0, "PRNG seed."),
  }


def main(f: dict[str, Any]) -> None:
  output_dir = f["output_dir"]
  result = variance_vs_unroll_length(
    num_samples=f["num_samples"], seed=f["seed"]
  )
  os.makedirs(output_dir, exist_ok=True)
  json_path = jsonio.dump(
    result, os.path.join(output_dir, "variance_vs_w.json")
  )
  png = plots.variance_vs_unroll_length(
    result, os.path.join(output_dir, "variance_vs_w.png")
  )
  print(format_table(result))
  print(f"Wrote {json_path} and {png}")


def format_table(result: dict[str, Any]) -> str:
  """The variance-vs-W numbers as a Markdown table."""
  lines = [
    "| W | PES trace var, MC (exact) | NRES trace var, MC (exact) | "
    "PES/NRES exact | PES/NRES MC ± SE | algorithms.md O2 |",
    "|---|---|---|---|---|---|",
  ]
  mc, exact = result["monte_carlo"], result["exact"]
  for i, w in enumerate(result["unroll_lengths"]):
    lines.append(
      f"| {w} | {mc['pes'][i]:.1f} ({exact['pes'][i]:.1f}) | "
      f"{mc['nres'][i]:.1f} ({exact['nres'][i]:.1f}) | "
      f"{exact['ratio'][i]:.3f} | {mc['ratio'][i]:.3f} ± "
      f"{mc['ratio_se'][i]:.3f} | {result['oracle_ratio'][i]} |"
    )
  return "\n".join(lines)


if __name__ == "__main__":
  console.run_program(main, define_flags)
