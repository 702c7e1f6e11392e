"""The learned optimizer: a per-parameter MLP, as an optax transformation.

One implementation serves meta-training and users. `learned_optimizer(theta,
cfg, num_steps)` returns an `optax.GradientTransformation`; the inner training
loop of meta-training calls its `update` (under `vmap` over particles and
perturbed thetas, inside `lax.scan`), and `lopt.load_optimizer` returns the
very same transformation, so what users run is bit-for-bit what was
meta-trained.

Two kinds share the feature code and the network:

* `kind='mlp'` is MLPLOpt, the learned optimizer of the Noise-Reuse ES paper
  (Li, Harrison, Sohl-Dickstein, Smith, Metz, NeurIPS 2023, arXiv 2304.12180),
  introduced as `MLPLOpt` in learned_optimization (Metz et al., "Practical
  tradeoffs between memory, compute, and performance in learned optimizers",
  CoLLAs 2022, arXiv 2203.11860). For every scalar parameter it builds 19
  features: the gradient g, the parameter p and six momenta of g (decays
  0.1 ... 0.9999, updated before the features are built, no bias
  correction), each of these 8 channels normalised per tensor by
  x / sqrt(1e-5 + mean(x^2)), and 11 step features tanh(it / tau - 1). An MLP
  19 -> 32 -> 32 -> 2 (ReLU, 1,762 parameters) maps them to a direction d and
  a log-magnitude m, and

      p <- p - step_mult * d * exp(exp_mult * m).

* `kind='nominal'` corrects a hand-designed step: Adam with a learned learning
  rate that decays linearly to zero over the inner horizon `num_steps`,

      a   = m_hat / (sqrt(v_hat) + 1e-8)          (bias-corrected Adam,
                                                    b1 = 0.9, b2 = 0.999)
      lr  = exp(theta['log_lr']) * (1 - min(t, T) / T)
      p  <- p - lr * (a * exp(nominal_exp_mult * m) + nominal_dir_mult * d),

  where (d, m) come from the same kind of MLP on the MLPLOpt features plus
  the Adam direction (per-tensor normalised, and raw) and the training
  progress min(t / T, 1). The MLP's output layer starts at zero, so the
  untrained optimizer IS Adam(lr=nominal_lr, linear decay to 0); ES starts
  from a strong optimizer and only has to learn corrections (the
  `adafac_nominal` learned optimizer of learned_optimization is the
  precedent for adding a nominal step). Adam's first moment is the 0.9
  momentum the features already keep, so the only extra state is v.

* `kind='adaptive'` is the nominal kind whose learning rate also adapts to
  the model it trains, per tensor, by hypergradient descent (Baydin et al.,
  "Online learning rate adaptation with hypergradient descent", ICLR 2018),
  in multiplicative form on a per-tensor log-scale s:

      s  <- clip(s + beta * cos(g_t, step_{t-1}), lr_adapt_min, lr_adapt_max)
      lr <- exp(theta['log_lr'] + s) * (1 - min(t, T) / T)

  with beta = exp(theta['log_hyper_lr']) learned. A gradient that still
  points along the last step says the step was too short (s grows); one
  that points back says it overshot (s shrinks). Tuned Adam's best learning
  rate differs from task to task, and missing it costs training loss (each
  held-out task's best rate and its whole sweep:
  docs/generalist/suite_heldout.json), so one learned rate cannot serve a
  family; this lets each tensor find its own within the run. The cosine
  makes the update of s free of the gradient's scale. Extra state: s (one
  scalar per tensor) and the last step. Its MLP is made odd in the
  per-parameter features (`network.reflection_symmetric`), so that its
  learned corrections cannot push every parameter the same way.

  `hypergradient_metric='adam'` takes that cosine with the gradient
  preconditioned as Adam's step is, g_t / sqrt(v_hat_t), so that every
  coordinate counts as much in the vote as it moves in the step. In the
  plain ('euclidean') cosine the few coordinates with large gradients, the
  sharp directions that oscillate at a good learning rate, outvote the many
  flat ones that still move consistently, so the greedy rule shrinks the
  rate too far (measurements: docs/generalist.md,
  docs/generalist/screen_adaptive.json).

  `hypergradient_decay=d > 0` takes the cosine with a trace of the past
  steps, trace_t = d * trace_{t-1} + step_t, instead of the last step: the
  parameters' sensitivity to the log-rate over the last ~1 / (1 - d) steps,
  as in Sutton's IDBD ("Adapting bias by gradient descent", AAAI 1992),
  with curvature's decay of that sensitivity replaced by d. The one-step
  vote is greedy, and greedy rates are too small over a long run (Wu et
  al., "Understanding short-horizon bias in stochastic meta-optimization",
  ICLR 2018): the part of a step that followed its batch's noise raises the
  next batch's loss, so noise alone votes the rate down. Over a trace the
  noise of many steps partly cancels while their shared direction adds up.
  The state keeps the trace in `last_step` (the last step when d = 0).

The pieces: `lopt.learned.features` builds the inputs and keeps the state,
`lopt.learned.network` is the MLP; this module is the public interface.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from lopt.learned import features, network
from lopt.learned.config import LOptConfig
from lopt.learned.features import LOptState

Theta = Any  # A nested dict of float32 arrays (the meta-parameters).


# Jitted (cfg is static and hashable) because the eager Flax init dispatches
# dozens of small ops, each compiled on first use: one compile is faster.
@functools.partial(jax.jit, static_argnums=0)
def init_theta(cfg: LOptConfig, key: jax.Array) -> Theta:
  """Draws the initial meta-parameters.

  Args:
    cfg: the architecture.
    key: a PRNG key.

  Returns:
    A plain nested dict of float32 arrays: `{'mlp': {'layer_0': {'kernel',
    'bias'}, ...}}` for kind 'mlp', plus a scalar `'log_lr'` (initially
    log(nominal_lr)) for kind 'nominal', and for kind 'adaptive' the
    scalars `'log_lr'` (log(adaptive_lr)) and `'log_hyper_lr'`
    (log(hyper_lr)).
  """
  module = network.module(cfg)
  shared = jnp.zeros((features.NUM_SHARED_FEATURES[cfg.kind],), jnp.float32)
  per_param = jnp.zeros((features.NUM_PARAM_FEATURES[cfg.kind], 1), jnp.float32)
  params = module.init(key, per_param, shared)["params"]
  theta = {
    "mlp": jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), dict(params))
  }
  if cfg.kind == "nominal":
    theta["log_lr"] = jnp.asarray(math.log(cfg.nominal_lr), jnp.float32)
  if cfg.kind == "adaptive":
    theta["log_lr"] = jnp.asarray(math.log(cfg.adaptive_lr), jnp.float32)
    theta["log_hyper_lr"] = jnp.asarray(math.log(cfg.hyper_lr), jnp.float32)
  return theta


@functools.lru_cache(maxsize=32)
def theta_shapes(cfg: LOptConfig) -> Theta:
  return jax.eval_shape(lambda k: init_theta(cfg, k), jax.random.key(0))


def _check_theta(theta: Theta, cfg: LOptConfig) -> None:
  """Raises a ValueError if theta's structure or shapes do not fit cfg."""
  expected = theta_shapes(cfg)
  exp_def = jax.tree.structure(expected)
  try:
    leaves = exp_def.flatten_up_to(theta)
  except (ValueError, TypeError) as e:
    raise ValueError(
      f"theta does not match LOptConfig(kind={cfg.kind!r}, "
      f"hidden={cfg.hidden}): expected structure {exp_def}, got "
      f"{jax.tree.structure(theta)}."
    ) from e
  for path_leaf, got in zip(
    jax.tree_util.tree_leaves_with_path(expected), leaves
  ):
    path, want = path_leaf
    if jnp.shape(got) != want.shape:
      raise ValueError(
        f"theta{jax.tree_util.keystr(path)} has shape {jnp.shape(got)}, "
        f"but LOptConfig(kind={cfg.kind!r}, hidden={cfg.hidden}) needs "
        f"{want.shape}."
      )


def learned_optimizer(
  theta: Theta,
  cfg: LOptConfig,
  num_steps: int | None = None,
) -> optax.GradientTransformation:
  """The learned optimizer with meta-parameters `theta`, as optax.

  The transformation is pure and works under `jit`, `vmap` (e.g. over a
  stack of perturbed thetas) and `lax.scan`, on any parameter pytree (linen
  params, plain dicts, NNX state via `nnx.Optimizer(model, tx,
  wrt=nnx.Param)`), including scalar leaves.

  Args:
    theta: meta-parameters, as from `init_theta(cfg, key)`.
    cfg: the architecture theta belongs to.
    num_steps: the inner training horizon T. The Adam kinds need it
      (learning-rate decay and progress feature); MLPLOpt ignores it, as in
      the paper.

  Returns:
    An `optax.GradientTransformation` whose `update(grads, state, params)`
    returns updates that already include the minus sign (add them with
    `optax.apply_updates`). `params` is required.

  Raises:
    ValueError: if theta does not fit cfg, or num_steps is missing for the
      'nominal' kind.
  """
  if not isinstance(cfg, LOptConfig):
    raise TypeError(f"cfg must be an LOptConfig, got {type(cfg).__name__}.")
  features.check_num_steps(cfg, num_steps)
  _check_theta(theta, cfg)
  module = network.module(cfg)

  def init_fn(params: optax.Params) -> LOptState:
    return features.init_state(cfg, params)

  def update_fn(
    updates: optax.Updates,
    state: LOptState,
    params: optax.Params | None = None,
  ) -> tuple[optax.Updates, LOptState]:
    if params is None:
      raise ValueError(
        "The learned optimizer needs the current parameters: call "
        "update(grads, state, params)."
      )
    hyper_lr = (
      jnp.exp(theta["log_hyper_lr"]) if cfg.kind == "adaptive" else None
    )
    c, p_leaves, treedef = features.compute(
      cfg, updates, state, params, num_steps, hyper_lr
    )
    if cfg.kind == "adaptive":
      direction, magnitude = network.reflection_symmetric(
        module, theta["mlp"], c.param_features, c.shared_features
      )
    else:
      out = module.apply(
        {"params": theta["mlp"]}, c.param_features, c.shared_features
      )
      direction, magnitude = out[:, 0], out[:, 1]
    if cfg.kind == "mlp":
      step = cfg.step_mult * direction * jnp.exp(cfg.exp_mult * magnitude)
    else:
      lr = jnp.exp(theta["log_lr"]) * (1.0 - c.progress)
      if cfg.kind == "adaptive":
        lr = lr * c.lr_scale
      step = lr * (
        c.adam_direction * jnp.exp(cfg.nominal_exp_mult * magnitude)
        + cfg.nominal_dir_mult * direction
      )
    steps, offset = [], 0
    for p in p_leaves:
      size = math.prod(jnp.shape(p))
      steps.append(step[offset : offset + size].reshape(jnp.shape(p)))
      offset += size
    new_updates = [
      -x.astype(jnp.result_type(p)) for x, p in zip(steps, p_leaves)
    ]
    new_state = c.new_state
    if cfg.kind == "adaptive":
      decay = cfg.hypergradient_decay
      last = treedef.flatten_up_to(state.last_step)
      trace = [
        (x if decay == 0.0 else decay * y.astype(jnp.float32) + x).astype(
          y.dtype
        )
        for x, y in zip(steps, last)
      ]
      new_state = new_state._replace(
        last_step=jax.tree.unflatten(treedef, trace)
      )
    return jax.tree.unflatten(treedef, new_updates), new_state

  return optax.GradientTransformation(init_fn, update_fn)


def adam_baseline(
  learning_rate: float,
  num_steps: int | None = None,
  schedule: str = "constant",
) -> optax.GradientTransformation:
  """Hand-designed baseline: optax Adam with a constant or linear schedule.

  Args:
    learning_rate: the (initial) learning rate.
    num_steps: horizon over which 'linear' decays to zero.
    schedule: 'constant' or 'linear' (decay to zero over num_steps).

  Returns:
    `optax.adam` with that schedule (b1=0.9, b2=0.999, eps=1e-8).

  Raises:
    ValueError: on an unknown schedule or a missing num_steps.
  """
  if schedule == "constant":
    return optax.adam(learning_rate)
  if schedule == "linear":
    if num_steps is None or num_steps <= 0:
      raise ValueError(
        f"schedule='linear' needs a positive num_steps, got {num_steps}."
      )
    return optax.adam(optax.linear_schedule(learning_rate, 0.0, num_steps))
  raise ValueError(
    f"Unknown schedule {schedule!r}; valid choices: ['constant', 'linear']."
  )
