"""The held-out evaluation suites of `lopt.suite`: task specs and models.

A suite is a fixed, named list of small training problems that a learned
optimizer was not meta-trained on, plus the seeds every optimizer trains
them with. Each problem is a frozen `SuiteTask`; `build_task` turns it into
an object with the interface of `lopt.tasks.models.Task` (`init`, `loss`,
`accuracy`, `sample_batch`, `batch_size`), so that
`lopt.tasks.inner.train_model` trains every model the same way.

Models: the linen models of `lopt.tasks.models`, and `nnx_mlp`, an MLP
written as a Flax NNX module (`lopt.suite.nnx`). Its parameters are the `nnx.State`
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
from typing import Any

import jax
import jax.numpy as jnp

from lopt.suite.nnx import NNXTask
from lopt.tasks import models

#: Models a suite task may name.
SUITE_MODELS = (*models.MODELS, "nnx_mlp")
#: The side of digits' native images (image_size 0).
NATIVE_SIZE = 8


@dataclasses.dataclass(frozen=True)
class SuiteTask:
  """One held-out training problem.

  Attributes:
    name: unique within its suite; names the cache file and the figure panel.
    model: a name of `SUITE_MODELS`: a model of `lopt.tasks.models`, or
      'nnx_mlp' (an MLP written in Flax NNX, below).
    hidden: hidden widths (MLPs, autoencoder), conv channels (CNN, ResNet)
      or the transformer blocks' widths.
    activation: a name of `lopt.tasks.models.ACTIVATIONS`.
    dataset: an offline `lopt.tasks.data` dataset: 'digits', 'diabetes' or
      'python_stdlib'.
    image_size: 0 = native (8x8 for digits), else resized to this square.
    batch_size: training batch size.
    horizon: T, training steps per model.
    heads, seq_len: the transformer's attention heads and window.
    norm: the ResNet's normalisation layer.
    reconstruction: the autoencoder's loss.
  """

  name: str
  model: str
  hidden: tuple[int, ...]
  activation: str
  dataset: str = "digits"
  image_size: int = 0
  batch_size: int = 128
  horizon: int = 1000
  heads: int = models.MODEL_DEFAULTS["heads"]
  seq_len: int = models.MODEL_DEFAULTS["seq_len"]
  norm: str = models.MODEL_DEFAULTS["norm"]
  reconstruction: str = models.MODEL_DEFAULTS["reconstruction"]

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
    linear_ok = self.model in ("mlp", "nnx_mlp")  # no hidden: linear
    if (
      self.horizon < 10 or self.batch_size < 1 or not (self.hidden or linear_ok)
    ):
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
      self.dataset,
      *(getattr(self, f) for f in models.MODEL_DEFAULTS),
    )

  def key(self) -> dict:
    """The spec as a cache key: every field, but the model settings only
    where they differ from `models.MODEL_DEFAULTS`, so that the caches of
    suites written before those settings existed stay valid."""
    fields = dataclasses.asdict(self)
    for name, default in models.MODEL_DEFAULTS.items():
      if fields[name] == default:
        del fields[name]
    return fields


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
    learning_rates, schedules: tuned Adam's grid for this suite; None takes
      `lopt.suite.evaluation`'s default grid.
  """

  name: str
  tasks: tuple[SuiteTask, ...]
  seeds: tuple[int, ...]
  description: str = ""
  learning_rates: tuple[float, ...] | None = None
  schedules: tuple[str, ...] | None = None

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


def _lm(name, hidden, heads, seq_len, batch_size, horizon) -> SuiteTask:
  """A transformer on the standard library's bytes."""
  return _t(
    name,
    "transformer",
    hidden,
    "gelu",
    batch_size,
    dataset="python_stdlib",
    heads=heads,
    seq_len=seq_len,
    horizon=horizon,
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

#: Tuned Adam's grid on the wide suite: 7 rates, 1e-4 .. 1e-1 at 1 and 3
#: per decade, constant and cosine-decayed (its transformers would make the
#: default 10 x 3 grid most of the suite's hour).
WIDE_LEARNING_RATES = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
WIDE_SCHEDULES = ("constant", "cosine")

WIDE = Suite(
  name="wide",
  description=(
    "beyond image classifiers: transformer LMs on the standard library's "
    "bytes, autoencoders and ResNets on digits, regressors on diabetes, "
    "and classifiers outside every shipped family; all offline"
  ),
  seeds=(0, 1),
  learning_rates=WIDE_LEARNING_RATES,
  schedules=WIDE_SCHEDULES,
  tasks=(
    # Transformers: next-byte loss on held-out-file windows.
    _lm("lm_w64x2_s64", (64, 64), 4, 64, 8, 1000),
    _lm("lm_w32x2_s32", (32, 32), 4, 32, 16, 1000),
    _lm("lm_w48x3_h6_s48", (48, 48, 48), 6, 48, 8, 800),
    _lm("lm_w32x1_s128_T2000", (32,), 2, 128, 4, 2000),
    # Autoencoders on digits.
    _t("ae64x16_bern", "autoencoder", (64, 16), "gelu", 64, horizon=2000),
    _t(
      "ae128x64x16_mse",
      "autoencoder",
      (128, 64, 16),
      "relu",
      32,
      reconstruction="mse",
    ),
    _t(
      "ae32x8_mse_16px",
      "autoencoder",
      (32, 8),
      "tanh",
      64,
      image_size=16,
      horizon=3000,
      reconstruction="mse",
    ),
    _t(
      "ae256x2_bern_T5000", "autoencoder", (256, 2), "silu", 128, horizon=5000
    ),
    # Regressors on diabetes (standardised target).
    _t(
      "reg32_gelu", "mlp", (32,), "gelu", 32, dataset="diabetes", horizon=2000
    ),
    _t(
      "reg64x2_tanh_T5000",
      "mlp",
      (64, 64),
      "tanh",
      16,
      dataset="diabetes",
      horizon=5000,
    ),
    _t(
      "reg128_relu_T10000",
      "mlp",
      (128,),
      "relu",
      64,
      dataset="diabetes",
      horizon=10000,
    ),
    _t(
      "reg16x3_silu_b8",
      "mlp",
      (16, 16, 16),
      "silu",
      8,
      dataset="diabetes",
      horizon=3000,
    ),
    # Residual CNNs with a normalisation layer. XLA:CPU runs the vmapped
    # convolutions of a grid of optimizers many times slower than the
    # matmuls of an MLP of the same size, so these stay small: 8x8 or 12x12
    # inputs, a few channels, short horizons.
    _t("resnet4x8_layer_b16", "resnet", (4, 8), "relu", 16, horizon=500),
    _t(
      "resnet8_group_b32_T300",
      "resnet",
      (8,),
      "gelu",
      32,
      horizon=300,
      norm="group",
    ),
    _t(
      "resnet4x4_group_12px",
      "resnet",
      (4, 4),
      "silu",
      16,
      image_size=12,
      horizon=300,
      norm="group",
    ),
    _t("resnet6_layer_b8_T800", "resnet", (6,), "relu", 8, horizon=800),
    # Classifiers outside the digits families, two in Flax NNX.
    _t("mlp256x2_relu_T3000", "mlp", (256, 256), "relu", horizon=3000),
    _t("logreg_b32_T500", "mlp", (), "gelu", 32, horizon=500),
    _t("nnx_mlp128_tanh_T1500", "nnx_mlp", (128,), "tanh", 64, horizon=1500),
    _t(
      "nnx_mlp48x2_silu_12px",
      "nnx_mlp",
      (48, 48),
      "silu",
      32,
      image_size=12,
      horizon=2000,
    ),
  ),
)

WIDE_QUICK = Suite(
  name="wide_quick",
  description="a smoke subset of the wide suite (make demo): 3 kinds, 2 seeds",
  seeds=(0, 1),
  learning_rates=WIDE_LEARNING_RATES,
  schedules=WIDE_SCHEDULES,
  tasks=(
    _lm("lm_w32x2_s32_T300", (32, 32), 4, 32, 8, 300),
    _t("ae64x16_bern_T300", "autoencoder", (64, 16), "gelu", 64, horizon=300),
    _t(
      "reg32_gelu_T300",
      "mlp",
      (32,),
      "gelu",
      32,
      dataset="diabetes",
      horizon=300,
    ),
  ),
)

#: The suites by `--suite` name.
SUITES = {s.name: s for s in (HELDOUT, QUICK, WIDE, WIDE_QUICK)}


def build_task(
  spec: SuiteTask, image_shape, num_classes: int, data_kind: str = "images"
) -> Any:
  """The trainable task of `spec` for examples of `image_shape`.

  Returns:
    A `lopt.tasks.models.Task`, or an `NNXTask` (nnx_mlp); both work with
    `lopt.tasks.inner.train_model`.
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
    data_kind=data_kind,
    heads=spec.heads,
    seq_len=spec.seq_len,
    norm=spec.norm,
    reconstruction=spec.reconstruction,
  )
