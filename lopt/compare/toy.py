"""The toy-system runner of `lopt.compare`: one estimator, many seeds.

Outer steps run in chunks, each one jitted `lax.fori_loop` over
`lopt.train.outer.outer_step` with a dynamic trip count, so there is no
Python loop per step and the chunk lengths can follow the budget without
recompiling. Only
the chunks are timed (after compiling them, and after the estimator's
burn-in). The meta-loss curve is the *unperturbed* objective at the current
theta, evaluated after every chunk outside the timed region: the loss of
whole episodes of `config.eval`'s test system (for Lorenz: the mean
per-step loss of T steps, averaged over `eval.num_inits` test initial
conditions drawn around the training start; for influence balancing: the
loss after a fresh 500-step unroll). This is the NRES paper's protocol:
evaluation never counts as training time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.flatten_util import ravel_pytree

from lopt import experiment, jsonio
from lopt.compare.budget import Budget
from lopt.train import outer


def make_evaluator(config: ml_collections.ConfigDict):
  """A jitted theta -> unperturbed meta-loss on the toy test system.

  The test system is `config.system` with `config.eval.system` applied; it
  runs one whole episode (`eval.horizon` steps, default its own horizon)
  from each of `eval.num_inits` fixed initial conditions, and the loss is
  the mean (or, with `eval.reduce = 'last'`, the final) per-step loss,
  averaged over the initial conditions.
  """
  ev = config.eval
  system = experiment.make_system(config, **dict(ev.get("system", {})))
  horizon = ev.get("horizon", 0) or system.horizon
  keys = jax.random.split(
    jax.random.key(ev.get("seed", 12345)), ev.get("num_inits", 1)
  )
  reduce = ev.get("reduce", "mean")
  if reduce not in ("mean", "last"):
    raise ValueError(f"eval.reduce must be 'mean' or 'last', got {reduce!r}")

  def episode(theta, key):
    def body(state, inputs):
      t, step_key = inputs
      return system.step(theta, state, t, step_key)

    k_init, k_steps = jax.random.split(key)
    ts = jnp.arange(horizon, dtype=jnp.int32) % system.horizon
    _, losses = jax.lax.scan(
      body, system.init(k_init), (ts, jax.random.split(k_steps, horizon))
    )
    return jnp.mean(losses) if reduce == "mean" else losses[-1]

  return jax.jit(
    lambda theta: jnp.mean(jax.vmap(episode, in_axes=(None, 0))(theta, keys))
  )


def one_particle_step_seconds(
  estimator, theta, key: jax.Array, min_seconds: float = 0.2, repeats: int = 5
) -> float:
  """Measured seconds of one sequential inner step of one particle.

  Times `estimator.estimate` (compiled, burn-in excluded) on an estimator
  with a single particle (one antithetic pair for ES: both members, as one
  worker of a parallel machine would run them), in a jitted loop of enough
  estimates to last `min_seconds`; the fastest of `repeats` timings, divided
  by the estimates' sequential steps (`unroll_length` each). This is the
  per-step cost a machine that runs every particle at once would pay; it
  leaves out the cross-particle reduction and the outer update.
  """
  if estimator.num_particles != 1:
    raise ValueError(
      f"needs a one-particle estimator, got {estimator.num_particles}"
    )

  def loop(state, key, num):
    def body(i, carry):
      state, total = carry
      grad, state, _ = estimator.estimate(
        theta, state, jax.random.fold_in(key, i)
      )
      leaves = jax.tree_util.tree_leaves(grad)
      return state, total + sum(jnp.sum(g) for g in leaves)

    return jax.lax.fori_loop(0, num, body, (state, jnp.zeros(())))

  k_init, k_train = jax.random.split(key)
  state = jax.block_until_ready(jax.jit(estimator.init)(theta, k_init))
  run = jax.jit(loop).lower(state, k_train, jnp.int32(1)).compile()
  jax.block_until_ready(run(state, k_train, jnp.int32(1)))
  num, elapsed = 1, 0.0
  while True:
    t0 = time.perf_counter()
    jax.block_until_ready(run(state, k_train, jnp.int32(num)))
    elapsed = time.perf_counter() - t0
    if elapsed >= min_seconds or num >= 2**20:
      break
    num *= max(2, min(16, math.ceil(min_seconds / max(elapsed, 1e-6))))
  for _ in range(repeats - 1):
    t0 = time.perf_counter()
    jax.block_until_ready(run(state, k_train, jnp.int32(num)))
    elapsed = min(elapsed, time.perf_counter() - t0)
  return elapsed / (num * estimator.unroll_length)


def _flat(theta) -> list[float]:
  return [float(x) for x in np.ravel(np.asarray(ravel_pytree(theta)[0]))]


class ToyRunner:
  """One estimator on a toy system, compiled once and run for any seed.

  Attributes:
    label: the estimator label.
    estimator: the estimator.
    settings: its resolved settings (`lopt.compare.run.settings`).
    compile_seconds: time spent compiling the burn-in and the chunk.
  """

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    label: str,
    settings: Mapping[str, Any],
  ):
    self.config = config
    self.label = label
    self.settings = settings
    system = experiment.make_system(config)
    self.estimator = est = experiment.make_estimator(settings, system)
    self.optimizer = opt = experiment.make_outer_optimizer(settings)
    self.theta0 = jnp.asarray(config.theta_init, jnp.float32)

    def init(theta, key):
      return outer.init(est, opt, theta, key)

    def chunk(state, key, start, num):
      """`num` outer steps from outer step `start`; sums of their infos."""

      def body(i, carry):
        state, sums = carry
        state, info = outer.outer_step(
          est, opt, state, jax.random.fold_in(key, start + i)
        )
        sums = {
          "loss": sums["loss"] + info["loss"],
          "steps": sums["steps"] + info["steps"].astype(jnp.float32),
          "nonfinite": sums["nonfinite"] + info["nonfinite"],
          "skipped": sums["skipped"] + (~info["applied"]).astype(jnp.int32),
        }
        return state, sums

      zeros = {
        "loss": jnp.zeros(()),
        "steps": jnp.zeros(()),
        "nonfinite": jnp.zeros((), jnp.int32),
        "skipped": jnp.zeros((), jnp.int32),
      }
      return jax.lax.fori_loop(0, num, body, (state, zeros))

    t0 = time.perf_counter()
    key = jax.random.key(0)
    self._init = jax.jit(init).lower(self.theta0, key).compile()
    state = jax.eval_shape(init, self.theta0, key)
    self._chunk = (
      jax.jit(chunk).lower(state, key, jnp.int32(0), jnp.int32(1)).compile()
    )
    self.compile_seconds = time.perf_counter() - t0
    self._step_seconds = None

  @property
  def step_seconds(self) -> float:
    """`one_particle_step_seconds` of this label's estimator (measured once)."""
    if self._step_seconds is None:
      one = experiment.make_estimator(
        dict(self.settings, num_particles=1), self.estimator.system
      )
      self._step_seconds = one_particle_step_seconds(
        one, self.theta0, jax.random.key(0)
      )
    return self._step_seconds

  def run(self, seed: int, budget: Budget, evaluate) -> dict[str, Any]:
    """Meta-trains from `config.theta_init` with one seed.

    Args:
      seed: the seed of the estimator's randomness (theta starts at
        `config.theta_init` whatever the seed).
      budget: when to stop (a `lopt.compare.budget.Budget`).
      evaluate: theta -> meta-loss, from `make_evaluator(config)`.

    Returns:
      A dict of lists, one entry per evaluation point (the first is the
      start): `outer_steps`, `steps` (cumulative `info["steps"]`),
      `sequential_steps` (inner steps one particle ran one after another),
      `seconds` (timed region only), `meta_loss` (unperturbed, evaluated
      untimed), `train_loss` (mean `info["loss"]` of the chunk: the
      perturbed particles' loss), `theta`, `nonfinite`, `skipped_updates`,
      `parallel_seconds` (an estimate of the wall-clock on a machine that
      runs every particle at once: `sequential_steps` x `step_seconds`);
      and scalars `seed`, `compile_seconds`, `burn_in_seconds`,
      `burn_in_steps`, `steps_per_update`, `step_seconds` (measured:
      `one_particle_step_seconds`).
    """
    config = self.config
    k_init, k_train = jax.random.split(jax.random.key(seed))
    t0 = time.perf_counter()
    state = jax.block_until_ready(self._init(self.theta0, k_init))
    burn_in_seconds = time.perf_counter() - t0
    per_update = self.estimator.steps_per_estimate
    num_points = int(config.eval.get("num_points", 40))
    fixed = _fixed_chunk(config, budget, per_update, num_points)
    curve = {
      "outer_steps": [0],
      "steps": [0],
      "sequential_steps": [0],
      "seconds": [0.0],
      "meta_loss": [jsonio.finite_or_none(float(evaluate(state.theta)))],
      "train_loss": [None],
      "theta": [_flat(state.theta)],
      "nonfinite": [0],
      "skipped_updates": [0],
    }
    done_outer, done_steps, seconds, chunk_len = 0, 0, 0.0, fixed or 1
    while not budget.spent(seconds, done_steps, done_outer):
      num = chunk_len
      if budget.outer_steps:
        num = min(num, budget.outer_steps - done_outer)
      if budget.steps:
        num = min(num, math.ceil((budget.steps - done_steps) / per_update))
      t0 = time.perf_counter()
      state, sums = self._chunk(
        state, k_train, jnp.int32(done_outer), jnp.int32(num)
      )
      jax.block_until_ready(state)
      elapsed = time.perf_counter() - t0
      # Everything below is outside the timed region.
      seconds += elapsed
      done_outer += num
      done_steps += int(round(float(sums["steps"])))
      curve["outer_steps"].append(done_outer)
      curve["steps"].append(done_steps)
      # One update runs every particle's W steps (T for FullES) at once.
      curve["sequential_steps"].append(
        done_outer * self.estimator.unroll_length
      )
      curve["seconds"].append(seconds)
      curve["meta_loss"].append(
        jsonio.finite_or_none(float(evaluate(state.theta)))
      )
      curve["train_loss"].append(
        jsonio.finite_or_none(float(sums["loss"]) / num)
      )
      curve["theta"].append(_flat(state.theta))
      curve["nonfinite"].append(int(sums["nonfinite"]))
      curve["skipped_updates"].append(int(sums["skipped"]))
      if not fixed:  # a seconds budget: aim at num_points chunks
        rate = max(elapsed / num, 1e-9)
        chunk_len = int(np.clip(budget.seconds / num_points / rate, 1, 4 * num))
        remaining = budget.seconds - seconds
        chunk_len = max(1, min(chunk_len, math.ceil(remaining / rate)))
    logging.info(
      "%s seed %d: %d outer steps, %d inner steps, %.1f s, meta-loss %s",
      self.label,
      seed,
      done_outer,
      done_steps,
      seconds,
      curve["meta_loss"][-1],
    )
    step_seconds = self.step_seconds
    curve["parallel_seconds"] = [
      n * step_seconds for n in curve["sequential_steps"]
    ]
    curve.update(
      seed=seed,
      step_seconds=step_seconds,
      compile_seconds=self.compile_seconds,
      burn_in_seconds=burn_in_seconds,
      burn_in_steps=self.estimator.burn_in_steps,
      steps_per_update=per_update,
    )
    return curve


def _fixed_chunk(config, budget, per_update: int, num_points: int) -> int:
  """Outer steps per chunk, or 0 to adapt it to a seconds budget."""
  every = float(config.eval.get("every_steps", 0))
  if every:
    return max(1, round(every / per_update))
  if budget.steps:
    return max(1, math.ceil(budget.steps / num_points / per_update))
  if budget.outer_steps:
    return max(1, math.ceil(budget.outer_steps / num_points))
  return 0
