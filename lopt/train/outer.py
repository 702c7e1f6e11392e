"""The outer loop for any unrolled system: estimate, then an optax update.

`meta_train` runs many outer steps in one compiled `lax.scan`, so a toy
system's whole meta-training is a single dispatch. The learned-optimizer
application (`lopt.train`) builds its step from the same `outer_step`.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lopt.estimators import Estimator, base


class OuterState(NamedTuple):
  """What the outer loop carries: theta, its optimizer, the estimator."""

  theta: Any
  opt_state: Any
  estimator_state: Any


def init(
  estimator: Estimator,
  optimizer: optax.GradientTransformation,
  theta,
  key: jax.Array,
) -> OuterState:
  """Initial outer state: the estimator's particles burn in under theta."""
  return OuterState(theta, optimizer.init(theta), estimator.init(theta, key))


def outer_step(
  estimator: Estimator,
  optimizer: optax.GradientTransformation,
  state: OuterState,
  key: jax.Array,
):
  """One outer update; returns the new state and the estimator's info.

  A gradient with a non-finite entry is not applied (theta and the
  optimizer state are kept), so one bad estimate cannot poison theta; the
  estimators already mask non-finite losses, so this is a last guard.
  """
  grad, est_state, info = estimator.estimate(
    state.theta, state.estimator_state, key
  )
  updates, opt_state = optimizer.update(grad, state.opt_state, state.theta)
  theta = optax.apply_updates(state.theta, updates)
  finite = base.tree_all_finite(grad)
  theta, opt_state = jax.tree.map(
    lambda new, old: jnp.where(finite, new, old),
    (theta, opt_state),
    (state.theta, state.opt_state),
  )
  info = dict(info, grad_norm=optax.tree.norm(grad), applied=finite)
  return OuterState(theta, opt_state, est_state), info


def meta_train(
  estimator: Estimator,
  optimizer: optax.GradientTransformation,
  theta,
  key: jax.Array,
  num_steps: int,
):
  """Meta-trains theta for `num_steps` outer steps in one jitted scan.

  Args:
    estimator: any lopt estimator.
    optimizer: the outer optax optimizer.
    theta: the initial meta-parameters.
    key: the PRNG key all randomness derives from.
    num_steps: the number of outer updates.

  Returns:
    The final theta and a dict of per-step histories (`theta`, `loss`, ...).
  """
  k_init, k_steps = jax.random.split(key)

  @jax.jit
  def run(theta):
    state = init(estimator, optimizer, theta, k_init)

    def body(state, step_key):
      state, info = outer_step(estimator, optimizer, state, step_key)
      return state, dict(info, theta=state.theta)

    state, history = jax.lax.scan(
      body, state, jax.random.split(k_steps, num_steps)
    )
    return state.theta, history

  return run(theta)
