"""The toy systems reproduce the reference values of algorithms.md."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt import systems


def episode_loss(system, theta, horizon=None):
  """The mean per-step loss of one episode from a fixed key."""
  horizon = horizon or system.horizon
  key = jax.random.key(0)

  def body(state, t):
    return system.step(theta, state, t, key)

  _, losses = jax.lax.scan(body, system.init(key), jnp.arange(horizon))
  return jnp.mean(losses)


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


def test_linear_quadratic_closed_form_gradient_matches_autodiff():
  system = systems.LinearQuadratic()
  theta = jnp.array([0.2, 0.1])
  expected = system.true_gradient(theta)
  np.testing.assert_allclose(expected, [12.465885, 6.232943], rtol=1e-6)
  np.testing.assert_allclose(
    jax.grad(lambda th: episode_loss(system, th))(theta), expected, rtol=1e-10
  )
  np.testing.assert_allclose(
    system.truncated_gradient(theta, 10), [5.394588, 2.697294], rtol=1e-6
  )


def test_influence_balancing_optimum_is_minus_one_sixth():
  system = systems.InfluenceBalancing()
  steady = episode_loss(
    system, jnp.asarray(systems.influence_balancing.OPTIMUM), horizon=400
  )
  elsewhere = episode_loss(system, jnp.asarray(0.5), horizon=400)
  final = jax.lax.fori_loop(
    0, 400, lambda t, s: system.step(-1 / 6, s, t, None)[0], system.init(None)
  )
  assert abs(float(final[0]) - 1.0) < 1e-9
  assert float(steady) < float(elsewhere)


def test_toy_regression_reference_meta_losses():
  system = systems.ToyRegression()
  # algorithms.md O11 quotes the summed loss over T = 100 steps.
  assert float(100 * episode_loss(system, jnp.zeros(2))) == pytest.approx(
    2423.4683, abs=1e-3
  )
  assert float(100 * episode_loss(system, jnp.full(2, -4.0))) == (
    pytest.approx(2487.7688, abs=1e-3)
  )


def test_lorenz_reference_losses_and_gradient():
  system = systems.Lorenz()
  theta = jnp.asarray(systems.lorenz.INIT_THETA)
  assert float(episode_loss(system, theta, 100)) == pytest.approx(
    750.0686, abs=1e-3
  )
  np.testing.assert_allclose(
    jax.grad(lambda th: episode_loss(system, th, 100))(theta),
    [449.527, 3144.763],
    rtol=1e-5,
  )
  assert float(episode_loss(system, theta, 500)) == pytest.approx(
    322.057, abs=1e-3
  )
  truth = jnp.asarray(systems.lorenz.TRUE_THETA)
  assert float(episode_loss(system, truth)) < 1e-15
  assert math.isclose(float(truth[0]), math.log(10.0))


def test_systems_satisfy_the_protocol():
  for system in (
    systems.LinearQuadratic(),
    systems.InfluenceBalancing(),
    systems.ToyRegression(),
    systems.Lorenz(),
  ):
    assert isinstance(system, systems.UnrolledSystem)
