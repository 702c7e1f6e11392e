"""Inner problems: a model, its loss and its batches, as pure functions.

A `Task` bundles a network (`lopt.tasks.networks`) with pure functions
(`init`, `loss`, `accuracy`, `sample_batch`) that the inner training loop
calls inside `jit`, `vmap` over particles and `lax.scan` over steps. One
interface serves every kind of model, so the estimators, the task families,
the suites and the checkpoints treat them alike; what differs is the
`objective`, which a task reads from its model and its dataset's kind:

| objective        | model              | dataset kind | loss                    | score (`accuracy`)   |
|------------------|--------------------|--------------|-------------------------|----------------------|
| `classification` | mlp, cnn, resnet   | images       | softmax cross-entropy   | accuracy             |
| `regression`     | mlp                | regression   | MSE (standardised y)    | R^2                  |
| `reconstruction` | autoencoder        | images       | MSE or Bernoulli        | R^2 of the pixels    |
| `language_model` | transformer        | text         | next-token cross-entropy| next-token accuracy  |

The MLP and CNN are the ones of the Noise-Reuse ES paper (Li, Harrison,
Sohl-Dickstein, Smith, Metz, NeurIPS 2023, arXiv 2304.12180): its main
learned-optimizer task is an MLP 64 -> 32 -> 32 -> 32 -> 10 (GELU) on 8x8
images, 4,522 parameters.

A language model's data is one token stream per split; `sample_batch` cuts
`batch_size` random windows of `seq_len + 1` tokens from it, and `loss` or
`accuracy` given a whole stream (a 1-D array: the held-out evaluation of
`lopt.tasks.inner.train_model`) score its first `EVAL_WINDOWS`
non-overlapping windows, a fixed sample that bounds the cost.

Example:

  task = models.make_task('mlp', hidden=(32, 32, 32), num_classes=10,
                          input_shape=(8, 8, 1))
  params = task.init(jax.random.key(0))
  x, y = task.sample_batch(key, images, labels)
  loss = task.loss(params, x, y)
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from lopt.tasks import networks

Params = Any  # A nested dict of float32 arrays.

ACTIVATIONS = tuple(networks.ACTIVATION_FNS)
NORMS = networks.NORMS
_DEFAULT_ACTIVATION = {
  "mlp": "gelu",
  "cnn": "relu",
  "resnet": "relu",
  "autoencoder": "gelu",
  "transformer": "gelu",
}
MODELS = tuple(_DEFAULT_ACTIVATION)
#: The dataset kind (`lopt.tasks.data`) each model trains on.
MODEL_DATA = {
  "mlp": ("images", "regression"),
  "cnn": ("images",),
  "resnet": ("images",),
  "autoencoder": ("images",),
  "transformer": ("text",),
}
#: An autoencoder's reconstruction loss: squared error, or the pixels as
#: Bernoulli probabilities (sigmoid cross-entropy with soft targets).
RECONSTRUCTIONS = ("mse", "bernoulli")
#: Windows of a token stream scored by a held-out evaluation.
EVAL_WINDOWS = 64
#: The settings only some models read, and their defaults: `make_task`'s,
#: a config's without them (so configs written before they existed keep
#: their meaning), and a suite task's.
MODEL_DEFAULTS = {
  "heads": 4,
  "seq_len": 64,
  "norm": "layer",
  "reconstruction": "bernoulli",
}


def objective(model: str, data_kind: str) -> str:
  """The objective (see the module docstring) of `model` on `data_kind`."""
  if model == "transformer":
    return "language_model"
  if model == "autoencoder":
    return "reconstruction"
  return "regression" if data_kind == "regression" else "classification"


@dataclasses.dataclass(frozen=True)
class Task:
  """An inner model with pure, jit/vmap-friendly training functions.

  Attributes:
    name: the model name (a key of `MODELS`).
    model: the Flax linen module.
    input_shape: shape of one input example, without the batch axis (for a
      language model: (seq_len,)).
    num_classes: classes, or the vocabulary of a language model; 0 for
      regression and reconstruction.
    batch_size: rows (or windows) drawn by `sample_batch`.
    objective: see the module docstring.
    reconstruction: an autoencoder's loss, of `RECONSTRUCTIONS`.
  """

  name: str
  model: nn.Module
  input_shape: tuple[int, ...]
  num_classes: int
  batch_size: int = 128
  objective: str = "classification"
  reconstruction: str = MODEL_DEFAULTS["reconstruction"]

  @property
  def seq_len(self) -> int:
    """A language model's sequence length (0 for other objectives)."""
    return self.input_shape[0] if self.objective == "language_model" else 0

  @functools.cached_property
  def param_shapes(self) -> Params:
    """The parameter pytree as `jax.ShapeDtypeStruct`s (no computation)."""
    dtype = jnp.int32 if self.objective == "language_model" else jnp.float32
    dummy = jax.ShapeDtypeStruct((1, *self.input_shape), dtype)
    variables = jax.eval_shape(self.model.init, jax.random.key(0), dummy)
    return variables["params"]

  @property
  def num_params(self) -> int:
    """Total number of scalar parameters."""
    return sum(math.prod(s.shape) for s in jax.tree.leaves(self.param_shapes))

  def init(self, key: jax.Array) -> Params:
    """Draws fresh parameters.

    Kernels are N(0, 1/fan_in), with fan_in the product of all but the last
    kernel axis (Flax's `lecun_normal`, untruncated); embedding tables and
    positions are N(0, 1/width); normalisation scales are 1 and every other
    vector (biases, norm offsets) is 0.

    Args:
      key: a PRNG key.

    Returns:
      A nested dict of float32 arrays with the structure of the model's
      `params` collection.
    """
    paths_shapes, treedef = jax.tree.flatten_with_path(self.param_shapes)
    names = [
      str(getattr(path[-1], "key", path[-1])) for path, _ in paths_shapes
    ]
    shapes = [s for _, s in paths_shapes]
    drawn = [len(s.shape) >= 2 for s in shapes]
    # Why one draw for all kernels, sliced afterwards: under vmap over
    # particles each separate threefry call adds seconds of XLA:CPU compile
    # time, and the inner init is re-traced inside every estimator step.
    total = sum(math.prod(s.shape) for s, d in zip(shapes, drawn) if d)
    flat = jax.random.normal(key, (total,), jnp.float32)
    leaves, offset = [], 0
    for name, s, d in zip(names, shapes, drawn):
      if not d:
        fill = 1.0 if name == "scale" else 0.0
        leaves.append(jnp.full(s.shape, fill, jnp.float32))
        continue
      size = math.prod(s.shape)
      fan_in = s.shape[-1] if name in ("embedding", "positions") else None
      fan_in = fan_in or math.prod(s.shape[:-1])
      w = flat[offset : offset + size].reshape(s.shape)
      leaves.append(w * (1.0 / math.sqrt(fan_in)))
      offset += size
    return jax.tree.unflatten(treedef, leaves)

  def apply(self, params: Params, x: jax.Array) -> jax.Array:
    """The network's outputs for a batch (logits or predictions)."""
    return self.model.apply({"params": params}, x)

  def _windows(self, x: jax.Array, y: jax.Array):
    """A held-out token stream as (inputs, next tokens) windows."""
    if self.objective != "language_model" or x.ndim != 1:
      return x, y
    length = self.seq_len + 1
    count = min(EVAL_WINDOWS, x.shape[0] // length)
    w = x[: count * length].reshape(count, length)
    return w[:, :-1], w[:, 1:]

  def _per_example(self, params: Params, x: jax.Array, y: jax.Array):
    """The loss of every example of a batch, shape (batch,)."""
    out = self.apply(params, x)
    if self.objective == "classification":
      return optax.softmax_cross_entropy_with_integer_labels(out, y)
    if self.objective == "language_model":
      losses = optax.softmax_cross_entropy_with_integer_labels(out, y)
      return losses.mean(axis=-1)
    if self.objective == "regression":
      return jnp.square(out[:, 0] - y)
    target = x.reshape(out.shape)
    if self.reconstruction == "mse":
      return jnp.square(out - target).mean(axis=-1)
    return optax.sigmoid_binary_cross_entropy(out, target).mean(axis=-1)

  def loss(
    self,
    params: Params,
    x: jax.Array,
    y: jax.Array,
    weights: jax.Array | None = None,
  ) -> jax.Array:
    """The mean loss of a batch (see the module docstring's table).

    Args:
      params: model parameters.
      x: a batch of inputs, shape (batch, *input_shape); for a language
        model also a whole token stream (held-out evaluation).
      y: its targets: integer labels, next tokens, regression targets, or
        anything (an autoencoder's target is its input).
      weights: optional non-negative example weights, shape (batch,), not
        all zero: the loss is then their weighted mean.

    Returns:
      A float32 scalar.
    """
    x, y = self._windows(x, y)
    losses = self._per_example(params, x, y)
    if weights is None:
      return losses.mean()
    return jnp.sum(weights * losses) / jnp.sum(weights)

  def accuracy(self, params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
    """The task's score of a batch, higher is better (a float32 scalar).

    Classification: the fraction classified correctly; language model: the
    fraction of next tokens predicted; regression and reconstruction: R^2,
    one minus the squared error over the targets' variance.
    """
    x, y = self._windows(x, y)
    out = self.apply(params, x)
    if self.objective in ("classification", "language_model"):
      return jnp.mean(jnp.argmax(out, axis=-1) == y)
    if self.objective == "regression":
      pred, target = out[:, 0], y
    else:
      target = x.reshape(out.shape)
      pred = jax.nn.sigmoid(out) if self.reconstruction == "bernoulli" else out
    residual = jnp.sum(jnp.square(pred - target))
    total = jnp.sum(jnp.square(target - target.mean(axis=0)))
    return 1.0 - residual / total

  def sample_batch(
    self, key: jax.Array, x: jax.Array, y: jax.Array
  ) -> tuple[jax.Array, jax.Array]:
    """Draws `batch_size` examples uniformly with replacement.

    For a language model, `batch_size` windows of `seq_len + 1` tokens at
    uniform random offsets of the stream `x` (`y` is unused): inputs and
    their next tokens. The dataset arrays are arguments rather than
    closed-over constants so that, under `jit`, they stay device buffers
    instead of being baked into the compiled program.

    Args:
      key: a PRNG key.
      x: all inputs, shape (num_examples, *input_shape); or a token stream.
      y: all targets, shape (num_examples,).

    Returns:
      `(x, y)` batches.
    """
    if self.objective == "language_model":
      length = self.seq_len + 1
      starts = jax.random.randint(
        key, (self.batch_size,), 0, x.shape[0] - length
      )
      windows = jax.vmap(lambda s: jax.lax.dynamic_slice(x, (s,), (length,)))(
        starts
      )
      return windows[:, :-1], windows[:, 1:]
    idx = jax.random.randint(key, (self.batch_size,), 0, x.shape[0])
    return x[idx], y[idx]


def make_task(
  model: str,
  *,
  hidden: Sequence[int],
  num_classes: int,
  input_shape: Sequence[int],
  activation: str | None = None,
  batch_size: int = 128,
  data_kind: str = "images",
  heads: int = MODEL_DEFAULTS["heads"],
  seq_len: int = MODEL_DEFAULTS["seq_len"],
  norm: str = MODEL_DEFAULTS["norm"],
  reconstruction: str = MODEL_DEFAULTS["reconstruction"],
) -> Task:
  """Builds a `Task`.

  Args:
    model: a key of `MODELS`.
    hidden: hidden widths (mlp, autoencoder: the last is the code), conv
      channels per block (cnn) or stage (resnet), or the width of each
      transformer block (all equal: a transformer of depth len(hidden)).
    num_classes: classes, or the vocabulary of a text dataset; 0 for a
      regression dataset.
    input_shape: one example's shape without the batch axis, e.g. (8, 8, 1);
      ignored for a transformer (its inputs are `seq_len` tokens).
    activation: a name of `ACTIVATIONS`; None picks the model's default.
    batch_size: rows (or windows) per sampled batch.
    data_kind: the dataset's kind: 'images', 'regression' or 'text'.
    heads: attention heads (transformer).
    seq_len: tokens per training window (transformer).
    norm: the resnet's normalisation, of `NORMS`.
    reconstruction: the autoencoder's loss, of `RECONSTRUCTIONS`.

  Returns:
    The task.

  Raises:
    ValueError: an unknown name, a model and dataset that do not fit, or
      impossible sizes; the message names the setting.
  """
  if model not in MODELS:
    raise ValueError(
      f"Unknown task model {model!r}; valid choices: {list(MODELS)}."
    )
  if data_kind not in MODEL_DATA[model]:
    raise ValueError(
      f"The {model} model trains on {' or '.join(MODEL_DATA[model])} data; "
      f"the dataset is {data_kind} data."
    )
  activation = activation or _DEFAULT_ACTIVATION[model]
  networks.activation(activation)  # Validates the name early.
  hidden = tuple(int(h) for h in hidden)
  if any(h <= 0 for h in hidden):
    raise ValueError(f"task.hidden must be positive widths, got {hidden}.")
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}.")
  task_objective = objective(model, data_kind)
  if task_objective in ("classification", "language_model") and num_classes < 2:
    raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
  input_shape = tuple(int(d) for d in input_shape)
  if model in ("cnn", "resnet", "autoencoder") and len(input_shape) not in (
    2,
    3,
  ):
    raise ValueError(
      f"The {model} model needs image inputs (height, width[, channels]); "
      f"got input_shape={input_shape}."
    )
  if model in ("resnet", "autoencoder", "transformer") and not hidden:
    raise ValueError(f"The {model} model needs at least one width in hidden.")
  outputs = num_classes
  if model == "mlp":
    outputs = 1 if task_objective == "regression" else num_classes
    module = networks.MLP(hidden, outputs, activation)
  elif model == "cnn":
    module = networks.CNN(hidden, num_classes, activation)
  elif model == "resnet":
    if norm not in NORMS:
      raise ValueError(f"Unknown norm {norm!r}; valid choices: {list(NORMS)}.")
    module = networks.ResNet(hidden, num_classes, norm, activation)
  elif model == "autoencoder":
    if reconstruction not in RECONSTRUCTIONS:
      raise ValueError(
        f"Unknown reconstruction {reconstruction!r}; valid choices: "
        f"{list(RECONSTRUCTIONS)}."
      )
    module = networks.autoencoder(hidden, math.prod(input_shape), activation)
  else:
    if len(set(hidden)) != 1 or hidden[0] % heads:
      raise ValueError(
        f"A transformer's blocks share one width, a multiple of heads = "
        f"{heads}; got hidden={hidden}."
      )
    if seq_len < 1:
      raise ValueError(f"seq_len must be >= 1, got {seq_len}.")
    module = networks.Transformer(
      hidden[0], len(hidden), heads, seq_len, num_classes
    )
    input_shape = (seq_len,)
  return Task(
    name=model,
    model=module,
    input_shape=input_shape,
    num_classes=num_classes if task_objective != "reconstruction" else 0,
    batch_size=batch_size,
    objective=task_objective,
    reconstruction=reconstruction,
  )
