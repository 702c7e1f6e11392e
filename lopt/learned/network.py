"""The learned optimizer's network: a per-parameter MLP (Flax linen).

Performance: this is the hot path of meta-training. The MLP runs once on
every parameter of the model, on the channel-major (features, total_params)
block that `lopt.learned.features.compute` builds. The features shared by
every parameter (the step and progress features) are not broadcast into
that block: their product with the first layer's kernel is one vector,
added to the first layer's bias. `_apply_layers` says how the layers are
arranged for speed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lopt.learned.config import LOptConfig


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
  dtype: jnp.dtype = jnp.float32,
) -> jax.Array:
  """The MLP's arithmetic: (F - S, P) and (S,) features -> (P, 2).

  Arranged for speed; a stack of `nn.Dense` on the (P, F) matrix computes
  the same function:

  * the shared features' product with the first kernel is one vector,
    folded into the first bias (for MLPLOpt 11 of 19 input columns);
  * the first layer, with its 8 (nominal kind: 10) per-parameter inputs, is
    a sum of rank-one terms on the channel-major input, which XLA fuses
    with the bias and ReLU into one elementwise loop. A matmul of inner
    dimension 8 would need the input transposed and a separate pass for
    the bias and ReLU, and so small an inner dimension keeps a matmul far
    below the machine's matmul rate.

  * with `dtype` bfloat16 each hidden activation is written to memory (and
    read back by the next layer's matmul) in half the bytes; the matmuls
    accumulate in float32 and the output is float32.

  Measurements: docs/performance.md.

  Args:
    layers: (kernel, bias) per layer, kernels (in, out).
    features: (F - S, P) per-parameter features, channel-major.
    shared: (S,) features common to every parameter.
    dtype: the dtype of the stored hidden activations.

  Returns:
    (P, 2): the direction and the log-magnitude of each parameter's step.
  """
  kernel, bias = layers[0]
  num_rows = features.shape[0]
  bias = bias + shared @ kernel[num_rows:]
  x = bias + sum(features[f][:, None] * kernel[f] for f in range(num_rows))
  for kernel, bias in layers[1:]:
    x = jax.nn.relu(x).astype(dtype)
    x = jnp.dot(x, kernel.astype(dtype), preferred_element_type=jnp.float32)
    x = x + bias
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
    activation_dtype: the stored hidden activations' dtype (`_apply_layers`).
  """

  hidden: Sequence[int] = (32, 32)
  out_init_scale: float = 0.01
  activation_dtype: str = "float32"

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
    return _apply_layers(
      layers, features, shared, jnp.dtype(self.activation_dtype)
    )


def module(cfg: LOptConfig) -> MLPLOpt:
  """The MLP of cfg (the Adam kinds start their output layer at zero)."""
  scale = cfg.out_init_scale if cfg.kind == "mlp" else 0.0
  return MLPLOpt(
    hidden=cfg.hidden,
    out_init_scale=scale,
    activation_dtype=cfg.activation_dtype,
  )


def reflection_symmetric(
  module: MLPLOpt, params: Any, features: jax.Array, shared: jax.Array
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
  ~ 0) random-walk the biases, so at long horizons the push can grow until
  the inner run diverges (what happened without it: docs/generalist.md).
  The cost is the MLP run twice (on x and -x, as one batch).
  """
  num = features.shape[1]
  both = jnp.concatenate([features, -features], axis=1)
  out = module.apply({"params": params}, both, shared)
  pos, neg = out[:num], out[num:]
  return 0.5 * (pos[:, 0] - neg[:, 0]), 0.5 * (pos[:, 1] + neg[:, 1])
