"""Inner problems: small vision models and their losses.

A `Task` bundles an inner model with pure functions (`init`, `loss`,
`accuracy`, `sample_batch`) that the inner training loop calls inside `jit`,
`vmap` over particles and `lax.scan` over steps. The two models are the ones
of the Noise-Reuse ES paper (Li, Harrison, Sohl-Dickstein, Smith, Metz,
"Noise-Reuse in Online Evolution Strategies", NeurIPS 2023, arXiv 2304.12180):

* `MLP`: flattened images -> hidden layers -> logits; the paper's main
  learned-optimizer task is 64 -> 32 -> 32 -> 32 -> 10 with GELU on 8x8
  images (4,522 parameters).
* `CNN`: blocks of [Conv 3x3 SAME, ReLU, AvgPool 2x2 stride 2], then a dense
  layer; four blocks of 32 channels on 32x32x3 CIFAR-10 images give 29,930
  parameters.

Example:

  task = tasks.make_task('mlp', hidden=(32, 32, 32), num_classes=10,
                         input_shape=(8, 8, 1))
  params = task.init(jax.random.key(0))
  x, y = task.sample_batch(key, images, labels)
  loss = task.loss(params, x, y)
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

Params = Any  # A nested dict of float32 arrays.

_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
  "gelu": functools.partial(jax.nn.gelu, approximate=True),
  "relu": jax.nn.relu,
  "tanh": jnp.tanh,
  "silu": jax.nn.silu,
  "elu": jax.nn.elu,
}
_DEFAULT_ACTIVATION = {"mlp": "gelu", "cnn": "relu"}
MODELS = tuple(_DEFAULT_ACTIVATION)
ACTIVATIONS = tuple(_ACTIVATIONS)


def _activation(name: str) -> Callable[[jax.Array], jax.Array]:
  if name not in _ACTIVATIONS:
    raise ValueError(
      f"Unknown activation {name!r}; valid choices: {sorted(_ACTIVATIONS)}."
    )
  return _ACTIVATIONS[name]


class MLP(nn.Module):
  """Multi-layer perceptron on flattened inputs.

  Attributes:
    hidden: widths of the hidden layers.
    num_classes: number of output logits.
    activation: a name of `ACTIVATIONS` ('gelu' is the tanh approximation).
  """

  hidden: Sequence[int]
  num_classes: int
  activation: str = "gelu"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    act = _activation(self.activation)
    x = x.reshape((x.shape[0], -1))
    for width in self.hidden:
      x = act(nn.Dense(width)(x))
    return nn.Dense(self.num_classes)(x)


class CNN(nn.Module):
  """Small convolutional network (the NRES paper's CIFAR-10 model).

  Each block is Conv 3x3 'SAME' -> activation -> average pool 2x2, stride 2;
  the pooled features are flattened into one dense layer.

  Attributes:
    channels: output channels of each conv block.
    num_classes: number of output logits.
    activation: a name of `ACTIVATIONS`; 'relu' is the paper's.
  """

  channels: Sequence[int]
  num_classes: int
  activation: str = "relu"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    act = _activation(self.activation)
    if x.ndim == 3:  # (batch, height, width) grayscale: add a channel axis.
      x = x[..., None]
    for width in self.channels:
      x = act(nn.Conv(width, (3, 3), padding="SAME")(x))
      x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    return nn.Dense(self.num_classes)(x)


@dataclasses.dataclass(frozen=True)
class Task:
  """An inner model with pure, jit/vmap-friendly training functions.

  Attributes:
    name: the model name ('mlp' or 'cnn').
    model: the Flax linen module.
    input_shape: shape of one input example, without the batch axis.
    num_classes: number of classes.
    batch_size: rows drawn by `sample_batch`.
  """

  name: str
  model: nn.Module
  input_shape: tuple[int, ...]
  num_classes: int
  batch_size: int = 128

  @functools.cached_property
  def param_shapes(self) -> Params:
    """The parameter pytree as `jax.ShapeDtypeStruct`s (no computation)."""
    dummy = jax.ShapeDtypeStruct((1, *self.input_shape), jnp.float32)
    variables = jax.eval_shape(self.model.init, jax.random.key(0), dummy)
    return variables["params"]

  @property
  def num_params(self) -> int:
    """Total number of scalar parameters."""
    return sum(math.prod(s.shape) for s in jax.tree.leaves(self.param_shapes))

  def init(self, key: jax.Array) -> Params:
    """Draws fresh parameters: LeCun-normal kernels, zero biases.

    Kernels are N(0, 1/fan_in) with fan_in the product of all but the last
    kernel axis (as Flax's `lecun_normal`, but untruncated).

    Args:
      key: a PRNG key.

    Returns:
      A nested dict of float32 arrays with the structure of the model's
      `params` collection.
    """
    shapes, treedef = jax.tree.flatten(self.param_shapes)
    kernels = [s for s in shapes if len(s.shape) >= 2]
    # Why one draw for all kernels, sliced afterwards: under vmap over
    # particles each separate threefry call adds seconds of XLA:CPU compile
    # time, and the inner init is re-traced inside every estimator step.
    total = sum(math.prod(s.shape) for s in kernels)
    flat = jax.random.normal(key, (total,), jnp.float32)
    leaves, offset = [], 0
    for s in shapes:
      if len(s.shape) < 2:
        leaves.append(jnp.zeros(s.shape, jnp.float32))
        continue
      size = math.prod(s.shape)
      fan_in = math.prod(s.shape[:-1])
      w = flat[offset : offset + size].reshape(s.shape)
      leaves.append(w * (1.0 / math.sqrt(fan_in)))
      offset += size
    return jax.tree.unflatten(treedef, leaves)

  def apply(self, params: Params, images: jax.Array) -> jax.Array:
    """Returns the logits, shape (batch, num_classes)."""
    return self.model.apply({"params": params}, images)

  def loss(
    self,
    params: Params,
    images: jax.Array,
    labels: jax.Array,
    weights: jax.Array | None = None,
  ) -> jax.Array:
    """Mean softmax cross-entropy of a batch.

    Args:
      params: model parameters.
      images: a batch of inputs, shape (batch, *input_shape).
      labels: integer class labels, shape (batch,).
      weights: optional non-negative example weights, shape (batch,), not
        all zero: the loss is then their weighted mean.

    Returns:
      A float32 scalar.
    """
    logits = self.apply(params, images)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    if weights is None:
      return losses.mean()
    return jnp.sum(weights * losses) / jnp.sum(weights)

  def accuracy(
    self, params: Params, images: jax.Array, labels: jax.Array
  ) -> jax.Array:
    """Fraction of the batch classified correctly (a float32 scalar)."""
    logits = self.apply(params, images)
    return jnp.mean(jnp.argmax(logits, axis=-1) == labels)

  def sample_batch(
    self, key: jax.Array, images: jax.Array, labels: jax.Array
  ) -> tuple[jax.Array, jax.Array]:
    """Draws `batch_size` rows uniformly with replacement.

    The dataset arrays are arguments rather than closed-over constants so
    that, under `jit`, they stay device buffers instead of being baked into
    the compiled program.

    Args:
      key: a PRNG key.
      images: all inputs, shape (num_examples, *input_shape).
      labels: all labels, shape (num_examples,).

    Returns:
      `(x, y)` with shapes (batch_size, *input_shape) and (batch_size,).
    """
    idx = jax.random.randint(key, (self.batch_size,), 0, images.shape[0])
    return images[idx], labels[idx]


def make_task(
  model: str,
  *,
  hidden: Sequence[int],
  num_classes: int,
  input_shape: Sequence[int],
  activation: str | None = None,
  batch_size: int = 128,
) -> Task:
  """Builds a `Task`.

  Args:
    model: 'mlp' or 'cnn'.
    hidden: hidden-layer widths (MLP) or conv-block channels (CNN).
    num_classes: number of classes.
    input_shape: shape of one example without the batch axis, e.g. (8, 8, 1).
    activation: a name of `ACTIVATIONS` ('gelu' is the tanh approximation);
      None picks the model's paper default ('gelu' for the MLP, 'relu' for
      the CNN).
    batch_size: rows per sampled batch.

  Returns:
    The task.

  Raises:
    ValueError: for an unknown model or activation name, or impossible sizes.
  """
  if model not in MODELS:
    raise ValueError(
      f"Unknown task model {model!r}; valid choices: {list(MODELS)}."
    )
  activation = activation or _DEFAULT_ACTIVATION[model]
  _activation(activation)  # Validates the name early, not at trace time.
  hidden = tuple(int(h) for h in hidden)
  if any(h <= 0 for h in hidden):
    raise ValueError(f"task.hidden must be positive widths, got {hidden}.")
  if num_classes < 2:
    raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}.")
  input_shape = tuple(int(d) for d in input_shape)
  if model == "mlp":
    module = MLP(hidden=hidden, num_classes=num_classes, activation=activation)
  else:
    if len(input_shape) not in (2, 3):
      raise ValueError(
        "The cnn model needs image inputs (height, width[, channels]); "
        f"got input_shape={input_shape}."
      )
    module = CNN(
      channels=hidden, num_classes=num_classes, activation=activation
    )
  return Task(
    name=model,
    model=module,
    input_shape=input_shape,
    num_classes=num_classes,
    batch_size=batch_size,
  )
