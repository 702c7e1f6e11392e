"""Truncated estimators: biased baselines that ignore the past of a window.

Both keep one unperturbed state per particle and treat the state at the
start of each W-step window as a constant, so they estimate the gradient of
the window's loss with respect to theta applied inside the window only.
When theta's influence on the future outlasts a window (influence
balancing, learned optimizers), that is the wrong gradient, sometimes with
the wrong sign (algorithms.md §2.2, §2.6).
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lopt.estimators import base


class TruncatedState(NamedTuple):
  """Per-particle state; leaves lead with the particle axis.

  Attributes:
    inner: the unperturbed system state of each particle.
    counter: each particle's episode step, int32 [N].
  """

  inner: Any
  counter: jax.Array


class _Truncated(base.Estimator):
  """Shared state handling of the truncated estimators."""

  def _init_particles(self, theta, counters, key):
    keys = jax.random.split(key, self.num_particles)
    return TruncatedState(jax.vmap(self.system.init)(keys), counters)


class TruncatedES(_Truncated):
  """Truncated ES: a fresh antithetic noise per window, from a shared state.

  Both members of a pair start each window from the particle's unperturbed
  state; a third, unperturbed member advances that state (as in the PES and
  NRES reference code), so the state carried across windows is the one
  theta itself produces. An episode end inside a window keeps the window's
  noise for the new episode.

  Args:
    system: the unrolled system.
    num_particles: N, the number of antithetic pairs.
    unroll_length: W, the window length.
    sigma: the standard deviation of the perturbation per coordinate.
    step_unlocked: stagger the particles' episodes (default).
  """

  name = "tes"
  members = 3

  def __init__(
    self,
    system,
    *,
    num_particles: int,
    unroll_length: int,
    sigma: float,
    step_unlocked: bool = True,
  ):
    super().__init__(
      system,
      num_particles=num_particles,
      unroll_length=unroll_length,
      step_unlocked=step_unlocked,
    )
    self.sigma = base.check_sigma(sigma)

  def _window(self, theta, particle: TruncatedState, key, num_steps):
    system, sigma = self.system, self.sigma
    k_noise, k_init, k_steps = jax.random.split(key, 3)
    noise = base.sample_noise(k_noise, theta, sigma)
    thetas = base.member_thetas(theta, noise, unperturbed=True)
    fresh = self._fresh_inner(k_init, 3)

    def step(carry, step_key):
      inner, counter = carry
      inner, losses, ok = base.step_members(
        system, thetas, inner, counter, step_key
      )
      weight = jnp.where(ok, (losses[0] - losses[1]) / (2 * sigma**2), 0.0)
      inner, counter, _ = base.end_of_step(system, inner, counter, ok, fresh)
      loss = jnp.where(ok, jnp.mean(losses[:2]), 0.0)
      return (inner, counter), (weight, loss, ok)

    carry = (base.stack_members(particle.inner, 3), particle.counter)
    (inner, counter), (weights, losses, ok) = jax.lax.scan(
      step, carry, jax.random.split(k_steps, num_steps)
    )
    # The noise is constant over the window: sum the scalar weights first.
    grad_sum = base.tree_scale(noise, jnp.sum(weights))
    particle = TruncatedState(jax.tree.map(lambda x: x[2], inner), counter)
    return particle, (grad_sum, jnp.sum(losses), jnp.sum(ok))


class TBPTT(_Truncated):
  """Truncated backpropagation through time over W-step windows.

  Reverse-mode through the window's steps only; an episode end inside the
  window is differentiated like any other step (the fresh state does not
  depend on theta). Deterministic given the data. A non-finite gradient
  (a diverging inner run) is replaced by zeros and counted in
  `info["nonfinite"]`, since backprop through a NaN state cannot be masked
  per step.

  Args:
    system: the unrolled system.
    num_particles: N, the number of independent trajectories.
    unroll_length: W, the window length.
    step_unlocked: stagger the particles' episodes (default).
  """

  name = "tbptt"
  members = 1

  def _window(self, theta, particle: TruncatedState, key, num_steps):
    system = self.system
    k_init, k_steps = jax.random.split(key)
    fresh = system.init(k_init)  # one draw serves the window's reset

    def step(carry, step_key):
      inner, counter = carry
      inner, loss = system.step(theta, inner, counter, step_key)
      ok = jnp.isfinite(loss)
      counter = counter + 1
      done = (counter >= system.horizon) | ~ok
      inner = base.tree_where(done, fresh, inner)
      return (inner, jnp.where(done, 0, counter)), (
        jnp.where(ok, loss, 0.0),
        ok,
      )

    (inner, counter), (losses, ok) = jax.lax.scan(
      step,
      (particle.inner, particle.counter),
      jax.random.split(k_steps, num_steps),
    )
    return TruncatedState(inner, counter), (jnp.sum(losses), jnp.sum(ok))

  def estimate(self, theta, state: TruncatedState, key):
    def window_loss(theta):
      new_state, (loss_sums, valid) = self._run(
        theta, state, key, self.unroll_length
      )
      total = jnp.sum(loss_sums) / jnp.maximum(jnp.sum(valid), 1)
      return total, (new_state, loss_sums, valid)

    grad, (state, loss_sums, valid) = jax.grad(window_loss, has_aux=True)(theta)
    _, info = base.summarize(loss_sums, valid, self._entries, self._entries)
    return _finite_or_zero(grad), state, info

  def particle_estimates(self, theta, state: TruncatedState, key):
    def window_loss(theta, particle, particle_key):
      particle, (loss_sum, valid) = self._window(
        theta, particle, particle_key, self.unroll_length
      )
      return loss_sum / jnp.maximum(valid, 1), (particle, loss_sum, valid)

    keys = jax.random.split(key, self.num_particles)
    grads, (state, loss_sums, valid) = jax.vmap(
      jax.grad(window_loss, has_aux=True), in_axes=(None, 0, 0)
    )(theta, state, keys)
    _, info = base.summarize(loss_sums, valid, self._entries, self._entries)
    return jax.vmap(_finite_or_zero)(grads), state, info


def _finite_or_zero(grad):
  """Drops a gradient that backprop through a diverged state made NaN.

  Its losses are masked, but backprop multiplies a zero cotangent by a NaN
  Jacobian; such a gradient must not reach theta.
  """
  return base.tree_where(
    base.tree_all_finite(grad), grad, jax.tree.map(jnp.zeros_like, grad)
  )
