"""The influence-balancing system of the PES paper (after the UORO paper).

A chain of 23 units with s_0 = 1 everywhere, driven by a scalar theta:

    s_{t+1} = A s_t + theta * b,   A = 0.5 I + 0.5 * superdiagonal,
    b = (+1 x 10, -1 x 13),        L_t = (s_t[0] - 1)^2 / 2.

In the steady state s[0] = 2 * theta * sum(b) = -6 * theta, so the loss is
zero at theta* = -1/6. The short-term influence of theta on s[0] is +1 while
the long-term one is -6: truncated backprop over short windows sees the wrong
sign and drives theta away, which unbiased estimators (PES, NRES) do not
(Vicol, Metz, Sohl-Dickstein, 2021, Section 5).
"""

import dataclasses

import jax
import jax.numpy as jnp

OPTIMUM = -1.0 / 6.0


@dataclasses.dataclass(frozen=True)
class InfluenceBalancing:
  """The influence-balancing system; theta is a scalar array.

  Attributes:
    horizon: T. The paper's runs never reset; pass a horizon longer than the
      run (with lockstep particles) to reproduce that.
    num_positive: how many of the 23 units are pushed by +theta.
    num_units: the chain length.
  """

  horizon: int = 100_000
  num_positive: int = 10
  num_units: int = 23

  def init(self, key: jax.Array) -> jax.Array:
    del key
    return jnp.ones((self.num_units,))

  def step(self, theta, state, t, key):
    del t, key
    b = jnp.where(jnp.arange(self.num_units) < self.num_positive, 1.0, -1.0)
    shifted = jnp.append(state[1:], 0.0)  # the superdiagonal of A
    s = 0.5 * state + 0.5 * shifted + theta * b
    return s, 0.5 * (s[0] - 1.0) ** 2
