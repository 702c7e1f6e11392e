"""The learned optimizer's architecture: `LOptConfig`, and the kinds it names.

Its own module because everything about the learned optimizer reads it (the
features, the network, the optax transformation, the config validation and
the checkpoints, which store it as JSON) while it reads none of them. It is
hashable, so it can be a static argument of `jax.jit`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

KINDS = ("mlp", "nominal", "adaptive")
# The kinds built on a nominal Adam step (its second moment, lr schedule and
# progress feature).
ADAM_KINDS = ("nominal", "adaptive")
# The adaptive kind's hypergradient cosine: on g, or on g / sqrt(v_hat).
HYPERGRADIENT_METRICS = ("euclidean", "adam")
# How the per-parameter MLP stores its hidden activations between layers
# (its sums are float32 either way; lopt.learned.network).
ACTIVATION_DTYPES = ("float32", "bfloat16")


def _positive(x):
  return x > 0


def _non_negative(x):
  return x >= 0


# LOptConfig's numeric fields: (whether a value is allowed, how the error
# message says so).
_NUMBER_BOUNDS = {
  "step_mult": (_positive, "> 0"),
  "nominal_lr": (_positive, "> 0"),
  "adaptive_lr": (_positive, "> 0"),
  "hyper_lr": (_positive, "> 0"),
  "exp_mult": (_non_negative, ">= 0"),
  "out_init_scale": (_non_negative, ">= 0"),
  "nominal_dir_mult": (_non_negative, ">= 0"),
  "nominal_exp_mult": (_non_negative, ">= 0"),
  "lr_adapt_max": (_non_negative, ">= 0"),
  "lr_adapt_min": (lambda x: x <= 0, "<= 0"),
  "hypergradient_decay": (lambda x: 0 <= x < 1, "in [0, 1)"),
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
      (theta['log_hyper_lr'] starts at its log). Both defaults are the
      best of a grid on configs/generalist.py's family tasks (the grid:
      docs/generalist/screen_adaptive.py; its results:
      docs/generalist/screen_adaptive.json).
    lr_adapt_min: lower bound of the adaptive kind's per-tensor log-scale.
    lr_adapt_max: upper bound of the same.
    hypergradient_metric: the adaptive kind's cosine of g_t with the last
      step, taken on the raw gradient ('euclidean', the default, so that
      checkpoints saved before the field existed keep their behaviour) or
      on the gradient preconditioned by Adam's second moment ('adam').
    hypergradient_decay: the adaptive kind compares g_t with a trace of
      its past steps, trace <- decay * trace + step, in [0, 1); 0 (the
      default) compares it with the last step alone.
    activation_dtype: 'float32' (the default) or 'bfloat16': the dtype the
      MLP's hidden activations are stored in between layers, the largest
      traffic of an inner step (docs/performance.md); every sum is still
      accumulated in float32. Part of the architecture: a theta meta-trained
      with one is used with it.
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
  hypergradient_decay: float = 0.0
  activation_dtype: str = "float32"

  def __post_init__(self):
    if self.activation_dtype not in ACTIVATION_DTYPES:
      raise ValueError(
        "LOptConfig.activation_dtype must be one of "
        f"{list(ACTIVATION_DTYPES)}, got {self.activation_dtype!r}."
      )
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
    for name, (within, bound) in _NUMBER_BOUNDS.items():
      value = getattr(self, name)
      ok = (
        isinstance(value, (int, float, np.floating, np.integer))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and within(value)
      )
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
