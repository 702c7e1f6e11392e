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
  rate differs by 10x across the held-out suite's tasks and a 2x miss costs
  up to 2x in mean training loss, so one learned rate cannot serve a
  family; this lets each tensor find its own within the run. The cosine
  makes the update of s free of the gradient's scale. Extra state: s (one
  scalar per tensor) and the last step.

  `hypergradient_metric='adam'` takes that cosine with the gradient
  preconditioned as Adam's step is, g_t / sqrt(v_hat_t), so that every
  coordinate counts as much in the vote as it moves in the step. In the
  plain ('euclidean') cosine the few coordinates with large gradients, the
  sharp directions that oscillate at a good learning rate, outvote the many
  flat ones that still move consistently, so the greedy rule shrinks the
  rate too far: on configs/generalist.py's CNN the untrained optimizer was
  1.11x tuned Adam with it and 0.96x with the preconditioned cosine
  (docs/generalist/screen_adaptive.json). Its MLP is made odd in the
  per-parameter features (`_reflection_symmetric`), so that its learned
  corrections cannot push every parameter the same way.

Performance: this is the hot path of meta-training. Features are computed
per tensor (the normalisation is per tensor), then all tensors are
concatenated into one channel-major (num_features, total_params) block so
the MLP runs once on every parameter, and the result is split back into the
parameter tree. Features that are the same for every parameter (the step
and progress features) are not broadcast into that block: their product
with the first layer's kernel is one vector, added to the first layer's
bias. `_apply_layers` says how the layers are arranged for speed.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

Theta = Any  # A nested dict of float32 arrays (the meta-parameters).

KINDS = ("mlp", "nominal", "adaptive")
# The kinds built on a nominal Adam step (its second moment, lr schedule and
# progress feature).
ADAM_KINDS = ("nominal", "adaptive")
# The adaptive kind's hypergradient cosine: on g, or on g / sqrt(v_hat).
HYPERGRADIENT_METRICS = ("euclidean", "adam")
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
_NUM_PARAM_FEATURES = {
  "mlp": _NUM_BASE_CHANNELS,
  "nominal": _NUM_BASE_CHANNELS + 2,
  "adaptive": _NUM_BASE_CHANNELS + 2,
}
# Features shared by every parameter: step features (+ progress, nominal).
_NUM_SHARED_FEATURES = {
  "mlp": len(TIME_SCALES),
  "nominal": len(TIME_SCALES) + 1,
  "adaptive": len(TIME_SCALES) + 1,
}


@dataclasses.dataclass(frozen=True)
class LOptConfig:
  """Architecture of a learned optimizer (hashable: usable as a static arg).

  Attributes:
    kind: 'mlp' (MLPLOpt), 'nominal' (learned corrections to Adam) or
      'adaptive' (the nominal kind with per-tensor hypergradient rates).
    hidden: hidden-layer widths of the per-parameter MLP.
    step_mult: MLPLOpt's step scale (the paper's 1e-3).
    exp_mult: MLPLOpt's log-magnitude scale (the paper's 1e-3).
    out_init_scale: MLPLOpt's output layer is initialised LeCun-normal times
      this factor, so the untrained optimizer takes tiny steps (about
      step_mult * out_init_scale) instead of random ones of size step_mult.
      The nominal kind always starts its output layer at zero.
    nominal_lr: initial learning rate of the nominal Adam step
      (theta['log_lr'] starts at its log).
    nominal_dir_mult: scale of the additive direction correction, in units
      of the learning rate (the Adam direction is O(1) per element).
    nominal_exp_mult: scale of the multiplicative log-step correction.
    adaptive_lr: initial base learning rate of the adaptive kind
      (theta['log_lr'] starts at its log).
    hyper_lr: initial hypergradient rate beta of the adaptive kind
      (theta['log_hyper_lr'] starts at its log). The defaults of both are
      the best of a grid on configs/generalist.py's tasks
      (docs/generalist/screen_adaptive.py).
    lr_adapt_min: lower bound of the adaptive kind's per-tensor log-scale.
    lr_adapt_max: upper bound of the same.
    hypergradient_metric: the adaptive kind's cosine of g_t with the last
      step, taken on the raw gradient ('euclidean', the default, so that
      checkpoints saved before the field existed keep their behaviour) or
      on the gradient preconditioned by Adam's second moment ('adam').
  """

  kind: str = "mlp"
  hidden: tuple[int, ...] = (32, 32)
  step_mult: float = 1e-3
  exp_mult: float = 1e-3
  out_init_scale: float = 0.01
  nominal_lr: float = 0.03
  nominal_dir_mult: float = 1.0
  nominal_exp_mult: float = 1.0
  adaptive_lr: float = 0.02
  hyper_lr: float = 0.3
  lr_adapt_min: float = -3.0
  lr_adapt_max: float = 2.0
  hypergradient_metric: str = "euclidean"

  def __post_init__(self):
    if self.hypergradient_metric not in HYPERGRADIENT_METRICS:
      raise ValueError(
        "LOptConfig.hypergradient_metric must be one of "
        f"{list(HYPERGRADIENT_METRICS)}, got {self.hypergradient_metric!r}."
      )
    if self.kind not in KINDS:
      raise ValueError(
        f"LOptConfig.kind must be one of {list(KINDS)}, got {self.kind!r}."
      )
    try:
      hidden = tuple(int(h) for h in self.hidden)
    except (TypeError, ValueError):
      hidden = None
    if not hidden or any(h <= 0 or h != w for h, w in zip(hidden, self.hidden)):
      raise ValueError(
        "LOptConfig.hidden must be a non-empty sequence of positive ints, "
        f"got {self.hidden!r}."
      )
    # A list (e.g. from JSON) becomes a tuple so that the config hashes.
    object.__setattr__(self, "hidden", hidden)
    positive = ("step_mult", "nominal_lr", "adaptive_lr", "hyper_lr")
    non_negative = (
      "exp_mult",
      "out_init_scale",
      "nominal_dir_mult",
      "nominal_exp_mult",
      "lr_adapt_max",
    )
    for name in positive + non_negative + ("lr_adapt_min",):
      value = getattr(self, name)
      ok = (
        isinstance(value, (int, float, np.floating, np.integer))
        and not isinstance(value, bool)
        and math.isfinite(value)
      )
      bound = "> 0" if name in positive else ">= 0"
      if name == "lr_adapt_min":
        bound = "<= 0"
        ok = ok and value <= 0
      elif ok:
        ok = value > 0 if name in positive else value >= 0
      if not ok:
        raise ValueError(
          f"LOptConfig.{name} must be a finite number {bound}, got {value!r}."
        )
      object.__setattr__(self, name, float(value))

  def to_dict(self) -> dict[str, Any]:
    """Returns a JSON-friendly dict (lists, floats, strings)."""
    d = dataclasses.asdict(self)
    d["hidden"] = list(self.hidden)
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> LOptConfig:
    """Builds a config from `to_dict()` output; missing fields get defaults.

    Args:
      d: a mapping of field names to values.

    Returns:
      The config.

    Raises:
      ValueError: on unknown fields (named, with the valid ones) or values.
    """
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(valid))
    if unknown:
      raise ValueError(
        f"Unknown LOptConfig field(s) {unknown}; valid fields: {valid}."
      )
    return cls(**d)


def num_features(cfg: LOptConfig) -> int:
  """Number of input features of the MLP (19 for MLPLOpt, 22 for nominal)."""
  return _NUM_PARAM_FEATURES[cfg.kind] + _NUM_SHARED_FEATURES[cfg.kind]


class _DenseParams(nn.Module):
  """Creates one layer's `kernel` (in, out) and `bias` (out,); computes nothing.

  The layers' arithmetic lives in `_apply_layers`, written for speed; this
  module only names and initialises the parameters exactly as `nn.Dense`.
  """

  in_features: int
  features: int
  kernel_init: nn.initializers.Initializer

  @nn.compact
  def __call__(self) -> tuple[jax.Array, jax.Array]:
    kernel = self.param(
      "kernel", self.kernel_init, (self.in_features, self.features), jnp.float32
    )
    bias = self.param(
      "bias", nn.initializers.zeros_init(), (self.features,), jnp.float32
    )
    return kernel, bias


def _apply_layers(
  layers: Sequence[tuple[jax.Array, jax.Array]],
  features: jax.Array,
  shared: jax.Array,
) -> jax.Array:
  """The MLP's arithmetic: (F - S, P) and (S,) features -> (P, 2).

  Arranged for speed; a stack of `nn.Dense` on the (P, F) matrix computes
  the same function:

  * the shared features' product with the first kernel is one vector,
    folded into the first bias (for MLPLOpt 11 of 19 input columns);
  * the first layer, with its 8 (nominal kind: 10) per-parameter inputs, is
    a sum of rank-one terms on the channel-major input, which XLA fuses
    with the bias and ReLU into one elementwise loop. As a matmul of inner
    dimension 8 it needed the input transposed and a separate pass for the
    bias and ReLU, and ran at a third of the machine's matmul rate.

  On the digits task (32 trajectories, 2 CPU cores) the rank-one first
  layer cut the first layer from 2.2 to 0.8 ms per inner step of all
  trajectories, and a whole inner step by about 15 %.

  Args:
    layers: (kernel, bias) per layer, kernels (in, out).
    features: (F - S, P) per-parameter features, channel-major.
    shared: (S,) features common to every parameter.

  Returns:
    (P, 2): the direction and the log-magnitude of each parameter's step.
  """
  kernel, bias = layers[0]
  num_rows = features.shape[0]
  bias = bias + shared @ kernel[num_rows:]
  x = bias + sum(features[f][:, None] * kernel[f] for f in range(num_rows))
  for kernel, bias in layers[1:]:
    x = jax.nn.relu(x) @ kernel + bias
  return x


class MLPLOpt(nn.Module):
  """The per-parameter MLP of the learned optimizer.

  Maps features to (direction, log-magnitude), with ReLU between layers.
  Parameters are `{'layer_0': {'kernel', 'bias'}, ...}`; hidden (32, 32) on
  19 features gives 1,762 of them. Hidden layers are LeCun-normal
  (truncated normal, variance 1/fan_in, close to the haiku default of the
  paper's code), biases zero, and the output kernel is LeCun-normal times
  `out_init_scale` (zero when it is 0).

  Attributes:
    hidden: hidden-layer widths.
    out_init_scale: scale of the output layer's initial kernel.
  """

  hidden: Sequence[int] = (32, 32)
  out_init_scale: float = 0.01

  @nn.compact
  def __call__(self, features: jax.Array, shared: jax.Array) -> jax.Array:
    """Applies the MLP.

    Args:
      features: (F - S, P) per-parameter features of P parameters,
        channel-major.
      shared: (S,) features common to all parameters, logically the last S
        input columns.

    Returns:
      (P, 2): direction and log-magnitude.
    """
    widths = (*self.hidden, 2)
    fan_in = features.shape[0] + shared.shape[0]
    layers = []
    for i, width in enumerate(widths):
      if i < len(widths) - 1:
        kernel_init = nn.initializers.lecun_normal()
      elif self.out_init_scale == 0:
        kernel_init = nn.initializers.zeros_init()
      else:
        kernel_init = nn.initializers.variance_scaling(
          self.out_init_scale**2, "fan_in", "truncated_normal"
        )
      layers.append(
        _DenseParams(fan_in, width, kernel_init, name=f"layer_{i}")()
      )
      fan_in = width
    return _apply_layers(layers, features, shared)


def _module(cfg: LOptConfig) -> MLPLOpt:
  scale = cfg.out_init_scale if cfg.kind == "mlp" else 0.0
  return MLPLOpt(hidden=cfg.hidden, out_init_scale=scale)


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
  module = _module(cfg)
  shared = jnp.zeros((_NUM_SHARED_FEATURES[cfg.kind],), jnp.float32)
  per_param = jnp.zeros((_NUM_PARAM_FEATURES[cfg.kind], 1), jnp.float32)
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
      shaped like params; zero before the first.
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


def _compute(
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
      a = (m[_ADAM_B1_INDEX : _ADAM_B1_INDEX + 1] / bc1) / (
        jnp.sqrt(v / bc2) + ADAM_EPS
      )
      adam_dirs.append(a[0])
      channels += [a]
    if adaptive:
      # Hypergradient step on the tensor's log-scale, before this step uses
      # it: d loss / d log lr of the last step is -lr * g_t . step_{t-1}.
      last = jnp.reshape(last_leaves[i], (-1,)).astype(jnp.float32)
      vote = g[0]
      if cfg.hypergradient_metric == "adam":
        vote = vote / (jnp.sqrt(v[0] / bc2) + ADAM_EPS)
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


def _reflection_symmetric(
  module: MLPLOpt, params: Theta, features: jax.Array, shared: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """The MLP made odd (direction) and even (log-magnitude) in its features.

  Every per-parameter feature (g, p, the momenta, the Adam direction)
  changes sign when the model is mirrored (p -> -p), and then the step
  should too. With f the plain MLP and x the per-parameter features,

      d(x) = (f_d(x) - f_d(-x)) / 2,    m(x) = (f_m(x) + f_m(-x)) / 2,

  so the update is exactly odd under the mirror. Above all d(0) = 0: the
  MLP's biases cannot add a constant push to every parameter. Such a push
  is invisible in a short window but moves each weight by about
  lr * bias * T over a run, and the near-pure-noise ES estimates (grad_snr
  ~ 0) random-walk the biases: the nominal generalist's runs diverged at
  the long horizons. The cost is the MLP run twice (on x and -x, as one
  batch).
  """
  num = features.shape[1]
  both = jnp.concatenate([features, -features], axis=1)
  out = module.apply({"params": params}, both, shared)
  pos, neg = out[:num], out[num:]
  return 0.5 * (pos[:, 0] - neg[:, 0]), 0.5 * (pos[:, 1] + neg[:, 1])


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
  _check_num_steps(cfg, num_steps)
  c, _, _ = _compute(cfg, grads, state, params, num_steps, jnp.zeros([]))
  rows = c.param_features.shape[1]
  shared = jnp.broadcast_to(
    c.shared_features, (rows, c.shared_features.shape[0])
  )
  return jnp.concatenate([c.param_features.T, shared], axis=1)


def _check_num_steps(cfg: LOptConfig, num_steps: Any) -> None:
  if cfg.kind in ADAM_KINDS:
    if num_steps is None:
      raise ValueError(
        f"LOptConfig(kind={cfg.kind!r}) needs num_steps (the inner training "
        "horizon) for its learning-rate schedule and progress feature."
      )
    if isinstance(num_steps, (int, float)) and num_steps <= 0:
      raise ValueError(f"num_steps must be positive, got {num_steps}.")


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
  _check_num_steps(cfg, num_steps)
  _check_theta(theta, cfg)
  module = _module(cfg)

  def init_fn(params: optax.Params) -> LOptState:
    return init_state(cfg, params)

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
    c, p_leaves, treedef = _compute(
      cfg, updates, state, params, num_steps, hyper_lr
    )
    if cfg.kind == "adaptive":
      direction, magnitude = _reflection_symmetric(
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
      last = treedef.flatten_up_to(state.last_step)
      new_state = new_state._replace(
        last_step=jax.tree.unflatten(
          treedef, [x.astype(y.dtype) for x, y in zip(steps, last)]
        )
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
