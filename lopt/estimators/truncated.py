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
    particle_map: how the window runs over the particles (see
      `base.Estimator`); `jax.vmap` by default.
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
    particle_map: base.ParticleMap = base.vmap_particles,
  ):
    super().__init__(
      system,
      num_particles=num_particles,
      unroll_length=unroll_length,
      step_unlocked=step_unlocked,
      particle_map=particle_map,
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
      weight = base.antithetic_weight(losses, ok, sigma)
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

  Each particle's window differentiates its own loss sum by reverse mode
  through the window's steps only; an episode end inside the window is
  differentiated like any other step (the fresh state does not depend on
  theta). The estimate is the mean over the valid steps of all particles,
  i.e. the gradient of the mean valid loss of the call. Deterministic given
  the data.

  A particle whose gradient is not finite (a diverging inner run: backprop
  multiplies the zero cotangent of a masked NaN loss by a NaN Jacobian, so
  masking cannot be done per step) contributes nothing: its gradient is
  zeroed and all of its window's steps count in `info["nonfinite"]`; the
  other particles' estimates are unaffected.

  Args:
    system: the unrolled system.
    num_particles: N, the number of independent trajectories.
    unroll_length: W, the window length.
    step_unlocked: stagger the particles' episodes (default).
    particle_map: how the window runs over the particles (see
      `base.Estimator`); `jax.vmap` by default.
  """

  name = "tbptt"
  members = 1

  def _unroll(self, theta, particle: TruncatedState, key, num_steps):
    """The window's forward pass: (particle, (loss_sum, valid_count))."""
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

  def _window(self, theta, particle: TruncatedState, key, num_steps):
    def loss_sum(theta):
      particle_out, (total, valid) = self._unroll(
        theta, particle, key, num_steps
      )
      return total, (particle_out, total, valid)

    grad_sum, (particle, total, valid) = jax.grad(loss_sum, has_aux=True)(theta)
    finite = base.tree_all_finite(grad_sum)
    grad_sum = base.tree_where(
      finite, grad_sum, jax.tree.map(jnp.zeros_like, grad_sum)
    )
    return particle, (
      grad_sum,
      jnp.where(finite, total, 0.0),
      jnp.where(finite, valid, 0),
    )
