"""Estimators on systems that use their keys, in float32, and their guards.

tests/test_estimators.py checks the estimators' statistics in float64 on
systems that ignore their random key. A bug that gives the two members of an
antithetic pair different keys (so different data, noise or fresh episodes)
keeps the estimate unbiased but multiplies its variance on real inner
training, and would pass there. Here:

* a system whose init and every step draw from their keys, but whose
  dynamics do not depend on theta: the members of a pair must then compute
  bit for bit the same thing, so every step's L+ - L- is exactly 0 and the
  gradient is exactly 0, after episode ends (resets) and burn-in included;
* a linear-quadratic system with a random start and random per-step inputs,
  whose expected gradient is known in closed form: in float32 at the
  application's sigma = 0.01, the unbiased estimators are within 4 standard
  errors of it, and their variance is that of common random numbers;
* the masked average's exact value on a hand-built case;
* a non-finite gradient from a real `Estimator` subclass is not applied by
  `outer.outer_step` and is counted in `skipped_updates` by `lopt.train`.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_estimators import episode_averages

from configs import tiny
from lopt import estimators, experiment, metrics, systems, train
from lopt.estimators import base
from lopt.train import outer
from lopt.train import step as train_step

ES = ["nres", "pes", "gpes", "tes", "full_es"]
UNBIASED = ["nres", "pes", "gpes", "full_es"]


@pytest.fixture(autouse=True)
def float32():
  """The application's precision, whatever another test module enabled."""
  with jax.enable_x64(False):
    yield


def make(name, system, num_particles, unroll_length, sigma, **kwargs):
  if name == "gpes":
    kwargs.setdefault("noise_period", 2 * unroll_length)
  return estimators.make(
    name,
    system,
    num_particles=num_particles,
    unroll_length=None if name == "full_es" else unroll_length,
    sigma=sigma,
    **kwargs,
  )


# -- the members of a pair share keys, data and resets ------------------------


@dataclasses.dataclass(frozen=True)
class NoisyMinibatchSGD:
  """SGD on minibatches drawn from the step key, plus injected noise.

  The fresh state is random (its key), every step samples a batch and a
  noise (its key) and the step index enters the update: any difference in
  the keys, data, step counter or fresh state of two members shows in their
  states and losses. Theta does not enter at all, so members that share
  everything are identical bit for bit.
  """

  data: jax.Array
  horizon: int = 7

  def init(self, key):
    return jax.random.normal(key, (3,))

  def step(self, theta, w, t, key):
    del theta
    k_batch, k_noise = jax.random.split(key)
    batch = self.data[jax.random.randint(k_batch, (4,), 0, len(self.data))]
    x, y = batch[:, :3], batch[:, 3]
    residual = x @ w - y
    lr = 0.1 / (1.0 + t.astype(w.dtype))
    noise = 0.01 * jax.random.normal(k_noise, (3,))
    return w - lr * (x.T @ residual) / 4 + noise, jnp.mean(residual**2)


def minibatch_system():
  x = np.random.default_rng(0).standard_normal((32, 4)).astype(np.float32)
  x[:, 3] = x[:, :3] @ np.float32([1.0, -2.0, 0.5])
  return NoisyMinibatchSGD(jnp.asarray(x))


@pytest.mark.parametrize(
  "name,unroll_length",
  # W = 3 does not divide T = 7: episodes end inside windows. W = 1 looks at
  # every step on its own.
  # GPES runs PES's and NRES's code with another period: slow suite only.
  [
    pytest.param(name, 3, marks=[pytest.mark.slow] if name == "gpes" else [])
    for name in ES
  ]
  + [("nres", 1)],
)
def test_pair_members_share_keys_data_and_resets(name, unroll_length):
  """With theta out of the dynamics, L+ - L- is 0 at every step, exactly."""
  system = minibatch_system()
  theta = {"log_lr": jnp.float32(-1.0), "w": jnp.ones((3,), jnp.float32)}
  est = make(name, system, 8, unroll_length, sigma=0.01)
  calls = 3 * system.horizon // unroll_length  # about three episodes

  @jax.jit
  def run(theta, key):
    k_init, k_calls = jax.random.split(key)
    state = est.init(theta, k_init)  # step-unlocked: a burn-in with resets

    def body(state, call_key):
      grad, state, info = est.estimate(theta, state, call_key)
      return state, (grad, info, state)

    return jax.lax.scan(body, state, jax.random.split(k_calls, calls))[1]

  grads, info, states = run(theta, jax.random.key(0))
  for leaf in jax.tree.leaves(grads):
    assert leaf.dtype == jnp.float32
    # Every step's term is credit * (L+ - L-) / (2 sigma^2): all exactly 0.
    np.testing.assert_array_equal(leaf, np.zeros_like(leaf))
  np.testing.assert_array_equal(info["nonfinite"], 0)
  # Not vacuous: the losses move from call to call.
  assert len(set(np.asarray(info["loss"]).tolist())) == calls
  if name in ("nres", "pes", "gpes"):
    # The members' states, [calls, N, member, 3], after every call.
    np.testing.assert_array_equal(states.inner[:, :, 0], states.inner[:, :, 1])
    # Not vacuous: the particles sit at different steps, pass episode ends,
    # and each has a state of its own.
    counters = np.asarray(states.counter)
    assert len(set(counters[0])) > 1
    assert np.all(np.any(np.diff(counters, axis=0) < 0, axis=0))
    w = np.asarray(states.inner[-1, :, 0])
    assert len({tuple(row) for row in w}) == len(w)


# -- unbiased in float32 at sigma = 0.01 --------------------------------------


@dataclasses.dataclass(frozen=True)
class NoisyLinearQuadratic(systems.LinearQuadratic):
  """`LinearQuadratic` with a random start and a random input every step.

      s_0 ~ N(0, start^2),  s_t = a s_{t-1} + c . theta + noise * xi_t,
      L_t = (s_t - y)^2 / 2,  xi_t ~ N(0, 1) from the step key.

  The randomness has mean 0 and does not depend on theta, so the gradient
  of the expected mean loss is `LinearQuadratic.true_gradient`: E[s_t] is
  the noise-free s_t, and L_t is quadratic in s_t.
  """

  start: float = 0.5
  noise: float = 0.5

  def init(self, key):
    return self.start * jax.random.normal(key, ())

  def step(self, theta, state, t, key):
    del t
    drive = jnp.dot(jnp.asarray(self.c, state.dtype), theta)
    s = self.a * state + drive + self.noise * jax.random.normal(key, ())
    return s, 0.5 * (s - self.y) ** 2


@pytest.mark.parametrize(
  "name",
  # NRES, the default, in the default suite; the others in the slow one.
  [
    pytest.param(name, marks=[] if name == "nres" else [pytest.mark.slow])
    for name in UNBIASED
  ],
)
def test_unbiased_in_float32_at_sigma_001_with_common_random_numbers(name):
  sigma, pairs, w = 0.01, 20_000, 10
  theta = jnp.asarray([0.2, 0.1], jnp.float32)
  noisy, plain = NoisyLinearQuadratic(), systems.LinearQuadratic()
  expected = plain.true_gradient(theta)  # (12.47, 6.23): also noisy's
  samples = {}
  for label, system in (("noisy", noisy), ("plain", plain)):
    est = make(name, system, pairs, w, sigma, step_unlocked=False)
    samples[label] = np.asarray(
      episode_averages(est, theta, jax.random.key(7)), np.float64
    )
  mean = samples["noisy"].mean(axis=0)
  se = samples["noisy"].std(axis=0, ddof=1) / np.sqrt(pairs)
  z = (mean - expected) / se
  print(f"{name}: mean {mean}, expected {expected}, SE {se}, z {z}")
  assert np.all(np.abs(z) < 4), (name, mean, expected, se)
  # The random start and inputs add variance only through L+ + L-, which
  # they share: the same order as without them (measured 1.2 to 1.4).
  # Members that drew their own inputs would add noise * (xi+ - xi-) to
  # every L+ - L- (measured: ratios of 9 to 100).
  ratio = (
    samples["noisy"].var(axis=0).sum() / samples["plain"].var(axis=0).sum()
  )
  print(f"{name}: variance ratio noisy / noise-free {ratio:.2f}")
  assert ratio < 3, ratio
  # The standard error resolves the gradient to a few percent, so a wrong
  # scale (a lost factor of sigma, a float32 cancellation) cannot hide.
  assert np.all(se < 0.05 * np.abs(expected)), se


# -- the masked average, by hand ----------------------------------------------


def test_masked_average_exact_value():
  """Masked steps leave numerator and denominator alike; exact values."""
  # 3 particles x W = 4 steps: 4, 2 and 0 valid steps. Their gradient sums
  # are over the valid steps only (masked steps add 0).
  grad_sums = {
    "a": jnp.asarray([[4.0, 8.0], [1.0, -3.0], [0.0, 0.0]]),
    "b": jnp.asarray([2.0, 1.0, 0.0]),
  }
  loss_sums = jnp.asarray([2.0, 3.0, 0.0])
  valid = jnp.asarray([4, 2, 0], jnp.int32)
  grad, info = base.average(grad_sums, loss_sums, valid, 12, 24)
  # Means over the 6 valid (particle, step) entries, not over the 12.
  np.testing.assert_allclose(grad["a"], [5.0 / 6, 5.0 / 6], rtol=1e-6)
  np.testing.assert_allclose(grad["b"], 3.0 / 6, rtol=1e-6)
  assert float(info["loss"]) == pytest.approx(5.0 / 6, rel=1e-6)
  assert int(info["nonfinite"]) == 6 and int(info["steps"]) == 24
  count, summary = base.summarize(loss_sums, valid, 12, 24)
  assert int(count) == 6
  assert float(summary["loss"]) == float(info["loss"])
  # Partly masked particles: their estimates are per valid step. With
  # valid counts (4, 2, 1) the per-particle estimates of "b" are 0.5, 0.5,
  # 1.0 and of "a" (1, 2), (0.5, -1.5), (1, 1).
  valid = jnp.asarray([4, 2, 1], jnp.int32)
  sums = {
    "a": jnp.asarray([[4.0, 8.0], [1.0, -3.0], [1.0, 1.0]]),
    "b": jnp.asarray([2.0, 1.0, 1.0]),
  }
  grad, info = base.average(sums, loss_sums, valid, 12, 24)
  np.testing.assert_allclose(grad["a"], [6.0 / 7, 6.0 / 7], rtol=1e-6)
  np.testing.assert_allclose(grad["b"], 4.0 / 7, rtol=1e-6)
  assert float(info["loss"]) == pytest.approx(5.0 / 7, rel=1e-6)
  per_particle = np.asarray([[1.0, 2.0, 0.5], [0.5, -1.5, 0.5], [1.0, 1.0, 1]])
  expected_var = per_particle.var(axis=0, ddof=1).sum() / 3
  assert float(info["grad_var"]) == pytest.approx(expected_var, rel=1e-6)
  # An all-masked call: zeros, not NaN, and every entry counted.
  zeros = jax.tree.map(jnp.zeros_like, sums)
  grad, info = base.average(
    zeros, jnp.zeros(3), jnp.zeros(3, jnp.int32), 12, 24
  )
  for leaf in jax.tree.leaves(grad):
    np.testing.assert_array_equal(leaf, np.zeros_like(leaf))
  assert int(info["nonfinite"]) == 12 and float(info["loss"]) == 0.0
  # Nothing to spread: no noise and no signal, so an SNR of -1, not 0 / 0.
  assert float(info["grad_var"]) == 0.0 and float(info["grad_snr"]) == -1.0


@dataclasses.dataclass(frozen=True)
class LogState:
  """L = theta s + log(s) with a constant state s: NaN for both members
  where s < 0. Fresh episodes start at s = 1."""

  horizon: int = 4

  def init(self, key):
    del key
    return jnp.ones(())

  def step(self, theta, state, t, key):
    del t, key
    return state, theta * state + jnp.log(state)


def test_a_masked_particle_drops_out_of_an_estimate():
  """Through NRES, one step: the NaN particle is in neither sum."""
  sigma, eps, theta = 0.5, 0.2, jnp.float32(0.6)
  est = make("nres", LogState(), 2, 1, sigma=sigma, step_unlocked=False)
  state = est.init(theta, jax.random.key(0))
  # Mid-episode (counter 1: no new noise), noise eps, particle 1 at s = -1.
  noise = jnp.full((2,), eps, jnp.float32)
  state = state._replace(
    inner=jnp.asarray([[1.0, 1.0], [-1.0, -1.0]], jnp.float32),
    noise=noise,
    credit=noise,
    counter=jnp.ones(2, jnp.int32),
  )
  grad, new_state, info = est.estimate(theta, state, jax.random.key(1))
  # Particle 0: L+ - L- = 2 eps s, so its term is eps * 2 eps / (2 sigma^2).
  # The mean is over its 1 valid entry, not over the 2 entries.
  assert float(grad) == pytest.approx(eps**2 / sigma**2, rel=1e-6)
  assert float(info["loss"]) == pytest.approx(0.6, rel=1e-6)
  assert int(info["nonfinite"]) == 1
  # The diverged particle's episode ended: it restarts from a fresh state.
  np.testing.assert_array_equal(new_state.counter, [2, 0])
  np.testing.assert_array_equal(new_state.inner, [[1.0, 1.0], [1.0, 1.0]])


# -- a non-finite gradient is never applied -----------------------------------


class NaNGradients(estimators.Estimator):
  """A real estimator whose gradient is NaN on every `every`-th call.

  It wraps another estimator (its state, steps and info), counting its
  calls in its own per-particle state, and replaces the gradient by NaN on
  calls `every - 1`, `2 * every - 1`, ...; `every = 1` poisons all of them.
  """

  name = "nan_gradients"

  def __init__(self, inner: estimators.Estimator, every: int = 1):
    super().__init__(
      inner.system,
      num_particles=inner.num_particles,
      unroll_length=inner.unroll_length,
      step_unlocked=inner.step_unlocked,
      particle_map=inner.particle_map,
    )
    self.inner, self.every = inner, every
    self.members = inner.members

  def init(self, theta, key):
    return self.inner.init(theta, key)

  def _init_particles(self, theta, counters, key):
    return self.inner._init_particles(theta, counters, key)

  def _window(self, theta, particle, key, num_steps):
    return self.inner._window(theta, particle, key, num_steps)

  def estimate(self, theta, state, key):
    poisoned = self._poisoned(state)
    grad, state, info = self.inner.estimate(theta, state, key)
    grad = jax.tree.map(lambda g: jnp.where(poisoned, jnp.nan, g), grad)
    return grad, state, info

  def _poisoned(self, state):
    if self.every == 1:
      return jnp.asarray(True)
    # Lockstep particles' counters advance by W per call from 0: they
    # count the calls (within an episode).
    calls = state.counter[0] // self.unroll_length
    return calls % self.every == 0


def test_outer_step_skips_a_nonfinite_gradient():
  system = systems.LinearQuadratic(horizon=20)
  inner = make("nres", system, 4, 5, sigma=0.1, step_unlocked=False)
  est = NaNGradients(inner, every=2)
  tx = optax.adam(0.1)
  theta = jnp.asarray([0.2, 0.1], jnp.float32)
  state = outer.init(est, tx, theta, jax.random.key(0))
  step = jax.jit(lambda s, k: outer.outer_step(est, tx, s, k))
  applied = []
  for key in jax.random.split(jax.random.key(1), 4):
    new, info = step(state, key)
    applied.append(bool(info["applied"]))
    same = [
      np.array_equal(a, b)
      for a, b in zip(
        jax.tree.leaves((new.theta, new.opt_state)),
        jax.tree.leaves((state.theta, state.opt_state)),
      )
    ]
    if info["applied"]:
      assert not all(same) and np.isfinite(float(info["grad_norm"]))
    else:
      # Neither theta nor the optimizer state (Adam's count, moments) moved.
      assert all(same)
      assert not np.isfinite(float(info["grad_norm"]))
    for leaf in jax.tree.leaves((new.theta, new.opt_state)):
      assert np.all(np.isfinite(leaf))
    # The particles advance either way: the next window is a new one.
    assert not np.array_equal(
      new.estimator_state.counter, state.estimator_state.counter
    )
    state = new
  assert applied == [False, True, False, True]


@pytest.mark.slow
def test_train_counts_skipped_updates(tmp_path, monkeypatch):
  """A whole run whose every gradient is NaN: theta stays, all are counted."""
  original = experiment.Experiment.estimator
  monkeypatch.setattr(
    experiment.Experiment,
    "estimator",
    lambda self, data: NaNGradients(original(self, data)),
  )
  config = tiny.get_config()
  config.outer.num_steps = 2
  config.eval.every_steps = 0
  config.log.every_steps = 1
  config.estimator.step_unlocked = False  # no burn-in to compile
  run_state = train.train_and_evaluate(config, str(tmp_path))
  rows = [r for r in metrics.read_metrics(tmp_path) if "skipped_updates" in r]
  assert [(r["step"], r["skipped_updates"]) for r in rows] == [(1, 1), (2, 1)]
  data, dataset = experiment.load_data(config)
  initial = train_step.initial_theta(experiment.build(config, dataset))
  for a, b in zip(
    jax.tree.leaves(run_state["theta"]), jax.tree.leaves(initial)
  ):
    np.testing.assert_array_equal(a, b)
