"""The PES paper's 2-D toy regression with a learned learning-rate schedule.

Inner problem: minimise the non-convex

    f(x) = sqrt(x0^2 + 5) - sqrt(5) + sin(x1)^2 exp(-5 x0^2) + |x1 - 100| / 4

from x = (1, 1) by gradient descent whose step size interpolates between two
learned log-learning-rates over the episode:

    alpha_t = exp(theta0) (T - t) / T + exp(theta1) t / T,   t = 0 .. T-1.

L_t is f after the t-th update. Greedy (truncated) estimators favour large
early steps that trap x in a poor region; unbiased ones find schedules with
a lower total loss. The paper sums L_t over the episode; lopt's objective is
the mean, so multiply by T to compare numbers.
"""

import dataclasses

import jax
import jax.numpy as jnp


def _f(x: jax.Array) -> jax.Array:
  return (
    jnp.sqrt(x[0] ** 2 + 5.0)
    - jnp.sqrt(5.0)
    + jnp.sin(x[1]) ** 2 * jnp.exp(-5.0 * x[0] ** 2)
    + 0.25 * jnp.abs(x[1] - 100.0)
  )


@dataclasses.dataclass(frozen=True)
class ToyRegression:
  """The toy 2-D learning-rate-schedule problem; theta has shape (2,).

  Attributes:
    horizon: T, inner gradient steps per episode.
  """

  horizon: int = 100

  def init(self, key: jax.Array) -> jax.Array:
    del key
    return jnp.ones((2,))

  def step(self, theta, state, t, key):
    del key
    frac = t.astype(state.dtype) / self.horizon
    lr = jnp.exp(theta[0]) * (1.0 - frac) + jnp.exp(theta[1]) * frac
    x = state - lr * jax.grad(_f)(state)
    return x, _f(x)
