"""An inner model written in Flax NNX, outside `lopt.tasks`.

A user's model is as likely to be an NNX module as a linen one. Its
parameters are the `nnx.State` of its `nnx.Param`s (`nnx.split`), and its
loss `nnx.merge`s them back into the module: the optimizers see an NNX state
pytree, not a linen params dict, so a suite with NNX tasks checks that the
exported optax transformation works on it.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from lopt.tasks import networks


class NNXMLP(nnx.Module):
  """An MLP on flattened images, as a Flax NNX module.

  Hidden layers are `nnx.Linear` (its default init: LeCun-normal kernels,
  zero biases) followed by the activation; the last layer gives the logits.
  """

  def __init__(
    self,
    in_features: int,
    hidden: tuple[int, ...],
    num_classes: int,
    activation: str,
    *,
    rngs: nnx.Rngs,
  ):
    dims = (in_features, *hidden)
    self.layers = nnx.List(
      [nnx.Linear(a, b, rngs=rngs) for a, b in zip(dims[:-1], dims[1:])]
    )
    self.head = nnx.Linear(dims[-1], num_classes, rngs=rngs)
    self.activation = activation

  def __call__(self, x: jax.Array) -> jax.Array:
    # The activation table of lopt.tasks.models, so that names mean the
    # same everywhere.
    act = networks.activation(self.activation)
    x = x.reshape((x.shape[0], -1))
    for layer in self.layers:
      x = act(layer(x))
    return self.head(x)


@dataclasses.dataclass(frozen=True)
class NNXTask:
  """An `NNXMLP` behind the `lopt.tasks.models.Task` interface.

  The parameters are an `nnx.State` of the module's `nnx.Param`s; `loss`
  rebuilds the module with `nnx.merge`, so every function is pure and runs
  under `jit`, `vmap` and `lax.scan` like a linen task's.
  """

  name: str
  input_shape: tuple[int, ...]
  hidden: tuple[int, ...]
  num_classes: int
  activation: str
  batch_size: int

  def _build(self, key: jax.Array) -> NNXMLP:
    return NNXMLP(
      math.prod(self.input_shape),
      self.hidden,
      self.num_classes,
      self.activation,
      rngs=nnx.Rngs(params=key),
    )

  @functools.cached_property
  def graphdef(self):
    """The module's structure, from an abstract instance (no computation)."""
    graphdef, _ = nnx.split(
      nnx.eval_shape(lambda: self._build(jax.random.key(0)))
    )
    return graphdef

  @property
  def num_params(self) -> int:
    """Total number of scalar parameters."""
    state = jax.eval_shape(self.init, jax.random.key(0))
    return sum(math.prod(x.shape) for x in jax.tree.leaves(state))

  def init(self, key: jax.Array) -> nnx.State:
    """Fresh parameters: the `nnx.State` of the module's Params."""
    _, params = nnx.split(self._build(key), nnx.Param)
    return params

  def apply(self, params: nnx.State, images: jax.Array) -> jax.Array:
    """The logits, shape (batch, num_classes)."""
    return nnx.merge(self.graphdef, params)(images)

  def loss(self, params, images, labels) -> jax.Array:
    """Mean softmax cross-entropy of a batch."""
    logits = self.apply(params, images)
    return optax.softmax_cross_entropy_with_integer_labels(
      logits, labels
    ).mean()

  def accuracy(self, params, images, labels) -> jax.Array:
    """Fraction of the batch classified correctly."""
    return jnp.mean(jnp.argmax(self.apply(params, images), -1) == labels)

  def sample_batch(self, key, images, labels):
    """`batch_size` rows uniformly with replacement (as `models.Task`)."""
    idx = jax.random.randint(key, (self.batch_size,), 0, images.shape[0])
    return images[idx], labels[idx]
