"""Parameter learning in the chaotic Lorenz system (NRES paper, Section 5).

The model integrates the Lorenz equations with Euler steps of size dt,

    x' = x + a (y - x) dt,  y' = y + ((r - z) x - y) dt,  z' = z + (x y - b z) dt,

with learned theta = (log a, log r) and b = 8/3 known. Only z is observed:
L_t = (z_t - z_t*)^2 against a ground-truth trajectory with a = 10, r = 28
from the same start. Over long horizons the loss surface is chaotic and its
gradient explodes (|grad| ~ 1e6 at T = 2000), so backprop-based methods fail
while ES, which smooths the objective, does not.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp

TRUE_THETA = (math.log(10.0), math.log(28.0))
INIT_THETA = (3.116, 3.7)


@dataclasses.dataclass(frozen=True)
class Lorenz:
  """The Lorenz parameter-learning system; theta = (log a, log r).

  Attributes:
    horizon: T, Euler steps per episode (the paper uses 2000).
    dt: the Euler step size.
    start: the initial (x, y, z) shared by model and ground truth.
    init_noise: std of a Gaussian perturbation of the start per episode
      (0 reproduces the paper's single-init training; the test set uses 1).
  """

  horizon: int = 2000
  dt: float = 0.005
  start: tuple[float, float, float] = (1.2, 1.3, 1.6)
  init_noise: float = 0.0
  b: float = 8.0 / 3.0

  def init(self, key: jax.Array) -> dict[str, jax.Array]:
    xyz = jnp.asarray(self.start)
    if self.init_noise:  # no random draw for the paper's single start
      xyz = xyz + self.init_noise * jax.random.normal(key, (3,), xyz.dtype)
    return {"model": xyz, "truth": xyz}

  def _euler(self, xyz, a, r):
    x, y, z = xyz[0], xyz[1], xyz[2]
    return jnp.stack(
      [
        x + a * (y - x) * self.dt,
        y + ((r - z) * x - y) * self.dt,
        z + (x * y - self.b * z) * self.dt,
      ]
    )

  def step(self, theta, state, t, key):
    del t, key
    model = self._euler(state["model"], jnp.exp(theta[0]), jnp.exp(theta[1]))
    truth = self._euler(state["truth"], 10.0, 28.0)
    return {"model": model, "truth": truth}, (model[2] - truth[2]) ** 2
