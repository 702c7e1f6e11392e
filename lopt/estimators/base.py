"""What every estimator shares: noise, step-unlocking, resets, reductions.

The checks of their arguments are `lopt.estimators.checks` (re-exported
here).

Conventions (algorithms.md §2.0, §2.8, §3):

* Each ES particle is an antithetic pair: members "+" and "-" run under
  theta + eps and theta - eps with the same step keys, data and resets, and
  the pair contributes credit * (L+ - L-) / (2 sigma^2) per step.
* The gradient is the mean of the step contributions over the W steps of the
  call and over the particles, so its scale does not depend on W or N.
* Episodes end eagerly: the step that reaches the horizon T re-initialises
  both members from one fresh key, and its loss still counts for the old
  episode. A step with a non-finite loss is masked out of the gradient and
  the loss, counted in `info["nonfinite"]`, and ends the episode early, so a
  diverged trajectory costs one step, not the rest of its episode.
* Particles are step-unlocked: `init` staggers their episode counters and
  runs a burn-in of T steps, so that each particle then sits at its own
  offset with a genuine state produced under theta (algorithms.md §3).
"""

import abc
import copy
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from lopt.estimators.checks import (  # noqa: F401  (re-exported)
  check_flag,
  check_horizon,
  check_int,
  check_noise_period,
  check_num_particles,
  check_particle_map,
  check_sigma,
  check_unroll_length,
)
from lopt.systems import UnrolledSystem

PyTree = Any
#: One particle's work over a number of steps (`Estimator._window`):
#: `window(theta, particle, key, num_steps) -> (particle, sums)`.
Window = Callable[[PyTree, PyTree, jax.Array, int], tuple[PyTree, Any]]
#: How an estimator maps its window over the particles:
#: `particle_map(window, theta, state, keys, num_steps) -> outputs`.
ParticleMap = Callable[[Window, PyTree, PyTree, jax.Array, int], Any]


def sample_noise(key: jax.Array, like: PyTree, sigma: float) -> PyTree:
  """Draws eps ~ N(0, sigma^2 I) with the structure of `like`.

  One draw for the whole tree rather than one per leaf: each separate
  random call costs compile time on XLA:CPU, and the result is the same
  distribution.
  """
  flat, unravel = ravel_pytree(like)
  return unravel(sigma * jax.random.normal(key, flat.shape, flat.dtype))


def tree_where(condition: jax.Array, on_true: PyTree, on_false: PyTree):
  """Leafwise `jnp.where` with one scalar condition for the whole tree."""
  return jax.tree.map(
    lambda a, b: jnp.where(condition, a, b), on_true, on_false
  )


def tree_all_finite(tree: PyTree) -> jax.Array:
  """A boolean scalar: True when no leaf of `tree` holds a NaN or an inf."""
  return jnp.all(
    jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)])
  )


def tree_scale(tree: PyTree, factor: jax.Array) -> PyTree:
  return jax.tree.map(lambda x: x * factor.astype(x.dtype), tree)


def stack_members(state: PyTree, num_members: int) -> PyTree:
  """Copies one state into `num_members` identical members (leading axis)."""
  return jax.tree.map(
    lambda x: jnp.broadcast_to(x, (num_members,) + jnp.shape(x)), state
  )


def member_thetas(theta: PyTree, noise: PyTree, unperturbed: bool = False):
  """Stacks theta + eps, theta - eps (and theta) on a leading member axis.

  Running the members as one batch lets XLA fuse their work into the same
  batched matmuls instead of separate programs per member.
  """

  def stack(t, e):
    members = [t + e, t - e] + ([t] if unperturbed else [])
    return jnp.stack(members)

  return jax.tree.map(stack, theta, noise)


def vmap_particles(
  window: Window, theta: PyTree, state: PyTree, keys: jax.Array, num_steps: int
):
  """The default `particle_map`: `jax.vmap` of `window` over the particles.

  Args:
    window: one particle's work, `(theta, particle, key, num_steps) ->
      (particle, sums)`.
    theta: the meta-parameters, shared by every particle.
    state: the estimator state; every leaf leads with the particle axis.
    keys: the particles' keys, [N], split from the call's key.
    num_steps: the steps each particle takes (static).

  Returns:
    `window`'s outputs, stacked on a leading particle axis.
  """
  return jax.vmap(window, in_axes=(None, 0, 0, None))(
    theta, state, keys, num_steps
  )


class Estimator(abc.ABC):
  """Base class of lopt's gradient estimators over an `UnrolledSystem`.

  Subclasses implement `_init_particles` (the state of every particle at
  episode step 0 with the given counters) and `_window` (one particle's
  work over a number of steps, with the contract documented there); the
  base class maps the window over the particles and reduces its sums in
  `estimate` and `particle_estimates`. The estimators are pure: every
  method is a function of its arguments, safe under `jax.jit`, and the state
  is a pytree of arrays whose leaves lead with the particle axis.

  Args (shared by every estimator's constructor):
    system: the unrolled system.
    num_particles: N, the number of particles.
    unroll_length: W, the steps each particle advances per `estimate`.
    step_unlocked: stagger the particles' episodes (default); False starts
      every particle at step 0, in lockstep.
    particle_map: how the window runs over the particles, called as
      `particle_map(window, theta, state, keys, num_steps)` with the bound
      `_window`, the particles' state, and the N per-particle keys that the
      estimator splits from the call's key (`jax.random.split(key, N)`, so
      the randomness does not depend on how the particles are mapped). It
      must return what `vmap_particles`, the default, returns: `window`'s
      outputs stacked on a leading particle axis. It may run an equivalent
      window of its own, e.g. one rebuilt per device from a device-local
      view of the system's data (`lopt.sharding.shard_particles`).
  """

  name: str = "estimator"
  #: Inner steps each particle takes per inner step of its episode.
  members: int = 2

  def __init__(
    self,
    system: UnrolledSystem,
    *,
    num_particles: int,
    unroll_length: int,
    step_unlocked: bool = True,
    particle_map: ParticleMap = vmap_particles,
  ):
    self.system = system
    self.horizon = check_horizon(getattr(system, "horizon", None))
    self.num_particles = check_num_particles(num_particles)
    self.unroll_length = check_unroll_length(unroll_length, self.horizon)
    self.step_unlocked = check_flag("estimator.step_unlocked", step_unlocked)
    self.particle_map = check_particle_map(particle_map)

  def __repr__(self) -> str:
    return (
      f"{type(self).__name__}(num_particles={self.num_particles}, "
      f"unroll_length={self.unroll_length}, horizon={self.horizon})"
    )

  @property
  def steps_per_estimate(self) -> int:
    """Inner steps one `estimate` call takes, every member counted.

    `members * num_particles * unroll_length`, what `info["steps"]`
    reports; the one formula for the inner-step cost of an outer update.
    """
    return self.members * self.num_particles * self.unroll_length

  @property
  def burn_in_steps(self) -> int:
    """Inner steps of `init`'s burn-in, every member counted.

    T steps of every member of every particle for step-unlocked particles;
    0 for lockstep particles and for estimators without persistent state
    (FullES), whose `init` runs nothing.
    """
    if not self.step_unlocked:
      return 0
    return self.members * self.num_particles * self.horizon

  def with_particle_map(self, particle_map: ParticleMap) -> "Estimator":
    """A copy of this estimator that maps its particles with `particle_map`.

    The same settings and system; for a caller that gets a built estimator,
    e.g. `lopt.sharding.shard_particles`.
    """
    mapped = copy.copy(self)
    mapped.particle_map = check_particle_map(particle_map)
    return mapped

  # -- step-unlocking --------------------------------------------------------

  def initial_counters(self, key: jax.Array) -> jax.Array:
    """Each particle's episode counter before burn-in.

    Uniform over the window starts {0, W, 2W, ...} when W divides T (so
    every particle's windows align with its episode), else uniform over
    [0, T). All zeros for lockstep particles.
    """
    n, big_t, w = self.num_particles, self.horizon, self.unroll_length
    if not self.step_unlocked:
      return jnp.zeros((n,), jnp.int32)
    if big_t % w == 0:
      return w * jax.random.randint(key, (n,), 0, big_t // w, jnp.int32)
    return jax.random.randint(key, (n,), 0, big_t, jnp.int32)

  def init(self, theta: PyTree, key: jax.Array):
    """Returns the state of `num_particles` particles, ready to estimate.

    Step-unlocked particles (the default) get staggered counters and a
    burn-in of T steps under theta: every particle resets exactly once
    during it and ends at its own counter with a genuine state. Lockstep
    particles all start at episode step 0.

    Args:
      theta: the meta-parameters; the burn-in runs under them.
      key: a PRNG key; all randomness of the state derives from it.
    """
    k_counter, k_init, k_burn = jax.random.split(key, 3)
    counters = self.initial_counters(k_counter)
    state = self._init_particles(theta, counters, k_init)
    if self.step_unlocked:
      state, _ = self._run(theta, state, k_burn, self.horizon)
    return state

  # -- the shared machinery --------------------------------------------------

  def _fresh_inner(self, key: jax.Array, num_members: int) -> PyTree:
    return stack_members(self.system.init(key), num_members)

  def map_particles(self, theta, state, keys: jax.Array, num_steps: int):
    """Runs `_window` on every particle with this estimator's particle_map.

    Args:
      theta: the meta-parameters.
      state: the estimator state; leaves lead with the particle axis.
      keys: one key per particle, [N].
      num_steps: the steps each particle takes.

    Returns:
      `(state, (grad_sums, loss_sums, valid_counts))`, `_window`'s outputs
      with a leading particle axis.
    """
    return self.particle_map(self._window, theta, state, keys, num_steps)

  def _run(self, theta, state, key, num_steps: int):
    """Advances every particle `num_steps` steps under the call's `key`.

    The one place where an estimator maps over its particles (`init`'s
    burn-in, `estimate`, `particle_estimates`); the per-particle keys are
    split here, before any particle_map, so they are the same however the
    particles are mapped.
    """
    keys = jax.random.split(key, self.num_particles)
    return self.map_particles(theta, state, keys, num_steps)

  @abc.abstractmethod
  def _init_particles(self, theta, counters, key): ...

  @abc.abstractmethod
  def _window(self, theta, particle, key, num_steps: int):
    """One particle's work over `num_steps` steps: the estimator's core.

    Every estimator's window follows this contract, so that the base
    class's `estimate` and `particle_estimates` (and any `particle_map`)
    serve them all unchanged.

    Args:
      theta: the meta-parameters (the same for every particle).
      particle: this particle's slice of the state (no particle axis).
      key: this particle's key for the window's noise, data and resets.
      num_steps: the number of steps, a Python int (static).

    Returns:
      `(particle, (grad_sum, loss_sum, valid_count))`:

      * `particle`: the particle's state after the window, the structure
        of the input `particle`;
      * `grad_sum`: theta-shaped, the sum over the window's valid steps of
        the particle's per-step gradient estimates (masked steps add 0);
        the estimate is this over `valid_count`, and `estimate` averages
        it over the particles' valid steps;
      * `loss_sum`: a scalar, the sum of the mean member loss over the
        valid steps;
      * `valid_count`: an integer scalar, the steps out of `num_steps` that
        count (a step with a non-finite loss, or one whose gradient could
        not be formed, does not).
    """

  def estimate(self, theta: PyTree, state, key: jax.Array):
    """Returns (grad, new_state, info) for one truncation of every particle.

    Args:
      theta: the meta-parameters.
      state: the estimator state from `init` or a previous `estimate`.
      key: a PRNG key for this call's noise, data and resets.

    Returns:
      grad: an estimate of the gradient of the mean per-step loss, with the
        structure of theta: the mean over the valid steps of all particles.
      state: the advanced state.
      info: a dict of scalars: `loss` (mean per-step loss of the call's
        valid steps), `steps` (inner steps taken, every member counted),
        `nonfinite` (steps masked out for a non-finite loss).
    """
    state, (grad_sums, loss_sums, valid) = self._run(
      theta, state, key, self.unroll_length
    )
    grad, info = average(
      grad_sums, loss_sums, valid, self._entries, self.steps_per_estimate
    )
    return grad, state, info

  def particle_estimates(self, theta: PyTree, state, key: jax.Array):
    """Like `estimate`, but returns each particle's own estimate.

    The leaves of the returned gradient lead with the particle axis; their
    mean is `estimate`'s gradient when no step was masked. Used to measure
    the variance of the estimator across particles.
    """
    state, (grad_sums, loss_sums, valid) = self._run(
      theta, state, key, self.unroll_length
    )
    _, info = summarize(
      loss_sums, valid, self._entries, self.steps_per_estimate
    )
    per_step = jnp.maximum(valid, 1)
    grads = jax.tree.map(
      lambda g: (
        g / per_step.reshape((-1,) + (1,) * (g.ndim - 1)).astype(g.dtype)
      ),
      grad_sums,
    )
    return grads, state, info

  @property
  def _entries(self) -> int:
    """The (particle, step) entries of one call."""
    return self.num_particles * self.unroll_length


def antithetic_weight(
  losses: jax.Array, ok: jax.Array, sigma: float
) -> jax.Array:
  """A pair's step weight (L+ - L-) / (2 sigma^2), or 0 where not `ok`.

  Args:
    losses: the members' losses of one step, "+" first and "-" second (a
      third, unperturbed member is ignored).
    ok: whether the step counts (its losses are finite).
    sigma: the perturbation's standard deviation.

  Returns:
    The scalar that multiplies the step's credit (the noise) in the
    gradient estimate.
  """
  return jnp.where(ok, (losses[0] - losses[1]) / (2 * sigma**2), 0.0)


def step_members(system, thetas, inner, counter, key):
  """One step of all members of one particle; returns (inner, losses, ok)."""
  inner, losses = jax.vmap(system.step, in_axes=(0, 0, None, None))(
    thetas, inner, counter, key
  )
  return inner, losses, jnp.all(jnp.isfinite(losses))


def end_of_step(system, inner, counter, finite, fresh):
  """Advances the counter and re-initialises finished or diverged episodes.

  `fresh` is the window's pre-drawn initial state (all members alike): a
  window of W <= T steps ends at most one episode, so one draw per window
  serves every step. Should a diverged run reset a second time in the same
  window, it restarts from the same draw, which is still a valid episode.
  """
  counter = counter + 1
  done = (counter >= system.horizon) | ~finite
  inner = tree_where(done, fresh, inner)
  return inner, jnp.where(done, 0, counter), done


def summarize(loss_sums, valid_counts, num_entries: int, steps: int):
  """The info dict from per-particle loss sums and valid-step counts."""
  count = jnp.sum(valid_counts)
  info = {
    "loss": jnp.sum(loss_sums) / jnp.maximum(count, 1),
    "steps": jnp.asarray(steps, jnp.int32),
    "nonfinite": jnp.asarray(num_entries - count, jnp.int32),
  }
  return count, info


def average(grad_sums, loss_sums, valid_counts, num_entries: int, steps: int):
  """Reduces per-particle sums (leading particle axis) to (grad, info).

  The gradient and the loss are means over the valid (particle, step)
  entries, so masked steps drop out of numerator and denominator alike.
  """
  count, info = summarize(loss_sums, valid_counts, num_entries, steps)
  denominator = jnp.maximum(count, 1)
  grad = jax.tree.map(
    lambda g: jnp.sum(g, axis=0) / denominator.astype(g.dtype), grad_sums
  )
  info.update(noise_diagnostics(grad, grad_sums, valid_counts))
  return grad, info


def noise_diagnostics(grad, grad_sums, valid_counts):
  """How noisy the estimate is, from the spread of the particles' estimates.

  `grad_var` is the trace of the variance of the mean estimate (the
  across-particle variance over N), and `grad_snr` estimates
  |E grad|^2 / grad_var: since E|grad|^2 = |E grad|^2 + grad_var, it is
  |grad|^2 / grad_var - 1, about 0 (or below) when the estimate is pure
  noise. An SNR far below 1 says sigma or the particle count is off: the
  update is mostly noise. Both are NaN with a single particle. An estimate
  that is exactly zero for every particle (every step masked, or no pair
  of members saw a difference: every loss exactly 0 on memorised batches,
  or at its cap) has grad_var 0 and grad_snr -1, the value of an estimate
  without signal, not 0 / 0.
  """
  n = valid_counts.shape[0]
  per_step = jnp.maximum(valid_counts, 1)

  def spread(g):
    per_particle = g / per_step.reshape((-1,) + (1,) * (g.ndim - 1)).astype(
      g.dtype
    )
    return jnp.sum(jnp.var(per_particle, axis=0, ddof=1))

  variance = sum(spread(g) for g in jax.tree.leaves(grad_sums)) / n
  signal = sum(jnp.sum(g**2) for g in jax.tree.leaves(grad))
  return {"grad_var": variance, "grad_snr": snr(signal, variance)}


def snr(signal: jax.Array, variance: jax.Array) -> jax.Array:
  """|grad|^2 / grad_var - 1, and -1 (no signal) where grad_var is 0."""
  spread_out = variance > 0
  ratio = signal / jnp.where(spread_out, variance, 1.0) - 1
  return jnp.where(spread_out, ratio, -1.0)
