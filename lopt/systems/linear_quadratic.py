"""A linear dynamical system with a quadratic loss: the estimators' oracle.

    s_0 = 0,   s_t = a * s_{t-1} + c . theta,   L_t = (s_t - y)^2 / 2.

Because the dynamics are linear in theta and the loss is quadratic, every
Gaussian smoothing of the objective differs from it by a constant, so all
unbiased ES estimators (FullES, NRES, PES, GPES-K) share one expected value:
the exact gradient, available in closed form (algorithms.md, oracle O2).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class LinearQuadratic:
  """The linear-quadratic unrolled system of algorithms.md O2.

  Attributes:
    horizon: T, steps per episode.
    a: the scalar state decay.
    c: the coupling vector; theta has the same shape.
    y: the scalar target of the loss.
  """

  horizon: int = 100
  a: float = 0.9
  c: tuple[float, ...] = (1.0, 0.5)
  y: float = 1.0

  def init(self, key: jax.Array) -> jax.Array:
    del key  # every episode starts from rest
    return jnp.zeros(())

  def step(self, theta, state, t, key):
    del t, key
    s = self.a * state + jnp.dot(jnp.asarray(self.c, state.dtype), theta)
    return s, 0.5 * (s - self.y) ** 2

  def _partials(self, theta) -> np.ndarray:
    """G[t-1, tau-1] = dL_t / d theta_tau (scalar factor of c), in float64."""
    big_t = self.horizon
    u = float(np.dot(self.c, np.asarray(theta, np.float64)))
    steps = np.arange(1, big_t + 1)
    m = (1.0 - self.a**steps) / (1.0 - self.a)
    residual = u * m - self.y
    lag = steps[:, None] - steps[None, :]
    return np.where(
      lag >= 0, residual[:, None] * self.a ** np.maximum(lag, 0), 0.0
    )

  def true_gradient(self, theta) -> np.ndarray:
    """The exact gradient of the mean per-step loss (1/T) sum_t L_t."""
    g = self._partials(theta).sum() / self.horizon
    return g * np.asarray(self.c, np.float64)

  def truncated_gradient(self, theta, unroll_length: int) -> np.ndarray:
    """What TBPTT (and, in expectation, truncated ES) estimate.

    The mean over the T/W windows of an episode of each window's gradient
    with the window's start state held constant (algorithms.md O3).
    """
    if self.horizon % unroll_length:
      raise ValueError("unroll_length must divide the horizon")
    partials = self._partials(theta)
    window = np.arange(self.horizon) // unroll_length
    same_window = window[:, None] == window[None, :]
    g = (partials * same_window).sum() / self.horizon
    return g * np.asarray(self.c, np.float64)
