"""The outer step of meta-training, built from an `Experiment`.

The run state is one pytree, `{step, theta, outer_opt_state,
estimator_state, rng}`; the estimator state holds every particle's inner
model, learned-optimizer accumulators, episode counter and noise. One jitted
dispatch advances it by `outer.steps_per_dispatch` outer steps (a `lax.scan`
over `lopt.train.outer.outer_step`), with the state donated, so the loop
touches the host only to log, evaluate and checkpoint.

All randomness derives from `config.seed` and the step number: the key of
outer step s is `fold_in(rng, s)`. A run restored from a checkpoint therefore
follows the same trajectory, bit for bit, as one that never stopped.

Sharding (see `lopt.sharding`): the particles are spread over a 1-D
`particles` mesh of every device of every process; the estimator state is
sharded on its particle axis, everything else is replicated, and both jitted
functions (`init_run_state`, `train_steps`) carry these shardings on their
inputs and outputs, so the particle state is born sharded and stays so. The
same code runs on one CPU, on 8 simulated devices and on every host of a TPU
pod slice; a checkpoint written on D devices restores onto D' devices
because the restore targets carry the current shardings.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp

from lopt import sharding
from lopt.experiment import Experiment
from lopt.learned import optimizers
from lopt.train import outer


def _initial_keys(config) -> jax.Array:
  """(theta, particles, run rng): the keys of step 0, from the seed alone."""
  key = jax.random.key(config.seed)
  return jax.random.split(jax.random.fold_in(key, 0), 3)


def initial_theta(exp: Experiment):
  """The theta that a fresh run of `exp.config` starts from."""
  return optimizers.init_theta(exp.lopt, _initial_keys(exp.config)[0])


def init_run_state(exp: Experiment, data) -> dict[str, Any]:
  """The run state at step 0; the particles burn in under the initial theta."""
  _, k_particles, rng = _initial_keys(exp.config)
  theta = initial_theta(exp)
  return {
    "step": jnp.zeros((), jnp.int32),
    "theta": theta,
    "outer_opt_state": exp.outer_tx.init(theta),
    "estimator_state": exp.estimator(data).init(theta, k_particles),
    "rng": rng,
  }


def train_steps(exp: Experiment, data, run_state, num_steps: int):
  """Advances the run state `num_steps` outer steps in one `lax.scan`."""
  est = exp.estimator(data)

  def body(run_state, _):
    key = jax.random.fold_in(run_state["rng"], run_state["step"])
    state = outer.OuterState(
      run_state["theta"],
      run_state["outer_opt_state"],
      run_state["estimator_state"],
    )
    state, info = outer.outer_step(est, exp.outer_tx, state, key)
    return dict(
      run_state,
      step=run_state["step"] + 1,
      theta=state.theta,
      outer_opt_state=state.opt_state,
      estimator_state=state.estimator_state,
    ), info

  return jax.lax.scan(body, run_state, None, length=num_steps)


def sharded_functions(exp: Experiment, data):
  """The jitted `init_run_state` and `train_steps` with explicit shardings.

  Args:
    exp: the experiment; its mesh gives the shardings.
    data: the dataset arrays (replicated), or their abstract values.

  Returns:
    `(init_fn, steps_fn, abstract_state, state_shardings)`: `init_fn(data)`
    builds the run state; `steps_fn(data, run_state)` advances it
    `outer.steps_per_dispatch` steps and returns `(run_state, infos)`, with
    `run_state` donated; `abstract_state` is `jax.eval_shape(init_fn,
    data)`: the run state's shapes with its shardings, the restore target
    of a checkpoint; `state_shardings` are those shardings, leaf for leaf.
  """
  replicated = sharding.replicated(exp.mesh)
  state_shardings = sharding.run_state_shardings(
    jax.eval_shape(functools.partial(init_run_state, exp), data), exp.mesh
  )
  # Explicit shardings in and out: the particle state is created sharded,
  # inside jit, from the seed (no host-local per-particle arrays exist), and
  # every dispatch hands it back with the same layout, so XLA never
  # reshuffles it between dispatches.
  init_fn = jax.jit(
    functools.partial(init_run_state, exp),
    in_shardings=(replicated,),
    out_shardings=state_shardings,
  )
  # The run state is donated: each dispatch updates it in place.
  steps_fn = jax.jit(
    functools.partial(
      train_steps, exp, num_steps=exp.config.outer.steps_per_dispatch
    ),
    in_shardings=(replicated, state_shardings),
    out_shardings=(state_shardings, replicated),
    donate_argnums=(1,),
  )
  return init_fn, steps_fn, jax.eval_shape(init_fn, data), state_shardings
