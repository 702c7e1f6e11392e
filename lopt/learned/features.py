"""The learned optimizer's inputs: its state and per-parameter features.

`compute` is one update's bookkeeping for every kind of
`lopt.learned.optimizers`: it advances the momenta (and for the Adam kinds
Adam's second moment; for the adaptive kind each tensor's hypergradient
log-scale), then builds the features of every parameter, per tensor (the
normalisation is per tensor), concatenated into one channel-major
(num_features, total_params) block so that the MLP (`lopt.learned.network`)
runs once on every parameter. Features that are the same for every
parameter (the step and progress features) are kept apart as one short
vector.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lopt.learned.config import ADAM_KINDS, LOptConfig

# Momentum decays of MLPLOpt (algorithms.md section 4).
MOMENTUM_DECAYS = (0.1, 0.5, 0.9, 0.99, 0.999, 0.9999)
# Time scales tau of the tanh(it / tau - 1) step features.
TIME_SCALES = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1e3, 3e3, 1e4, 3e4, 1e5)
NORM_EPS = 1e-5  # Per-tensor second-moment normalisation epsilon.
# The nominal Adam step. Its first moment is the 0.9 momentum of the features.
ADAM_B1 = 0.9
ADAM_B2 = 0.999
ADAM_EPS = 1e-8
_ADAM_B1_INDEX = MOMENTUM_DECAYS.index(ADAM_B1)

# Per-parameter feature channels: g, p and the momenta (all normalised); the
# nominal kind adds the Adam direction, normalised and raw.
_NUM_BASE_CHANNELS = 2 + len(MOMENTUM_DECAYS)
NUM_PARAM_FEATURES = {
  "mlp": _NUM_BASE_CHANNELS,
  "nominal": _NUM_BASE_CHANNELS + 2,
  "adaptive": _NUM_BASE_CHANNELS + 2,
}
# Features shared by every parameter: step features (+ progress, nominal).
NUM_SHARED_FEATURES = {
  "mlp": len(TIME_SCALES),
  "nominal": len(TIME_SCALES) + 1,
  "adaptive": len(TIME_SCALES) + 1,
}


def num_features(cfg: LOptConfig) -> int:
  """Number of input features of the MLP (19 for MLPLOpt, 22 for nominal)."""
  return NUM_PARAM_FEATURES[cfg.kind] + NUM_SHARED_FEATURES[cfg.kind]


class MLPLOptState(NamedTuple):
  """State of the 'mlp' kind.

  Attributes:
    count: int32 scalar, number of updates taken so far.
    momenta: the parameter tree with each leaf of shape
      (len(MOMENTUM_DECAYS), *param.shape), float32; row i is the momentum
      with decay MOMENTUM_DECAYS[i].
  """

  count: jax.Array
  momenta: optax.Updates


class NominalLOptState(NamedTuple):
  """State of the 'nominal' kind.

  Attributes:
    count: int32 scalar, number of updates taken so far.
    momenta: as in `MLPLOptState` (row 2, decay 0.9, is Adam's first moment).
    nu: Adam's second moment (decay ADAM_B2), float32, shaped like params.
  """

  count: jax.Array
  momenta: optax.Updates
  nu: optax.Updates


class AdaptiveLOptState(NamedTuple):
  """State of the 'adaptive' kind.

  Attributes:
    count, momenta, nu: as in `NominalLOptState`.
    log_lr_scale: one float32 scalar per parameter tensor (a tree like the
      params with scalar leaves), the per-tensor log learning-rate scale s,
      initially 0.
    last_step: the step taken last (positive: params moved by -last_step),
      shaped like params; zero before the first. With
      `hypergradient_decay=d > 0`, the trace d * last_step + step instead.
  """

  count: jax.Array
  momenta: optax.Updates
  nu: optax.Updates
  log_lr_scale: optax.Updates
  last_step: optax.Updates


LOptState = MLPLOptState | NominalLOptState | AdaptiveLOptState


def _float_dtype(x: Any) -> jnp.dtype:
  return jnp.promote_types(jnp.result_type(x), jnp.float32)


def init_state(cfg: LOptConfig, params: optax.Params) -> LOptState:
  """The optimizer state for params (zeros, count 0), without needing theta.

  Equal to `learned_optimizer(theta, cfg, T).init(params)` for any theta;
  useful to build inner states before theta exists (e.g. inside `vmap`).

  Args:
    cfg: the architecture.
    params: the parameter pytree (only shapes and dtypes are used).

  Returns:
    `MLPLOptState` for kind 'mlp', `NominalLOptState` for 'nominal',
    `AdaptiveLOptState` for 'adaptive'.
  """
  n = len(MOMENTUM_DECAYS)
  momenta = jax.tree.map(
    lambda p: jnp.zeros((n, *jnp.shape(p)), _float_dtype(p)), params
  )
  count = jnp.zeros([], jnp.int32)
  if cfg.kind == "mlp":
    return MLPLOptState(count=count, momenta=momenta)
  zeros = lambda p: jnp.zeros(jnp.shape(p), _float_dtype(p))  # noqa: E731
  nu = jax.tree.map(zeros, params)
  if cfg.kind == "nominal":
    return NominalLOptState(count=count, momenta=momenta, nu=nu)
  return AdaptiveLOptState(
    count=count,
    momenta=momenta,
    nu=nu,
    log_lr_scale=jax.tree.map(lambda p: jnp.zeros([], jnp.float32), params),
    last_step=jax.tree.map(zeros, params),
  )


class _Computed(NamedTuple):
  """Everything one update derives from (grads, state, params)."""

  param_features: jax.Array  # (F_param, total_params), all leaves.
  shared_features: jax.Array  # (F_shared,)
  adam_direction: jax.Array | None  # (total_params,), Adam kinds only.
  progress: jax.Array | None  # scalar min(t / T, 1), Adam kinds only.
  # (total_params,) exp(s) of each parameter's tensor, adaptive kind only.
  lr_scale: jax.Array | None
  new_state: LOptState


def _normalize(x: jax.Array) -> jax.Array:
  """Second-moment normalisation of each row of x (channels, elements)."""
  ms = jnp.mean(jnp.square(x), axis=1, keepdims=True)
  return x * jax.lax.rsqrt(NORM_EPS + ms)


def _cosine(x: jax.Array, y: jax.Array) -> jax.Array:
  """cos(x, y) of two flat vectors, in [-1, 1]; 0 when either is zero.

  Each vector is first divided by its largest magnitude, so that both norms
  are at least 1: near a minimum the gradient's squares underflow float32
  while its products with the last step do not, and the unscaled quotient
  then leaves [-1, 1] by orders of magnitude (throwing the tensor's scale
  to a clip bound in one step).
  """
  mx, my = jnp.max(jnp.abs(x)), jnp.max(jnp.abs(y))
  ok = (mx > 0) & (my > 0)
  x = x / jnp.where(ok, mx, 1.0)
  y = y / jnp.where(ok, my, 1.0)
  norms = jnp.sqrt(jnp.sum(jnp.square(x))) * jnp.sqrt(jnp.sum(jnp.square(y)))
  cos = jnp.sum(x * y) / jnp.where(ok, norms, 1.0)
  return jnp.where(ok, jnp.clip(cos, -1.0, 1.0), 0.0)


def compute(
  cfg: LOptConfig,
  grads: optax.Updates,
  state: LOptState,
  params: optax.Params,
  num_steps: int | jax.Array | None,
  hyper_lr: jax.Array | None = None,
) -> tuple[_Computed, list[Any], Any]:
  """Updates the accumulators and builds the features of one step.

  `hyper_lr` is the adaptive kind's beta (unused by the other kinds). The
  returned state's `last_step` is still the previous step: the caller,
  which computes the new step, stores it.
  """
  g_leaves, treedef = jax.tree.flatten(grads)
  p_leaves = treedef.flatten_up_to(params)
  m_leaves = treedef.flatten_up_to(state.momenta)
  nominal = cfg.kind in ADAM_KINDS
  adaptive = cfg.kind == "adaptive"
  if nominal:
    v_leaves = treedef.flatten_up_to(state.nu)
  if adaptive:
    s_leaves = treedef.flatten_up_to(state.log_lr_scale)
    last_leaves = treedef.flatten_up_to(state.last_step)
  it = state.count  # Before the increment, as in the paper.
  new_count = optax.safe_increment(it)

  decays = jnp.asarray(MOMENTUM_DECAYS, jnp.float32)[:, None]
  if nominal:
    # Bias corrections use the incremented count, exactly as optax.adam.
    t1 = new_count.astype(jnp.float32)
    bc1 = 1.0 - ADAM_B1**t1
    bc2 = 1.0 - ADAM_B2**t1

  blocks, adam_dirs, new_m, new_v, new_s, scales = [], [], [], [], [], []
  for i, (g, p, m) in enumerate(zip(g_leaves, p_leaves, m_leaves)):
    shape = jnp.shape(p)
    # Scalars become (1,) vectors; every leaf is a flat row of elements.
    g = jnp.reshape(g, (1, -1)).astype(jnp.float32)
    p = jnp.reshape(p, (1, -1)).astype(jnp.float32)
    m_dtype = m.dtype
    m = jnp.reshape(m, (len(MOMENTUM_DECAYS), -1)).astype(jnp.float32)
    m = decays * m + (1.0 - decays) * g  # Updated before the features.
    # The state keeps its dtype so that it is a fixed point of lax.scan.
    new_m.append(m.reshape((len(MOMENTUM_DECAYS), *shape)).astype(m_dtype))
    channels = [g, p, m]
    if nominal:
      v_dtype = v_leaves[i].dtype
      v = jnp.reshape(v_leaves[i], (1, -1)).astype(jnp.float32)
      v = ADAM_B2 * v + (1.0 - ADAM_B2) * jnp.square(g)
      new_v.append(v.reshape(shape).astype(v_dtype))
      # Adam's preconditioner, shared by its step and the adaptive vote.
      adam_denominator = jnp.sqrt(v / bc2) + ADAM_EPS
      a = (m[_ADAM_B1_INDEX : _ADAM_B1_INDEX + 1] / bc1) / adam_denominator
      adam_dirs.append(a[0])
      channels += [a]
    if adaptive:
      # Hypergradient step on the tensor's log-scale, before this step uses
      # it: d loss / d log lr of the last step is -lr * g_t . step_{t-1}.
      last = jnp.reshape(last_leaves[i], (-1,)).astype(jnp.float32)
      vote = g[0]
      if cfg.hypergradient_metric == "adam":
        vote = vote / adam_denominator[0]
      scale = jnp.clip(
        s_leaves[i] + hyper_lr * _cosine(vote, last),
        cfg.lr_adapt_min,
        cfg.lr_adapt_max,
      )
      new_s.append(scale)
      scales.append(jnp.broadcast_to(jnp.exp(scale), (g.shape[1],)))
    block = _normalize(jnp.concatenate(channels, axis=0))
    if nominal:
      # The raw Adam direction is already scale free; keep its magnitude
      # (normalisation above discards it) since the step is lr * a.
      block = jnp.concatenate([block, a], axis=0)
    blocks.append(block)

  # One (F, total_params) block for all leaves, so that the MLP below runs
  # once on every parameter instead of once per tensor.
  param_features = jnp.concatenate(blocks, axis=1)

  itf = it.astype(jnp.float32)
  shared = [jnp.tanh(itf / jnp.asarray(TIME_SCALES, jnp.float32) - 1.0)]
  progress = None
  if nominal:
    progress = jnp.clip(itf / jnp.asarray(num_steps, jnp.float32), 0.0, 1.0)
    shared.append(progress[None])
  shared_features = jnp.concatenate(shared)

  new_momenta = jax.tree.unflatten(treedef, new_m)
  if adaptive:
    new_state = AdaptiveLOptState(
      count=new_count,
      momenta=new_momenta,
      nu=jax.tree.unflatten(treedef, new_v),
      log_lr_scale=jax.tree.unflatten(treedef, new_s),
      last_step=state.last_step,
    )
  elif nominal:
    new_state = NominalLOptState(
      count=new_count,
      momenta=new_momenta,
      nu=jax.tree.unflatten(treedef, new_v),
    )
  else:
    new_state = MLPLOptState(count=new_count, momenta=new_momenta)
  computed = _Computed(
    param_features=param_features,
    shared_features=shared_features,
    adam_direction=jnp.concatenate(adam_dirs) if nominal else None,
    progress=progress,
    lr_scale=jnp.concatenate(scales) if adaptive else None,
    new_state=new_state,
  )
  return computed, p_leaves, treedef


def compute_features(
  cfg: LOptConfig,
  grads: optax.Updates,
  state: LOptState,
  params: optax.Params,
  num_steps: int | None = None,
) -> jax.Array:
  """The MLP's full input features for one update (for tests and analysis).

  Args:
    cfg: the architecture.
    grads: gradients, a tree like params.
    state: the optimizer state before the update.
    params: current parameters.
    num_steps: the inner horizon T (needed by the Adam kinds).

  Returns:
    (total_params, num_features(cfg)) float32: leaves in `jax.tree.leaves`
    order, each flattened; columns are g, p, the six momenta (all
    normalised per tensor), then for the Adam kinds the normalised and raw
    Adam direction, then the 11 step features and for the Adam kinds the
    progress. (The adaptive kind's per-tensor scales are not features.)
  """
  check_num_steps(cfg, num_steps)
  c, _, _ = compute(cfg, grads, state, params, num_steps, jnp.zeros([]))
  rows = c.param_features.shape[1]
  shared = jnp.broadcast_to(
    c.shared_features, (rows, c.shared_features.shape[0])
  )
  return jnp.concatenate([c.param_features.T, shared], axis=1)


def check_num_steps(cfg: LOptConfig, num_steps: Any) -> None:
  if cfg.kind in ADAM_KINDS:
    if num_steps is None:
      raise ValueError(
        f"LOptConfig(kind={cfg.kind!r}) needs num_steps (the inner training "
        "horizon) for its learning-rate schedule and progress feature."
      )
    if isinstance(num_steps, (int, float)) and num_steps <= 0:
      raise ValueError(f"num_steps must be positive, got {num_steps}.")
