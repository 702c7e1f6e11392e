"""The `UnrolledSystem` protocol: what every estimator in lopt works on.

An unrolled system is a dynamical process driven by meta-parameters `theta`:
an episode starts from `init(key)` and advances one step at a time under
`step(theta, state, t, key)`, which also returns that step's scalar loss L_t.
The meta-objective of an episode is the mean of L_t over its `horizon` steps.

Inner training of a model by a learned optimizer is one such system; the toy
systems in this package are others, chosen because their true gradients or
optima are known, so the estimators can be checked against them.
"""

from typing import Any, Protocol, runtime_checkable

import jax

State = Any  # any pytree of arrays


@runtime_checkable
class UnrolledSystem(Protocol):
  """A system whose meta-objective is the mean per-step loss of an episode.

  Attributes:
    horizon: T, the number of steps in one episode.
  """

  horizon: int

  def init(self, key: jax.Array) -> State:
    """Returns the state of a fresh episode at step 0."""
    ...

  def step(
    self, theta: Any, state: State, t: jax.Array, key: jax.Array
  ) -> tuple[State, jax.Array]:
    """Advances one step under `theta` from episode step `t` in [0, T).

    Args:
      theta: the meta-parameters (any pytree).
      state: the episode's current state.
      t: the episode-relative index of this step, an int32 scalar.
      key: randomness for this step (data sampling and the like). The two
        members of an antithetic pair receive the same key.

    Returns:
      The new state and the scalar loss L_t of this step.
    """
    ...
