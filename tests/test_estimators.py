"""The estimators are right: statistical checks against known gradients.

Every check runs at a fixed theta with fixed seeds, and every tolerance is a
multiple of a standard error computed from the same samples (algorithms.md
§7: oracles O2, O3, O5, O7, O8, O10, O14). Run with `-s` to see the
z-scores and the variance ratio.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

from lopt import estimators, systems
from lopt.train import outer

THETA = (0.2, 0.1)
SIGMA = 0.1
W = 10


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


def lq():
  return systems.LinearQuadratic()


def build(name, system, num_particles, unroll_length=W, **kwargs):
  kwargs.setdefault("noise_period", 20)
  kwargs.setdefault("sigma", SIGMA)
  return estimators.make(
    name,
    system,
    num_particles=num_particles,
    unroll_length=unroll_length,
    **kwargs,
  )


def episode_averages(est, theta, key):
  """Each particle's mean estimate over one whole episode from step 0.

  Particles that start at step 0 and run one episode are independent, so
  these samples give an honest standard error (algorithms.md O6).
  """
  k_init, k_calls = jax.random.split(key)
  calls = est.horizon // est.unroll_length

  @jax.jit
  def run(theta):
    state = est.init(theta, k_init)

    def body(state, call_key):
      grads, state, _ = est.particle_estimates(theta, state, call_key)
      return state, grads

    _, grads = jax.lax.scan(body, state, jax.random.split(k_calls, calls))
    return grads.mean(axis=0)

  return np.asarray(run(jnp.asarray(theta)))


def z_scores(samples, target):
  mean = samples.mean(axis=0)
  se = samples.std(axis=0, ddof=1) / np.sqrt(len(samples))
  return mean, se, (mean - target) / se


@pytest.mark.parametrize(
  "name,extra",
  [
    ("nres", {}),
    ("pes", {}),
    ("gpes", {"noise_period": 20}),
    ("gpes", {"noise_period": 50}),
    ("full_es", {}),
  ],
)
def test_unbiased_estimators_match_the_true_gradient(name, extra):
  system, num = lq(), 20_000
  est = build(name, system, num, step_unlocked=False, **extra)
  samples = episode_averages(est, THETA, jax.random.key(0))
  mean, se, z = z_scores(samples, system.true_gradient(THETA))
  print(f"\n{name}{extra}: mean={mean} se={se} z={z}")
  assert np.all(np.abs(z) < 4), z


@pytest.mark.parametrize("name", ["tes", "tbptt"])
def test_truncated_estimators_miss_the_true_gradient(name):
  system, num = lq(), 20_000
  est = build(name, system, num, step_unlocked=False)
  samples = episode_averages(est, THETA, jax.random.key(1))
  truncated = system.truncated_gradient(THETA, W)
  # SE from the samples; TBPTT is deterministic, so floor it at float eps.
  mean, se, _ = z_scores(samples, truncated)
  se = np.maximum(se, 1e-12)
  z_true = (mean - system.true_gradient(THETA)) / se
  print(f"\n{name}: mean={mean} z vs true gradient={z_true}")
  assert np.all(np.abs(z_true) > 100)
  # In expectation both equal the window-local gradient (oracle O3).
  assert np.all(np.abs(mean - truncated) < 4 * se + 1e-10)


def test_tbptt_over_the_whole_episode_is_backprop():
  system = lq()
  est = build(
    "tbptt", system, 1, unroll_length=system.horizon, step_unlocked=False
  )
  grad, _, _ = est.estimate(
    jnp.asarray(THETA),
    est.init(jnp.asarray(THETA), jax.random.key(0)),
    jax.random.key(1),
  )
  np.testing.assert_allclose(grad, system.true_gradient(THETA), rtol=1e-10)


def test_tbptt_is_the_gradient_of_the_mean_window_loss():
  """Step-unlocked windows, some across an episode end: backprop of the mean.

  The reference differentiates the mean loss of all particles' windows at
  once, as one program; TBPTT's windows each differentiate their own loss
  sum, and the base class averages them.
  """
  system, theta, w = lq(), jnp.asarray(THETA), 7  # 7 does not divide 100
  est = build("tbptt", system, 16, unroll_length=w)
  state = est.init(theta, jax.random.key(0))
  assert np.any(np.asarray(state.counter) > system.horizon - w)  # crosses

  def mean_loss(theta):
    def particle(inner, counter):
      def step(carry, _):
        s, c = carry
        s, loss = system.step(theta, s, c, None)
        done = c + 1 >= system.horizon
        s = jnp.where(done, system.init(None), s)
        return (s, jnp.where(done, 0, c + 1)), loss

      return jax.lax.scan(step, (inner, counter), None, length=w)

    (inner, counter), losses = jax.vmap(particle)(state.inner, state.counter)
    return jnp.mean(losses), (inner, counter)

  (loss, (inner, counter)), expected = jax.value_and_grad(
    mean_loss, has_aux=True
  )(theta)
  grad, new_state, info = jax.jit(est.estimate)(theta, state, jax.random.key(1))
  np.testing.assert_allclose(grad, expected, rtol=1e-12)
  np.testing.assert_allclose(info["loss"], loss, rtol=1e-12)
  np.testing.assert_allclose(new_state.inner, inner, rtol=1e-12)
  np.testing.assert_array_equal(new_state.counter, counter)
  assert int(info["nonfinite"]) == 0 and int(info["steps"]) == 16 * w
  # The particles' own estimates average to it.
  grads = est.particle_estimates(theta, state, jax.random.key(1))[0]
  np.testing.assert_allclose(grads.mean(axis=0), expected, rtol=1e-12)


@dataclasses.dataclass(frozen=True)
class Sqrt:
  """L = sqrt(s) theta + theta^2 with a constant state s: NaN where s < 0."""

  horizon: int = 10

  def init(self, key):
    del key
    return jnp.ones(())

  def step(self, theta, state, t, key):
    del t, key
    return state, jnp.sqrt(state) * theta + theta**2


def test_tbptt_drops_a_diverging_particle_and_counts_its_steps():
  """A NaN loss makes the particle's backprop NaN: it alone is zeroed."""
  system, theta, w = Sqrt(), jnp.asarray(0.3), 5
  est = build("tbptt", system, 3, unroll_length=w, step_unlocked=False)
  state = estimators.TruncatedState(
    inner=jnp.asarray([1.0, -1.0, 4.0]), counter=jnp.zeros(3, jnp.int32)
  )
  grad, new_state, info = jax.jit(est.estimate)(theta, state, jax.random.key(0))
  # Particle 1's first loss is NaN: the step is masked and the episode
  # restarts from s = 1, but backprop multiplied the masked loss's zero
  # cotangent by sqrt(-1). Its window counts as W non-finite steps.
  per_step = np.asarray([1.0 + 2 * 0.3, 0.0, 2.0 + 2 * 0.3])
  np.testing.assert_allclose(grad, per_step[[0, 2]].mean(), rtol=1e-12)
  assert int(info["nonfinite"]) == w
  np.testing.assert_allclose(info["loss"], (0.3 + 0.09 + 0.6 + 0.09) / 2)
  np.testing.assert_array_equal(new_state.inner, [1.0, 1.0, 4.0])
  np.testing.assert_array_equal(new_state.counter, [w, w - 1, w])
  grads, _, info = est.particle_estimates(theta, state, jax.random.key(0))
  np.testing.assert_allclose(grads, per_step, rtol=1e-12)
  assert int(info["nonfinite"]) == w
  # The others are what they are without the diverging particle.
  alone = build("tbptt", system, 2, unroll_length=w, step_unlocked=False)
  healthy = jax.tree.map(lambda x: x[jnp.asarray([0, 2])], state)
  grad_alone, _, info_alone = alone.estimate(theta, healthy, jax.random.key(0))
  np.testing.assert_allclose(grad, grad_alone, rtol=1e-12)
  np.testing.assert_allclose(info["loss"], info_alone["loss"], rtol=1e-12)


@pytest.mark.slow
def test_particle_map_is_the_one_way_over_the_particles():
  """A particle_map sees every burn-in and estimate, with the split keys."""
  system, theta = lq(), jnp.asarray(THETA)
  calls = []

  def recording(window, theta, state, keys, num_steps):
    calls.append((num_steps, keys.shape))
    return estimators.vmap_particles(window, theta, state, keys, num_steps)

  for name in ["nres", "pes", "gpes", "tes", "tbptt", "full_es"]:
    plain = build(name, system, 4, unroll_length=5)
    mapped = build(name, system, 4, unroll_length=5, particle_map=recording)
    calls.clear()
    results = []
    for est in (plain, mapped, plain.with_particle_map(recording)):
      state = est.init(theta, jax.random.key(0))
      results.append(est.estimate(theta, state, jax.random.key(1)))
      results.append(est.particle_estimates(theta, state, jax.random.key(1)))
    burn_in = [] if name == "full_es" else [(system.horizon, (4,))]
    assert calls == 2 * (burn_in + 2 * [(plain.unroll_length, (4,))]), name
    assert plain.particle_map is estimators.vmap_particles
    for other in (results[2:4], results[4:6]):
      for x, y in zip(*map(jax.tree.leaves, (results[:2], other))):
        np.testing.assert_array_equal(x, y)
  with pytest.raises(ValueError, match="particle_map must be a callable"):
    estimators.NRES(
      system, num_particles=4, unroll_length=5, sigma=0.1, particle_map=3
    )


def window_samples(est, theta, key):
  """One step-unlocked window estimate per particle (algorithms.md O2)."""
  k_init, k_call = jax.random.split(key)

  @jax.jit
  def run(theta):
    state = est.init(theta, k_init)
    return est.particle_estimates(theta, state, k_call)[0]

  return np.asarray(run(jnp.asarray(theta)))


# Exact trace variances of one window estimate on the O2 system, W = 10.
ORACLE_TRACE_VARIANCE = {
  "pes": 1221.36,
  "gpes20": 1108.03,
  "gpes50": 846.52,
  "nres": 678.82,
}


@pytest.mark.slow
def test_nres_has_the_least_per_estimate_variance():
  system, num = lq(), 50_000
  variances, errors = {}, {}
  for label, name, period in [
    ("pes", "pes", None),
    ("gpes20", "gpes", 20),
    ("gpes50", "gpes", 50),
    ("nres", "nres", None),
  ]:
    est = build(name, system, num, noise_period=period)
    samples = window_samples(est, THETA, jax.random.key(2))
    mean, se, z = z_scores(samples, system.true_gradient(THETA))
    assert np.all(np.abs(z) < 4), (label, z)
    squared = ((samples - mean) ** 2).sum(axis=1)
    variances[label] = squared.mean()
    errors[label] = squared.std(ddof=1) / np.sqrt(num)
    z_var = (variances[label] - ORACLE_TRACE_VARIANCE[label]) / errors[label]
    print(
      f"\n{label}: trace var {variances[label]:.1f} ± {errors[label]:.1f}"
      f" (exact {ORACLE_TRACE_VARIANCE[label]}, z={z_var:.2f})"
    )
    assert abs(z_var) < 4
  ratio = variances["pes"] / variances["nres"]
  print(
    f"\nPES/NRES per-estimate variance ratio at W={W}, T=100: "
    f"{ratio:.3f} (exact 1.80)"
  )
  order = [variances[k] for k in ("pes", "gpes20", "gpes50", "nres")]
  assert order == sorted(order, reverse=True)
  gap = variances["pes"] - variances["nres"]
  assert gap > 4 * np.hypot(errors["pes"], errors["nres"])


def test_nres_and_full_es_agree_in_expectation_when_w_equals_t():
  system, num = lq(), 20_000
  t = system.horizon
  nres = episode_averages(
    build("nres", system, num, unroll_length=t, step_unlocked=False),
    THETA,
    jax.random.key(3),
  )
  full = episode_averages(
    build("full_es", system, num), THETA, jax.random.key(4)
  )
  diff = nres.mean(0) - full.mean(0)
  se = np.hypot(nres.std(0, ddof=1), full.std(0, ddof=1)) / np.sqrt(num)
  print(f"\nNRES(W=T) - FullES: {diff}, z={diff / se}")
  assert np.all(np.abs(diff / se) < 4)


def test_nres_windows_telescope_to_the_full_es_estimate():
  """Oracle O5: one episode's window means equal FullES with the same eps."""
  system = lq()
  theta = jnp.asarray(THETA)
  est = build("nres", system, 3, step_unlocked=False)
  state = est.init(theta, jax.random.key(0))
  call = jax.jit(est.particle_estimates)
  windows = []
  for call_key in jax.random.split(jax.random.key(1), system.horizon // W):
    grads, state, _ = call(theta, state, call_key)
    windows.append(grads)
  eps = state.noise  # drawn at step 0; kept until the next episode starts

  def mean_loss(th):
    def body(s, t):
      return system.step(th, s, t, None)

    return jnp.mean(
      jax.lax.scan(body, system.init(None), jnp.arange(system.horizon))[1]
    )

  for i in range(3):
    delta = mean_loss(theta + eps[i]) - mean_loss(theta - eps[i])
    full_es = eps[i] * delta / (2 * SIGMA**2)
    np.testing.assert_allclose(
      np.mean([w[i] for w in windows], axis=0), full_es, rtol=1e-10
    )


@pytest.mark.slow
def test_gpes_ends_are_pes_and_nres_bit_for_bit():
  system, theta = lq(), jnp.asarray(THETA)
  key_init, key_call = jax.random.key(5), jax.random.key(6)

  def run(est):
    @jax.jit
    def once(theta):
      return est.estimate(theta, est.init(theta, key_init), key_call)[:2]

    return jax.tree.leaves(once(theta))

  pairs = [
    (
      build("gpes", system, 8, noise_period=system.horizon + 1),
      build("nres", system, 8),
    ),
    (build("gpes", system, 8, noise_period=W), build("pes", system, 8)),
    (
      build("pes", system, 8, unroll_length=100),
      build("nres", system, 8, unroll_length=100),
    ),
  ]
  for a, b in pairs:
    for x, y in zip(run(a), run(b)):
      np.testing.assert_array_equal(x, y)


@dataclasses.dataclass(frozen=True)
class Counter:
  """s <- s + theta, L_t = s_t: dL_t/dtheta = t (algorithms.md O7)."""

  horizon: int = 3

  def init(self, key):
    del key
    return jnp.zeros(())

  def step(self, theta, state, t, key):
    s = state + theta
    return s, s


def test_episode_end_inside_a_window_by_hand():
  """T = 3, W = 2: window B holds L_3 of episode 1 and L_1 of episode 2."""
  system, theta = Counter(), jnp.asarray(0.3)
  est = build("nres", system, 4, unroll_length=2, step_unlocked=False)
  state = est.init(theta, jax.random.key(0))
  window_a, state, _ = est.particle_estimates(theta, state, jax.random.key(1))
  e = state.noise
  window_b, state, _ = est.particle_estimates(theta, state, jax.random.key(2))
  e_new = state.noise
  assert np.all(np.asarray(e) != np.asarray(e_new))
  np.testing.assert_allclose(window_a, 1.5 * e**2 / SIGMA**2, rtol=1e-12)
  np.testing.assert_allclose(
    window_b, (3 * e**2 + e_new**2) / (2 * SIGMA**2), rtol=1e-12
  )
  np.testing.assert_array_equal(state.counter, 1)


@pytest.mark.parametrize(
  "name,expected",
  [("nres", (1.5, 2.0)), ("pes", (1.5, 2.0)), ("tes", (1.5, 1.0))],
)
def test_episode_end_credit_in_expectation(name, expected):
  """O7 in expectation: the truth is (1.5, 2); TES misses window B."""
  system, theta, num = Counter(), jnp.asarray(0.3), 100_000
  est = build(name, system, num, unroll_length=2, step_unlocked=False)

  @jax.jit
  def run():
    state = est.init(theta, jax.random.key(0))
    a, state, _ = est.particle_estimates(theta, state, jax.random.key(1))
    b, _, _ = est.particle_estimates(theta, state, jax.random.key(2))
    return a, b

  for window, target in zip(run(), expected):
    _, _, z = z_scores(np.asarray(window), target)
    assert abs(z) < 4, (name, target, z)


def test_burn_in_leaves_uniform_counters_and_genuine_states():
  """O8: offsets uniform over window starts; states from a real unroll."""
  system, theta, num = lq(), jnp.asarray(THETA), 10_000
  est = build("nres", system, num)
  state = est.init(theta, jax.random.key(7))
  counters = np.asarray(state.counter)
  assert np.all(counters % W == 0)
  observed = np.bincount(counters // W, minlength=system.horizon // W)
  assert stats.chisquare(observed).pvalue > 1e-3
  # Every particle reset once during burn-in and re-ran c_i steps under its
  # own noise: s_c = c.(theta +- eps) * (1 - a^c) / (1 - a).
  c = np.asarray(system.c)
  m = (1 - system.a**counters) / (1 - system.a)
  for sign, member in ((1, 0), (-1, 1)):
    expected = ((np.asarray(THETA) + sign * np.asarray(state.noise)) @ c) * m
    np.testing.assert_allclose(
      state.inner[:, member], expected, rtol=1e-10, atol=1e-12
    )
  # Without W | T the counters are uniform over the whole episode.
  odd = build("nres", systems.LinearQuadratic(horizon=97), num)
  counters = np.asarray(odd.init(theta, jax.random.key(8)).counter)
  assert stats.chisquare(np.bincount(counters, minlength=97)).pvalue > 1e-3


@pytest.mark.slow
def test_same_key_same_result_and_jit_and_pytree_round_trip():
  system, theta = lq(), jnp.asarray(THETA)
  for name in ["nres", "pes", "gpes", "tes", "tbptt", "full_es"]:
    est = build(name, system, 4, unroll_length=4)
    state = jax.jit(est.init)(theta, jax.random.key(0))
    estimate = jax.jit(est.estimate)
    first = estimate(theta, state, jax.random.key(1))
    again = estimate(theta, state, jax.random.key(1))
    leaves, treedef = jax.tree_util.tree_flatten(state)
    assert all(isinstance(x, jax.Array) for x in leaves)
    rebuilt = jax.tree_util.tree_unflatten(treedef, leaves)
    after_round_trip = estimate(theta, rebuilt, jax.random.key(1))
    for x, y, u in zip(*map(jax.tree.leaves, (first, again, after_round_trip))):
      np.testing.assert_array_equal(x, y)
      np.testing.assert_array_equal(x, u)
    assert int(first[2]["steps"]) == est.members * 4 * est.unroll_length
    if name == "nres":  # one eager run: jit must not change the result
      eager = est.estimate(theta, state, jax.random.key(1))
      for x, z in zip(*map(jax.tree.leaves, (first, eager))):
        np.testing.assert_allclose(x, z, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
  "kwargs,field",
  [
    ({"num_particles": 0}, "num_particles"),
    ({"unroll_length": 0}, "unroll_length"),
    ({"unroll_length": 101}, "unroll_length"),
    ({"sigma": 0.0}, "sigma"),
    ({"sigma": -1.0}, "sigma"),
    ({"noise_period": 5}, "noise_period"),
  ],
)
def test_bad_arguments_name_the_field_and_range(kwargs, field):
  args = dict(num_particles=4, unroll_length=10, sigma=0.1, noise_period=20)
  args.update(kwargs)
  with pytest.raises(ValueError, match=field) as error:
    estimators.GPES(lq(), **args)
  assert "[" in str(error.value) or ">" in str(error.value)
  with pytest.raises(ValueError, match="valid|one of"):
    estimators.make("nres2", lq(), num_particles=4, unroll_length=10, sigma=0.1)


GOOD_SETTINGS = dict(num_particles=4, unroll_length=10)


@pytest.mark.parametrize(
  "name,settings,expected",
  [
    ("nres", {"sigma": 0.1}, {"sigma": 0.1, "step_unlocked": True}),
    ("pes", {"sigma": 1, "step_unlocked": False}, {"sigma": 1.0}),
    ("gpes", {"sigma": 0.1, "noise_period": 10}, {"noise_period": 10}),
    ("tes", {"sigma": 0.1, "noise_period": 0}, {"sigma": 0.1}),
    ("tbptt", {"sigma": None, "noise_period": None}, {"unroll_length": 10}),
    ("tbptt", {"sigma": 0.5, "noise_period": 3}, {"num_particles": 4}),
    ("full_es", {"sigma": 0.1, "unroll_length": None}, {"num_particles": 4}),
    ("full_es", {"sigma": 0.1, "unroll_length": 100}, {"sigma": 0.1}),
  ],
)
def test_check_settings_accepts_good_settings(name, settings, expected):
  settings = {**GOOD_SETTINGS, **settings}
  kwargs = estimators.check_settings(name, horizon=100, **settings)
  assert kwargs.items() >= expected.items()
  # Exactly what the constructor takes: make builds the same estimator.
  est = estimators.REGISTRY[name](lq(), **kwargs)
  made = estimators.make(name, lq(), **settings)
  assert repr(made) == repr(est)
  ignored = {"tbptt": "sigma", "full_es": "unroll_length"}.get(name)
  assert ignored not in kwargs and "horizon" not in kwargs


@pytest.mark.parametrize(
  "name,settings,message",
  [
    ("nres2", {}, r"estimator.name must be one of \['full_es', 'gpes'"),
    ("nres", {"num_particles": 0}, r"estimator.num_particles .*>= 1, got 0"),
    ("nres", {"num_particles": 2.0}, r"num_particles .* integer"),
    ("nres", {"num_particles": True}, "num_particles"),
    ("nres", {"unroll_length": 0}, r"unroll_length .*\[1, 100\].*, got 0"),
    ("nres", {"unroll_length": 101}, r"unroll_length .*\[1, 100\].*101"),
    ("full_es", {"unroll_length": 101}, r"estimator.unroll_length"),
    ("tes", {"unroll_length": None}, "estimator.unroll_length is required"),
    ("nres", {"sigma": None}, "estimator.sigma is required for nres"),
    ("nres", {"sigma": 0.0}, r"estimator.sigma must be .* > 0, got 0.0"),
    ("pes", {"sigma": -1.0}, "estimator.sigma"),
    ("tes", {"sigma": float("nan")}, "estimator.sigma .* finite"),
    ("full_es", {"sigma": float("inf")}, "estimator.sigma .* finite"),
    ("tbptt", {"sigma": 0.0}, "estimator.sigma"),  # ignored, still checked
    ("tbptt", {"sigma": "0.1"}, "estimator.sigma"),
    ("gpes", {"noise_period": None}, "estimator.noise_period is required"),
    ("gpes", {"noise_period": 0}, "estimator.noise_period is required"),
    ("gpes", {"noise_period": 5}, r"noise_period .*>= 10.*got 5"),
    ("nres", {"noise_period": -3}, r"estimator.noise_period .*>= 1, got -3"),
    ("tbptt", {"noise_period": 2.5}, "estimator.noise_period"),
    ("nres", {"step_unlocked": "no"}, "estimator.step_unlocked .*True or"),
    ("nres", {"horizon": 0}, r"horizon must be an integer >= 1, got 0"),
  ],
)
def test_check_settings_rejects_bad_settings(name, settings, message):
  settings = {**GOOD_SETTINGS, "sigma": 0.1, "noise_period": 20, **settings}
  horizon = settings.pop("horizon", 100)
  with pytest.raises(ValueError, match=message):
    estimators.check_settings(name, horizon=horizon, **settings)
  if horizon == lq().horizon:  # make runs the same checks
    with pytest.raises(ValueError, match=message):
      estimators.make(name, lq(), **settings)


def test_steps_per_estimate_and_burn_in_steps_count_every_member():
  system, theta = lq(), jnp.asarray(THETA)
  for name, members in [("nres", 2), ("tes", 3), ("tbptt", 1), ("full_es", 2)]:
    for unlocked in (True, False):
      est = build(name, system, 4, unroll_length=5, step_unlocked=unlocked)
      w = system.horizon if name == "full_es" else 5
      assert est.steps_per_estimate == members * 4 * w
      burn_in = unlocked and name != "full_es"
      assert est.burn_in_steps == (members * 4 * system.horizon) * burn_in
      state = est.init(theta, jax.random.key(0))
      info = est.estimate(theta, state, jax.random.key(1))[2]
      assert int(info["steps"]) == est.steps_per_estimate


@dataclasses.dataclass(frozen=True)
class Fragile:
  """A loss that is NaN whenever theta + eps < 0 (a 'diverging' run)."""

  horizon: int = 10

  def init(self, key):
    return jnp.zeros(())

  def step(self, theta, state, t, key):
    return state, jnp.sqrt(theta) + (theta - 1.0) ** 2


@pytest.mark.slow
def test_nonfinite_losses_are_masked_and_counted():
  system, theta = Fragile(), jnp.asarray(0.05)
  for name in ["nres", "pes", "tes", "full_es"]:
    est = build(name, system, 64, unroll_length=5, sigma=0.1)
    grad, _, info = jax.jit(
      lambda th, est=est: est.estimate(
        th, est.init(th, jax.random.key(0)), jax.random.key(1)
      )
    )(theta)
    assert np.isfinite(grad) and np.isfinite(info["loss"])
    assert 0 < int(info["nonfinite"]) < 64 * est.unroll_length
  est = build("nres", system, 64, unroll_length=5, sigma=0.1)
  final, history = outer.meta_train(
    est, optax.sgd(1e-3), theta, jax.random.key(2), 20
  )
  assert np.isfinite(final) and np.all(np.isfinite(history["theta"]))


def influence_balancing(name, unroll_length):
  system = systems.InfluenceBalancing()  # horizon far beyond the run
  est = build(
    name, system, 500, unroll_length=unroll_length, step_unlocked=False
  )
  theta, _ = outer.meta_train(
    est, optax.sgd(1e-4), jnp.asarray(0.5), jax.random.key(3), 3000
  )
  return float(theta)


def test_influence_balancing_pes_and_nres_find_the_optimum():
  for name in ["pes", "nres"]:
    theta = influence_balancing(name, 1)
    print(f"\n{name}: theta={theta:.6f} (optimum -1/6)")
    assert abs(theta - systems.influence_balancing.OPTIMUM) < 1e-3


def test_influence_balancing_short_truncations_go_the_wrong_way():
  for name in ["tbptt", "tes"]:
    theta = influence_balancing(name, 1)
    print(f"\n{name}(W=1): theta={theta:.4f}")
    assert theta > 0.5
  theta = influence_balancing("tbptt", 10)
  # Diverges, away from the optimum: 9061 after the 3000 steps, growing by
  # e every ~320 steps. A NaN fails this, unlike `not abs(theta) < 100`.
  assert theta > 1e3, theta


@pytest.mark.slow
def test_info_reports_the_variance_of_the_estimate():
  """grad_var is Var(mean estimate): the particles' spread over N."""
  system, theta, num = lq(), jnp.asarray(THETA), 20_000
  est = build("nres", system, num)
  state = est.init(theta, jax.random.key(9))
  grad, _, info = jax.jit(est.estimate)(theta, state, jax.random.key(10))
  samples = np.asarray(
    jax.jit(est.particle_estimates)(theta, state, jax.random.key(10))[0]
  )
  np.testing.assert_allclose(
    info["grad_var"] * num, samples.var(axis=0, ddof=1).sum(), rtol=1e-8
  )
  squared = ((samples - samples.mean(0)) ** 2).sum(axis=1)
  se = squared.std(ddof=1) / np.sqrt(num)
  assert abs(info["grad_var"] * num - ORACLE_TRACE_VARIANCE["nres"]) < 4 * se
  np.testing.assert_allclose(
    info["grad_snr"], np.sum(np.asarray(grad) ** 2) / info["grad_var"] - 1
  )
