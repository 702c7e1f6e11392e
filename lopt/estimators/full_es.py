"""Full-episode ES: the offline, unbiased reference estimator.

Every call samples a fresh noise per antithetic pair and unrolls both
members over a whole episode from a fresh `init`:

    g_hat = mean_i eps_i (Lbar_i+ - Lbar_i-) / (2 sigma^2),

where Lbar is the mean of the T step losses (algorithms.md §2.1). Unbiased
for the Gaussian-smoothed objective, but each update costs T sequential
steps; NRES gets the same expectation from W-step windows.
"""

import jax
import jax.numpy as jnp

from lopt.estimators import base


class FullES(base.Estimator):
  """Antithetic ES over whole episodes; it keeps no state between calls.

  Args:
    system: the unrolled system.
    num_particles: N, the number of antithetic pairs per estimate.
    sigma: the standard deviation of the perturbation per coordinate.
    particle_map: how the window runs over the particles (see
      `base.Estimator`); `jax.vmap` by default.
  """

  name = "full_es"

  def __init__(
    self,
    system,
    *,
    num_particles: int,
    sigma: float,
    particle_map: base.ParticleMap = base.vmap_particles,
  ):
    horizon = base.check_horizon(getattr(system, "horizon", None))
    super().__init__(
      system,
      num_particles=num_particles,
      unroll_length=horizon,
      step_unlocked=False,
      particle_map=particle_map,
    )
    self.sigma = base.check_sigma(sigma)

  def init(self, theta, key):
    """FullES has no persistent state: returns an empty dict."""
    del theta, key
    return {}

  def _init_particles(self, theta, counters, key):
    raise NotImplementedError  # `init` above needs no particles

  def _window(self, theta, particle, key, num_steps):
    system, sigma = self.system, self.sigma
    k_noise, k_init, k_steps = jax.random.split(key, 3)
    noise = base.sample_noise(k_noise, theta, sigma)
    thetas = base.member_thetas(theta, noise)

    def step(carry, inputs):
      inner, alive = carry
      t, step_key = inputs
      inner, losses, ok = base.step_members(system, thetas, inner, t, step_key)
      # A diverged episode stays masked until its end: no reset mid-episode.
      ok = ok & alive
      weight = base.antithetic_weight(losses, ok, sigma)
      return (inner, ok), (weight, jnp.where(ok, jnp.mean(losses), 0.0), ok)

    steps = jnp.arange(num_steps, dtype=jnp.int32)
    _, (weights, losses, ok) = jax.lax.scan(
      step,
      (self._fresh_inner(k_init, 2), jnp.asarray(True)),
      (steps, jax.random.split(k_steps, num_steps)),
    )
    return particle, (
      base.tree_scale(noise, jnp.sum(weights)),
      jnp.sum(losses),
      jnp.sum(ok),
    )
