"""`lopt.analysis`: the per-estimate variance against exact oracles.

The oracles are algorithms.md §7: O1 (a one-step quadratic, any pytree) and
O2 (the linear-quadratic unrolled system, T = 100). Tolerances are 4
standard errors computed from the same samples; seeds are fixed.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt import analysis, estimators, systems

THETA = (0.2, 0.1)
SIGMA = 0.1


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


def lq_variance(name, unroll_length, num_samples, seed):
  est = estimators.make(
    name,
    systems.LinearQuadratic(),
    num_particles=min(num_samples, 25_000),
    unroll_length=unroll_length,
    sigma=SIGMA,
  )
  return analysis.estimator_variance(
    est, jnp.asarray(THETA), jax.random.key(seed), num_samples
  )


@pytest.mark.parametrize(
  "name,trace,per_coordinate",
  [
    ("nres", 678.82, (412.10, 266.72)),
    ("pes", 1221.36, (683.36, 537.99)),
  ],
)
def test_variance_at_w10_matches_the_oracle(name, trace, per_coordinate):
  v = lq_variance(name, 10, 50_000, seed=0)
  true_grad = systems.LinearQuadratic().true_gradient(THETA)
  z_mean = (v.mean - true_grad) / v.mean_se
  z_trace = (v.trace - trace) / v.trace_se
  z_coord = (v.variance - np.asarray(per_coordinate)) / v.variance_se
  print(
    f"\n{name}: trace {v.trace:.1f} ± {v.trace_se:.1f} (exact {trace}), "
    f"per coordinate {v.variance} ± {v.variance_se}, mean z {z_mean}"
  )
  assert v.num_samples == 50_000
  assert np.all(np.abs(z_mean) < 4)
  assert abs(z_trace) < 4
  assert np.all(np.abs(z_coord) < 4)
  np.testing.assert_allclose(np.sum(v.variance), v.trace, rtol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("unroll_length", [1, 50])
def test_pes_over_nres_ratio_matches_the_oracle(unroll_length):
  pes = lq_variance("pes", unroll_length, 30_000, seed=1)
  nres = lq_variance("nres", unroll_length, 30_000, seed=2)
  ratio = pes.trace / nres.trace
  se = ratio * np.hypot(pes.trace_se / pes.trace, nres.trace_se / nres.trace)
  expected = analysis.ORACLE_RATIO[unroll_length]
  print(
    f"\nW={unroll_length}: PES/NRES {ratio:.3f} ± {se:.3f} (exact {expected})"
  )
  assert abs(ratio - expected) < 4 * se


def test_exact_variances_reproduce_the_o2_table():
  system = systems.LinearQuadratic()
  exact = lambda w, k=None: analysis.exact_lq_variance(  # noqa: E731
    system, THETA, w, k
  )["trace"]
  np.testing.assert_allclose(
    [exact(10, 10), exact(10, 20), exact(10, 50), exact(10), exact(100)],
    [1221.36, 1108.03, 846.52, 678.82, 582.74],
    atol=0.01,
  )
  for w, ratio in analysis.ORACLE_RATIO.items():
    assert round(exact(w, w) / exact(w), 2) == ratio
  # O4: the between-window part of NRES's variance at W = 10.
  between = analysis.exact_lq_variance(system, THETA, 10)["between"]
  assert round(between, 1) == 24.0
  with pytest.raises(ValueError, match="W | T"):
    analysis.exact_lq_variance(system, THETA, 7)


@dataclasses.dataclass(frozen=True)
class OneStepQuadratic:
  """O1: f(theta) = |theta - 1|^2 / 2 in one step, theta any pytree."""

  horizon: int = 1

  def init(self, key):
    del key
    return jnp.zeros(())

  def step(self, theta, state, t, key):
    del t, key
    leaves = jax.tree.leaves(theta)
    return state, 0.5 * sum(jnp.sum((x - 1.0) ** 2) for x in leaves)


def test_pytree_theta_and_a_sample_count_off_the_batch_size():
  theta = {"a": jnp.asarray(0.5), "b": jnp.asarray([2.0, -1.0])}
  est = estimators.make(
    "nres", OneStepQuadratic(), num_particles=3_000, unroll_length=1, sigma=0.1
  )
  v = analysis.estimator_variance(est, theta, jax.random.key(3), 20_000)
  assert v.num_samples == 20_000  # 7 batches of 3,000, the last one cut
  assert jax.tree.structure(v.mean) == jax.tree.structure(theta)
  assert v.variance["b"].shape == (2,)
  grad = {"a": -0.5, "b": np.asarray([1.0, -2.0])}
  for key in grad:
    z = (v.mean[key] - grad[key]) / v.mean_se[key]
    assert np.all(np.abs(z) < 4), (key, z)
  # O1: one antithetic estimate has trace variance (d + 1) |grad|^2.
  expected = 4 * (0.25 + 1.0 + 4.0)
  assert abs(v.trace - expected) < 4 * v.trace_se, (v.trace, expected)


def test_too_few_samples_is_an_error():
  est = estimators.make(
    "nres", OneStepQuadratic(), num_particles=4, unroll_length=1, sigma=0.1
  )
  with pytest.raises(ValueError, match="num_samples"):
    analysis.estimator_variance(est, jnp.zeros(()), jax.random.key(0), 1)
