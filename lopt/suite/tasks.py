"""The held-out evaluation suites of `lopt.suite`: task specs and models.

A suite is a fixed, named list of small training problems that a learned
optimizer was not meta-trained on, plus the seeds every optimizer trains
them with. Each problem is a frozen `SuiteTask`; `build_task` turns it into
an object with the interface of `lopt.tasks.models.Task` (`init`, `loss`,
`accuracy`, `sample_batch`, `batch_size`), so that
`lopt.tasks.inner.train_model` trains every model the same way.

Models: the linen `mlp` and `cnn` of `lopt.tasks.models`, and `nnx_mlp`, an
MLP written here as a Flax NNX module. Its parameters are the `nnx.State`
of its `nnx.Param`s (`nnx.split`), and its loss `nnx.merge`s them back into
the module: the optimizers see an NNX state pytree, not a linen params
dict, so the suite checks that the exported optax transformation works on
it.

The `heldout` suite is disjoint from the meta-training family of
`configs/generalist.py` and from the default task (`configs/default.py`):
no task has the model, widths, activation, batch size, input resolution and
horizon of any of them (an `nnx_mlp` counts as an `mlp` here). It varies
one or two of those at a time, so a bad score points at what changed:
widths and depth, activations never meta-trained on (silu, elu), conv
channels, batch sizes 16 and 512, horizons of 2,000 to 4,000 steps (2-4x
the meta-training horizons), and inputs upscaled to 12x12 and 24x24. All
use the offline `digits` (results are "offline": one dataset).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from lopt.tasks import models

#: Models a suite task may name.
SUITE_MODELS = ("mlp", "cnn", "nnx_mlp")
#: The side of digits' native images (image_size 0).
NATIVE_SIZE = 8


@dataclasses.dataclass(frozen=True)
class SuiteTask:
  """One held-out training problem.

  Attributes:
    name: unique within its suite; names the cache file and the figure panel.
    model: 'mlp', 'cnn' or 'nnx_mlp'.
    hidden: hidden widths (MLPs) or conv-block channels (CNN).
    activation: a name of `lopt.tasks.models.ACTIVATIONS`.
    dataset: a `lopt.tasks.data` dataset name; the suites use 'digits' (offline).
    image_size: 0 = native (8x8 for digits), else resized to this square.
    batch_size: training batch size.
    horizon: T, training steps per model.
  """

  name: str
  model: str
  hidden: tuple[int, ...]
  activation: str
  dataset: str = "digits"
  image_size: int = 0
  batch_size: int = 128
  horizon: int = 1000

  def __post_init__(self):
    if self.model not in SUITE_MODELS:
      raise ValueError(
        f"Suite task {self.name!r}: model must be one of "
        f"{list(SUITE_MODELS)}, got {self.model!r}."
      )
    if self.activation not in models.ACTIVATIONS:
      raise ValueError(
        f"Suite task {self.name!r}: activation must be one of "
        f"{sorted(models.ACTIVATIONS)}, got {self.activation!r}."
      )
    if self.horizon < 10 or self.batch_size < 1 or not self.hidden:
      raise ValueError(
        f"Suite task {self.name!r}: needs horizon >= 10 (the final loss "
        "is a 10-step mean), batch_size >= 1 and hidden widths."
      )

  def signature(self) -> tuple:
    """What makes two problems the same for disjointness checks.

    The model family (an NNX MLP is an MLP), widths, activation, batch size,
    input side in pixels (0 = the native 8) and horizon.
    """
    family = "mlp" if self.model == "nnx_mlp" else self.model
    side = self.image_size or NATIVE_SIZE
    return (
      family,
      tuple(self.hidden),
      self.activation,
      self.batch_size,
      side,
      self.horizon,
    )


@dataclasses.dataclass(frozen=True)
class Suite:
  """A named list of tasks and the seeds each optimizer trains them with.

  Attributes:
    name: the `--suite` name; outputs are `suite_<name>.{json,md,png}`.
    tasks: the problems, names unique.
    seeds: integers; seed s trains one model of every task (its init and its
      batches) from `jax.random.fold_in(jax.random.key(SEED_BASE), s)`, the
      same for every optimizer.
    description: one line for the reports.
  """

  name: str
  tasks: tuple[SuiteTask, ...]
  seeds: tuple[int, ...]
  description: str = ""

  def __post_init__(self):
    names = [t.name for t in self.tasks]
    if len(set(names)) != len(names) or not names:
      raise ValueError(f"Suite {self.name!r}: task names must be unique.")
    if len(self.seeds) < 2:
      raise ValueError(f"Suite {self.name!r}: needs at least 2 seeds.")


#: Base of the suites' seeds. Meta-training and `lopt.evaluate` draw from
#: `jax.random.key(config.seed)`, so these streams are new to any optimizer.
SEED_BASE = 7_654_321


def task_keys(seeds) -> jax.Array:
  """One PRNG key per seed, as `Suite.seeds` describes."""
  base = jax.random.key(SEED_BASE)
  return jnp.stack([jax.random.fold_in(base, s) for s in seeds])


def _t(name, model, hidden, activation, batch_size=128, **kw) -> SuiteTask:
  return SuiteTask(
    name, model, tuple(hidden), activation, batch_size=batch_size, **kw
  )


HELDOUT = Suite(
  name="heldout",
  description=(
    "digits (offline); widths, depth, activations, CNN channels, batch "
    "sizes, horizons and resolutions outside meta-training"
  ),
  seeds=(0, 1, 2),
  tasks=(
    _t("mlp96x2_relu", "mlp", (96, 96), "relu"),
    _t("mlp256_gelu_12px", "mlp", (256,), "gelu", image_size=12),
    _t("mlp24x6_silu", "mlp", (24,) * 6, "silu"),
    _t("mlp64x3_elu", "mlp", (64, 64, 64), "elu"),
    _t("mlp32x3_gelu_b16", "mlp", (32, 32, 32), "gelu", batch_size=16),
    _t("mlp32x2_tanh_b512", "mlp", (32, 32), "tanh", batch_size=512),
    _t("mlp32x3_gelu_T3000", "mlp", (32, 32, 32), "gelu", horizon=3000),
    _t("mlp64_relu_T4000", "mlp", (64,), "relu", batch_size=64, horizon=4000),
    _t("mlp32x2_relu_24px", "mlp", (32, 32), "relu", image_size=24),
    # XLA's CPU convolutions cost many times what an MLP of the same size
    # does per step, so the CNNs get small batches or short horizons, to
    # keep each task with its Adam grid near a minute on a CPU (timings:
    # docs/performance.md).
    _t("cnn16x32_relu_b16", "cnn", (16, 32), "relu", 16, horizon=300),
    _t("cnn4x8x8_relu", "cnn", (4, 8, 8), "relu", batch_size=32),
    _t("cnn4x8_elu", "cnn", (4, 8), "elu", batch_size=64, horizon=500),
    _t("nnx_mlp48x3_silu", "nnx_mlp", (48, 48, 48), "silu"),
    _t(
      "nnx_mlp64x2_elu_T2000",
      "nnx_mlp",
      (64, 64),
      "elu",
      batch_size=64,
      horizon=2000,
    ),
  ),
)

QUICK = Suite(
  name="quick",
  description="a one-minute smoke suite (make demo): 3 short tasks, 2 seeds",
  seeds=(0, 1),
  tasks=(
    _t("mlp96x2_relu_T300", "mlp", (96, 96), "relu", horizon=300),
    _t("cnn4x8_relu_T200", "cnn", (4, 8), "relu", batch_size=64, horizon=200),
    _t("nnx_mlp48x3_silu_T300", "nnx_mlp", (48, 48, 48), "silu", horizon=300),
  ),
)

#: The suites by `--suite` name.
SUITES = {s.name: s for s in (HELDOUT, QUICK)}

# -- models -------------------------------------------------------------------


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
    act = models._activation(self.activation)  # noqa: SLF001
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


def build_task(spec: SuiteTask, image_shape, num_classes: int) -> Any:
  """The trainable task of `spec` for images of `image_shape`.

  Returns:
    A `lopt.tasks.models.Task` (mlp, cnn) or an `NNXTask` (nnx_mlp); both
    work with `lopt.tasks.inner.train_model`.
  """
  if spec.model == "nnx_mlp":
    return NNXTask(
      spec.name,
      tuple(image_shape),
      tuple(spec.hidden),
      num_classes,
      spec.activation,
      spec.batch_size,
    )
  return models.make_task(
    spec.model,
    hidden=spec.hidden,
    num_classes=num_classes,
    input_shape=image_shape,
    activation=spec.activation,
    batch_size=spec.batch_size,
  )
