"""The unbiased online ES family: GPES-K, with PES and NRES at its two ends.

A GPES-K particle perturbs theta with noise that is constant over blocks of
K consecutive steps of its episode and independent across blocks. Each step
is credited with the sum xi of the block noises used so far in the episode:

    g_hat = mean over steps t and particles of xi_t (L_t+ - L_t-) / (2 sigma^2).

Accumulating the noise keeps the estimate unbiased even though each call
sees only a W-step window of the episode (Vicol et al., 2021).

* PES: K = W, a fresh noise every truncation (Vicol, Metz, Sohl-Dickstein,
  "Unbiased gradient estimation in unrolled computation graphs with
  persistent evolution strategies", ICML 2021).
* NRES: K >= T, one noise for the whole episode, so xi = eps and no history
  is kept (Li, Harrison, Sohl-Dickstein, Smith, Metz, "Noise-reuse in online
  evolution strategies", NeurIPS 2023). Within this family it has the least
  variance per estimate.

Blocks follow the episode-relative counter: a new noise is drawn at the
start of every step whose counter is a multiple of K, and the credit is
cleared when the episode ends (algorithms.md §2.5, §2.8).
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lopt.estimators import base


class GPESState(NamedTuple):
  """Per-particle state; every leaf leads with the particle axis.

  Attributes:
    inner: the system states of the + and - members, leaves [N, 2, ...].
    noise: the current block's eps, theta-shaped leaves [N, ...].
    credit: xi, the sum of the episode's block noises so far.
    counter: each particle's episode step, int32 [N].
  """

  inner: Any
  noise: Any
  credit: Any
  counter: jax.Array


class GPES(base.Estimator):
  """Generalised persistent ES with noise period K (`noise_period`).

  Args:
    system: the unrolled system.
    num_particles: N, the number of antithetic pairs.
    unroll_length: W, the steps each particle advances per `estimate`.
    sigma: the standard deviation of the perturbation per coordinate.
    noise_period: K, the steps between noise draws; must be >= W.
    step_unlocked: stagger the particles' episodes (default); False starts
      every particle at step 0, in lockstep.
    particle_map: how the window runs over the particles (see
      `base.Estimator`); `jax.vmap` by default.
  """

  name = "gpes"

  def __init__(
    self,
    system,
    *,
    num_particles: int,
    unroll_length: int,
    sigma: float,
    noise_period: int,
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
    self.noise_period = base.check_noise_period(
      noise_period, self.unroll_length
    )

  def _init_particles(self, theta, counters, key):
    keys = jax.random.split(key, self.num_particles)
    zeros = jax.tree.map(
      lambda x: jnp.zeros(
        (self.num_particles,) + jnp.shape(x), jnp.asarray(x).dtype
      ),
      theta,
    )
    return GPESState(
      inner=jax.vmap(self._fresh_inner, in_axes=(0, None))(keys, 2),
      noise=zeros,
      credit=zeros,
      counter=counters,
    )

  def _window(self, theta, particle: GPESState, key, num_steps):
    system, sigma, period = self.system, self.sigma, self.noise_period
    k_noise, k_init, k_steps = jax.random.split(key, 3)
    # Draw every noise the window can need up front, rather than a noise on
    # every step of which most go unused: blocks start at counters that are
    # multiples of K and at episode starts, so `num_steps` steps hold at
    # most num_steps // K + num_steps // T + 2 block starts.
    num_noises = num_steps // period + num_steps // self.horizon + 2
    noises = jax.vmap(lambda k: base.sample_noise(k, theta, sigma))(
      jax.random.split(k_noise, num_noises)
    )
    fresh = self._fresh_inner(k_init, 2)

    def step(carry, step_key):
      particle, grad_sum, drawn = carry
      # A new block starts: take the next noise and add it to the credit.
      new_block = particle.counter % period == 0
      next_noise = jax.tree.map(
        lambda n: n[jnp.minimum(drawn, num_noises - 1)], noises
      )
      drawn = drawn + new_block.astype(jnp.int32)
      noise = base.tree_where(new_block, next_noise, particle.noise)
      credit = base.tree_where(
        new_block,
        jax.tree.map(jnp.add, particle.credit, next_noise),
        particle.credit,
      )
      inner, losses, ok = base.step_members(
        system,
        base.member_thetas(theta, noise),
        particle.inner,
        particle.counter,
        step_key,
      )
      weight = base.antithetic_weight(losses, ok, sigma)
      grad_sum = jax.tree.map(
        lambda g, c: g + c * weight.astype(c.dtype), grad_sum, credit
      )
      inner, counter, done = base.end_of_step(
        system, inner, particle.counter, ok, fresh
      )
      # A finished episode's credit must not leak into the next one.
      credit = base.tree_where(
        done, jax.tree.map(jnp.zeros_like, credit), credit
      )
      particle = GPESState(inner, noise, credit, counter)
      loss = jnp.where(ok, jnp.mean(losses), 0.0)
      return (particle, grad_sum, drawn), (loss, ok)

    grad_zero = jax.tree.map(jnp.zeros_like, theta)
    (particle, grad_sum, _), (losses, ok) = jax.lax.scan(
      step,
      (particle, grad_zero, jnp.zeros((), jnp.int32)),
      jax.random.split(k_steps, num_steps),
    )
    return particle, (grad_sum, jnp.sum(losses), jnp.sum(ok))


class PES(GPES):
  """Persistent ES: a fresh noise every W steps, accumulated per episode.

  Unbiased for the per-block smoothing of the objective (algorithms.md
  §2.3). Arguments as for `GPES`, without `noise_period` (it is W).
  """

  name = "pes"

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
      sigma=sigma,
      noise_period=unroll_length,
      step_unlocked=step_unlocked,
      particle_map=particle_map,
    )


class NRES(GPES):
  """Noise-reuse ES: one noise per particle for its whole episode.

  Unbiased for the Gaussian-smoothed objective, with the least variance of
  the GPES family (algorithms.md §2.4). Arguments as for `GPES`, without
  `noise_period` (it is the horizon T).
  """

  name = "nres"

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
    horizon = base.check_horizon(getattr(system, "horizon", None))
    super().__init__(
      system,
      num_particles=num_particles,
      unroll_length=unroll_length,
      sigma=sigma,
      noise_period=horizon,
      step_unlocked=step_unlocked,
      particle_map=particle_map,
    )
