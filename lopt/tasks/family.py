"""Task families: one theta meta-trained over several inner tasks at once.

A family is a list of inner tasks, each a *group* of particles with its own
model, batch size, horizon T, dataset and particle count. A config declares
one under `family.tasks.<name>`; each entry overrides the base task's fields
(`task.*`, `inner.horizon`, `estimator.num_particles`) and adds a `weight`:

    config.family.tasks.wide = ml_collections.ConfigDict(
        dict(hidden=(128,), activation="relu", horizon=500, weight=1.0))

Every group is one estimator (one vmap of its particles, sharded on the
`particles` mesh axis) with its own step-unlocked counters and state; the
run state's `estimator_state` holds one entry per group, keyed by the task's
name. `FamilyEstimator.estimate` runs every group's window inside the same
jitted call and combines their gradient estimates into one (a weighted
mean, see `family.combine` below), so one outer step is still one dispatch.
`resolve` reads a config's tasks once: a config without `family.tasks` is a
family of one, whose estimator state keeps the flat single-task layout.

Losses are made comparable across groups by `family.normalizer`
(`NORMALIZERS`), applied to every per-step loss L_t before an estimator
sees it:

* `adam` (the default): L_t / L_ref, with L_ref the group's mean training
  loss over its horizon under Adam at the best of `REFERENCE_RATES` (a few
  seeds, measured once at start-up). Each group's meta-objective is then
  its ratio to a tuned Adam, which is what `lopt.evaluate --suite` scores:
  the objective is the one the optimizer is judged by. (It does not by
  itself balance the groups' estimates: see `family.combine` below.)
* `lo`: learned_optimization's classification normaliser,
  10 (clip(L, 0, ln 2C) - ln(C/5)) / ln C for C classes. It puts chance
  level near 7 for every class count, but for tasks of equal C it is one
  affine map for all, so it does not rebalance them.
* `none`: L_t as it is (capped at 1.5 ln C with `task.clip_meta_loss`).

How the groups' estimates combine is `family.combine` (`COMBINES`). The
estimates are mostly noise (a `grad_snr` near 0 per outer step; the signal
accumulates over many steps in the outer Adam), so under `mean` the group
with the largest noise sets the update, whatever the normaliser (measured
in docs/family/balance.json, by docs/family/balance.py; docs/generalist.md
discusses it). `unit` (the default) divides each group's
estimate by its norm before the weighted mean, so every group carries its
weight's share whatever its loss scale or horizon; this sits between the
equal weighting of `mean` and inverse-variance weighting (1/norm^2), and
its slight bias (the norm is measured on the same estimate) is the price.

`family.batch_fractions` (`batch_fractions`) is the one task augmentation:
each episode trains on a drawn share of every batch, widening the gradient
noise the optimizer meets, so that it is not tuned to the family's few
batch sizes alone (its effect on the held-out suite: docs/generalist.md).

Each group's randomness comes from the step key folded with a hash of its
name, so adding or removing a group does not change the draws of the
others.
"""

from __future__ import annotations

import dataclasses
import math
import re
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from lopt.estimators import Estimator
from lopt.estimators.base import snr
from lopt.tasks import models

PyTree = Any

#: `family.normalizer` choices (see the module docstring).
NORMALIZERS = ("adam", "lo", "none")
#: `family.combine` choices: how the groups' estimates become one gradient.
COMBINES = ("unit", "mean")
#: Fields a family task may set; every one but `weight` defaults to the
#: base config's value (`task.<field>`, `inner.horizon`,
#: `estimator.num_particles`).
TASK_FIELDS = (
  "model",
  "hidden",
  "activation",
  "batch_size",
  "dataset",
  "image_size",
  "heads",
  "seq_len",
  "norm",
  "reconstruction",
  "horizon",
  "num_particles",
  "weight",
)
#: Adam learning rates tried for the `adam` normaliser's reference loss.
REFERENCE_RATES = (1e-3, 3e-3, 1e-2, 3e-2)
#: Seeds of the reference loss (held out: `reference_keys`).
REFERENCE_SEEDS = 2
#: The name of the single task of a config without a family.
SINGLE = "task"
_NAME = re.compile(r"[a-z][a-z0-9_]*")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """One inner task of a run, with every field resolved."""

  name: str
  model: str
  hidden: tuple[int, ...]
  activation: str
  batch_size: int
  dataset: str
  image_size: int
  horizon: int
  num_particles: int
  weight: float = 1.0
  heads: int = models.MODEL_DEFAULTS["heads"]
  seq_len: int = models.MODEL_DEFAULTS["seq_len"]
  norm: str = models.MODEL_DEFAULTS["norm"]
  reconstruction: str = models.MODEL_DEFAULTS["reconstruction"]

  @property
  def data_key(self) -> tuple[str, int]:
    """Groups with the same key share one loaded dataset."""
    return (self.dataset, self.image_size)

  def describe(self) -> str:
    size = f"{self.image_size}px" if self.image_size else "native size"
    return (
      f"{self.name}: {self.model} {list(self.hidden)} ({self.activation}) on "
      f"{self.dataset} {size}, batch {self.batch_size}, T = {self.horizon}, "
      f"{self.num_particles} particles, weight {self.weight:g}"
    )


@dataclasses.dataclass(frozen=True)
class Family:
  """A config's inner tasks, resolved once; everything after sees groups.

  A single-task config is a family of one (its task named `SINGLE`), so the
  builders, the estimator, evaluation and the console treat both alike.
  `keyed` is the one difference they keep: a declared family keys its data
  arrays, estimator state and metrics by task name, while a family of one
  keeps the flat layout of single-task checkpoints.

  Attributes:
    specs: the tasks, sorted by name.
    keyed: whether the config declares `family.tasks`.
    normalizer: the per-task loss normaliser (`none` for a single task).
    combine: how the groups' estimates are combined (`unit` or `mean`).
    batch_fractions: the per-episode effective batch fractions ((1.0,):
      none). A task augmentation: every episode of every group draws one
      fraction f and trains on the first round(f B) examples of each batch
      of B (`lopt.tasks.inner.InnerTraining`); it keeps every shape, so it
      costs nothing, and widens the gradient noise the learned optimizer
      meets beyond that of the family's batch sizes.
  """

  specs: tuple[TaskSpec, ...]
  keyed: bool = False
  normalizer: str = "none"
  combine: str = "unit"
  batch_fractions: tuple[float, ...] = (1.0,)

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(spec.name for spec in self.specs)


def declared(config) -> bool:
  """Whether `config` declares a task family (`family.tasks` non-empty)."""
  family = config.get("family")
  return bool(family and family.get("tasks"))


def resolve(config) -> Family:
  """The run's tasks: the family's, or the single task as a family of one.

  Reads `task.*`, `inner.horizon`, `estimator.num_particles` and `family.*`;
  a family task's own fields override the base ones. Values are checked by
  `lopt.validation`, names by `check_names`.
  """
  base_fields = {
    "model": config.task.model,
    "hidden": tuple(config.task.hidden),
    "activation": config.task.activation,
    "batch_size": config.task.batch_size,
    "dataset": config.task.dataset,
    "image_size": config.task.image_size,
    "horizon": config.inner.horizon,
    "num_particles": config.estimator.num_particles,
    **{f: config.task.get(f, d) for f, d in models.MODEL_DEFAULTS.items()},
  }
  if not declared(config):
    return Family((TaskSpec(SINGLE, **base_fields),))
  specs = []
  for name, entry in sorted(config.family.tasks.items()):
    fields = dict(base_fields, **dict(entry))
    fields["hidden"] = tuple(fields["hidden"])
    specs.append(TaskSpec(name, **fields))
  settings = config.family
  return Family(
    tuple(specs),
    keyed=True,
    normalizer=settings.get("normalizer", "adam"),
    combine=settings.get("combine", "unit"),
    batch_fractions=tuple(
      float(f) for f in settings.get("batch_fractions", (1.0,))
    ),
  )


def check_names(config) -> None:
  """The structural checks of a family; values are checked by validation.

  Raises:
    ValueError: naming the field: a task name that is not a lower-case
      identifier, an entry that is not a mapping, or a field a family task
      cannot set.
  """
  family = config.get("family")
  if family is None:
    return
  allowed = ("tasks", "normalizer", "combine", "batch_fractions")
  for key in family.keys():
    if key not in allowed:
      raise ValueError(
        f"family.{key} is not a family setting; valid settings: {list(allowed)}"
      )
  for name, entry in (family.get("tasks") or {}).items():
    if not _NAME.fullmatch(name) or name == SINGLE:
      raise ValueError(
        f"family.tasks.{name}: a task name must be a lower-case identifier "
        f"(letters, digits, _) other than {SINGLE!r}"
      )
    if not isinstance(entry, (Mapping, ml_collections.ConfigDict)):
      raise ValueError(
        f"family.tasks.{name} = {entry!r} is invalid: it must be a "
        f"ConfigDict of task fields ({', '.join(TASK_FIELDS)})"
      )
    for field in entry.keys():
      if field not in TASK_FIELDS:
        raise ValueError(
          f"family.tasks.{name}.{field} is not a task field; valid fields: "
          f"{list(TASK_FIELDS)}"
        )


def lo_normalizer(num_classes: int) -> tuple[float, float, float]:
  """learned_optimization's normaliser as `(cap, shift, scale)`.

  N(L) = (min(L, cap) - shift) / scale = 10 (clip(L, 0, ln 2C) - ln(C/5))
  / ln C (cross-entropies are never negative, so only the cap clips).
  """
  c = num_classes
  return math.log(2 * c), math.log(c / 5), math.log(c) / 10


def reference_keys(seed: int) -> jax.Array:
  """Seeds of the Adam reference loss: a stream training never draws from."""
  key = jax.random.fold_in(jax.random.key(seed), 2)
  return jax.random.split(key, REFERENCE_SEEDS)


def group_key(key: jax.Array, name: str) -> jax.Array:
  """The key of group `name`: independent of the family's other groups."""
  return jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)


class FamilyEstimator:
  """Several estimators of one theta, one per task group, combined.

  It has the `Estimator` interface that `lopt.train.outer` and `lopt.train` use
  (`init`, `estimate`, `num_particles`, `steps_per_estimate`,
  `burn_in_steps`); its state is `{name: that group's estimator state}`.

  Args:
    groups: `(name, estimator, weight)` for every group; the weights need
      not sum to 1.
    combine: `mean`, the weighted mean of the groups' estimates; or `unit`,
      the weighted mean of each estimate divided by its norm (see the
      module docstring).
  """

  name = "family"

  def __init__(
    self,
    groups: Sequence[tuple[str, Estimator, float]],
    combine: str = "unit",
  ):
    if not groups:
      raise ValueError("a family needs at least one group")
    if combine not in COMBINES:
      raise ValueError(f"family.combine must be one of {COMBINES}: {combine!r}")
    self.combine = combine
    self.groups = tuple(groups)
    self.weights = {name: float(w) for name, _, w in groups}
    self.unroll_length = max(est.unroll_length for _, est, _ in groups)

  def __repr__(self) -> str:
    inner = ", ".join(f"{n}={e!r}" for n, e, _ in self.groups)
    return f"FamilyEstimator({inner})"

  @property
  def num_particles(self) -> int:
    return sum(est.num_particles for _, est, _ in self.groups)

  @property
  def steps_per_estimate(self) -> int:
    return sum(est.steps_per_estimate for _, est, _ in self.groups)

  @property
  def burn_in_steps(self) -> int:
    return sum(est.burn_in_steps for _, est, _ in self.groups)

  def init(self, theta: PyTree, key: jax.Array) -> dict[str, PyTree]:
    """Every group's particles, burnt in under theta."""
    return {
      name: est.init(theta, group_key(key, name))
      for name, est, _ in self.groups
    }

  def estimate(self, theta: PyTree, state: Mapping[str, PyTree], key):
    """Returns `(grad, state, info)` over every group in one call.

    grad is sum_g w_g u_g / sum_g w_g over the groups with a non-zero
    estimate, with u_g the group's estimate (`mean`) or the estimate over
    its norm (`unit`); a group whose every step was masked for a
    non-finite loss, or whose estimate is exactly zero (no pair of members
    differed: every loss exactly 0, or at its cap), adds nothing, and its
    weight drops out. info holds the family's `loss` (the weighted mean of
    the normalised losses of the groups that had a finite step), `steps`
    and `nonfinite` (sums), `grad_var` and `grad_snr` (of the combined
    estimate, the groups being independent), and per group `<name>/loss`,
    `<name>/grad_norm`, `<name>/grad_snr`, `<name>/nonfinite`.
    """
    grads, new_state, infos, loss_weights, grad_weights = [], {}, {}, [], []
    for name, est, weight in self.groups:
      grad, new_state[name], info = est.estimate(
        theta, state[name], group_key(key, name)
      )
      entries = est.num_particles * est.unroll_length
      norm = _norm(grad)
      # A group's loss counts if it had a finite step; its estimate counts
      # if it is not exactly zero. A zero one (every step masked, or no pair
      # of members differed: the generalist's T = 2000 MLP fits its batches
      # to a loss of exactly 0 late in its episodes, for all 8 particles at
      # once at times) carries no direction and would dilute the others'.
      informative = norm > 0
      info = dict(info, grad_norm=norm)
      if self.combine == "unit":
        safe = jnp.where(informative, norm, 1.0)
        grad = jax.tree.map(lambda g, n=safe: g / n, grad)
        info["grad_var"] = info["grad_var"] / safe**2
      grads.append(grad)
      loss_weights.append(jnp.where(info["nonfinite"] < entries, weight, 0.0))
      grad_weights.append(jnp.where(informative, weight, 0.0))
      infos[name] = info
    shares = _shares(grad_weights)
    grad = jax.tree.map(
      lambda *gs: sum(s * g for s, g in zip(shares, gs, strict=True)), *grads
    )
    # where(): a dropped group's diagnostics (NaN with a single particle)
    # stay out of the family's.
    variance = sum(
      jnp.where(s > 0, s**2 * info["grad_var"], 0.0)
      for s, info in zip(shares, infos.values(), strict=True)
    )
    info = {
      "loss": sum(
        s * info["loss"]
        for s, info in zip(_shares(loss_weights), infos.values(), strict=True)
      ),
      "steps": sum(info["steps"] for info in infos.values()),
      "nonfinite": sum(info["nonfinite"] for info in infos.values()),
      "grad_var": variance,
      "grad_snr": snr(_norm(grad) ** 2, variance),
    }
    for name, group_info in infos.items():
      for field in ("loss", "grad_norm", "grad_snr", "nonfinite"):
        info[f"{name}/{field}"] = group_info[field]
    return grad, new_state, info


def _shares(weights: Sequence[jax.Array]) -> list[jax.Array]:
  total = jnp.maximum(sum(weights), 1e-30)
  return [w / total for w in weights]


def _norm(tree: PyTree) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(tree)))


def check_some_weight(specs: Sequence[TaskSpec]) -> None:
  """Raises ValueError unless some task has a weight > 0.

  Each weight being a finite number >= 0 is `lopt.validation`'s check.
  """
  if not any(spec.weight > 0 for spec in specs):
    raise ValueError("family.tasks: at least one task needs a weight > 0")
