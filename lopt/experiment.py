"""Config -> run: every builder of a learned-optimizer run, in one place.

Every entry point turns an `ml_collections` config into the same parts here
(`lopt.train` for `lopt.main`, `lopt.evaluate`, `lopt.compare`, `lopt.bench`
and the notebooks), so a setting means the same thing wherever it is read:

    config = experiment.load_config("configs/default.py")
    validation.check_config(config)          # ConfigError names the field
    data, dataset = experiment.load_data(config)
    exp = experiment.build(config, dataset)  # tasks, learned optimizer, outer
    est = exp.estimator(data)                # sharded over exp.mesh

The config's tasks are resolved once (`lopt.tasks.family.resolve`; a single
task is a family of one) and the `Experiment` carries them, so nothing after
`build` reads `config.family` again. Validation is `lopt.validation`; what a
resumed run may change, `lopt.checkpoint.resume_policy`.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
import optax

from lopt import estimators, sharding, systems, validation
from lopt.learned.config import LOptConfig
from lopt.tasks import data as data_lib
from lopt.tasks import family as family_lib
from lopt.tasks import inner, models

#: Version of the checkpoint's JSON item; bump when its layout changes.
FORMAT_VERSION = 1
#: Toy systems a config may name in `system.name` (`lopt.compare`).
SYSTEMS = {
  "lorenz": systems.Lorenz,
  "influence_balancing": systems.InfluenceBalancing,
  "linear_quadratic": systems.LinearQuadratic,
  "toy_regression": systems.ToyRegression,
}

# -- loading ---------------------------------------------------------------


def load_config(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """Loads a config file by path, as `config_flags.DEFINE_config_file` does.

  Args:
    path: a `.py` file with `get_config(arg=None)`; `file.py:arg` passes
      `arg` (e.g. `configs/lorenz.py:paper`).
    arg: the argument, if not given in `path`.

  Returns:
    The config. Nothing is imported by package name, so this works wherever
    lopt is installed.
  """
  if arg is None and ":" in os.path.basename(path):
    path, arg = path.rsplit(":", 1)
  name = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(f"lopt_config_{name}", path)
  if spec is None or not os.path.isfile(path):
    raise FileNotFoundError(f"No config file at {path!r}")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


# -- builders -----------------------------------------------------------------


def make_estimator(
  settings: Mapping[str, Any], system, **kwargs
) -> estimators.Estimator:
  """The estimator of `settings` (`config.estimator`) over `system`.

  Args:
    settings: a mapping with `ESTIMATOR_FIELDS`; `noise_period` 0 is unset.
    system: the unrolled system.
    **kwargs: passed on to `estimators.make` (e.g. `particle_map`).
  """
  return estimators.make(
    settings["name"],
    system,
    num_particles=settings["num_particles"],
    unroll_length=settings["unroll_length"],
    sigma=settings.get("sigma"),
    noise_period=settings.get("noise_period") or None,
    step_unlocked=settings.get("step_unlocked", True),
    **kwargs,
  )


def make_outer_optimizer(
  settings: Mapping[str, Any],
) -> optax.GradientTransformation:
  """The outer optimizer of `settings` (`config.outer`).

  `optimizer` at `learning_rate`, multiplied by `decay_factor` every
  `decay_steps` steps when that is set, or piecewise constant when
  `boundaries` is set: `learning_rate * scales[i]` from outer step
  `boundaries[i]` on (each scale relative to `learning_rate`, not to the
  previous piece); after clipping the gradient to a global norm of `clip`
  when that is set (0 = off).
  """
  validation.check_outer(settings)
  rate = settings["learning_rate"]
  if settings.get("boundaries", ()):
    starts = np.asarray(settings["boundaries"], np.int32)
    pieces = rate * np.asarray((1.0, *settings["scales"]), np.float32)

    def piecewise(step):
      return jax.numpy.asarray(pieces)[
        jax.numpy.searchsorted(starts, step, side="right")
      ]

    rate = piecewise
  elif settings.get("decay_steps", 0):
    rate = optax.exponential_decay(
      rate,
      transition_steps=settings["decay_steps"],
      decay_rate=settings.get("decay_factor", 1.0),
      staircase=True,
    )
  tx = validation.OUTER_OPTIMIZERS[settings["optimizer"]](rate)
  if settings.get("clip", 0.0):
    tx = optax.chain(optax.clip_by_global_norm(settings["clip"]), tx)
  return tx


def make_system(config: ml_collections.ConfigDict, **changes):
  """The toy system of `config.system`, with `changes` applied."""
  fields = dict(config.system)
  name = fields.pop("name")
  validation.check_choice("system.name", name, SYSTEMS)
  fields.update(changes)
  fields = {
    k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()
  }
  return SYSTEMS[name](**fields)


@dataclasses.dataclass(frozen=True)
class Group:
  """One inner task of a run and how its per-step losses are normalised.

  `inner.InnerTraining` sees `(min(L_t, max_loss) - loss_shift) /
  loss_scale` (see `lopt.tasks.family` for the normalisers).
  """

  spec: family_lib.TaskSpec
  task: models.Task
  max_loss: float | None = None
  loss_shift: float = 0.0
  loss_scale: float = 1.0

  @property
  def name(self) -> str:
    return self.spec.name

  @property
  def horizon(self) -> int:
    return self.spec.horizon


@dataclasses.dataclass(frozen=True)
class Experiment:
  """Everything static about a learned-optimizer run, built from the config.

  The config's tasks are resolved once (`family`, a `lopt.tasks.family.
  Family`): a single task is a family of one, and `groups` has one entry
  per task either way. The one difference kept is the layout: a declared
  family keys its data arrays by task name and its `estimator` is a
  `family.FamilyEstimator`; a family of one keeps flat arrays and the plain
  estimator, so single-task checkpoints keep their layout.
  """

  config: ml_collections.ConfigDict
  task: models.Task  # the first group's task
  lopt: LOptConfig
  outer_tx: optax.GradientTransformation
  #: The particle mesh (`lopt.sharding.make_mesh`); None runs the particles
  #: with a plain vmap, on whatever devices the inputs are on.
  mesh: jax.sharding.Mesh | None = None
  groups: tuple[Group, ...] = ()
  family: family_lib.Family = family_lib.Family(())

  @property
  def is_family(self) -> bool:
    """Whether the run declares a family (keyed layout), not one task."""
    return self.family.keyed

  def group(self, name: str | None = None) -> Group:
    """The group `name` (the first by default)."""
    if name is None:
      return self.groups[0]
    return next(g for g in self.groups if g.name == name)

  def group_data(self, data, name: str):
    """The arrays of group `name` from the run's `data`."""
    return data[name] if self.is_family else data

  def system(self, data, name: str | None = None) -> inner.InnerTraining:
    """Inner training of a group's task by the learned optimizer.

    Args:
      data: that group's arrays (`group_data`).
      name: the group; the first (the single task) by default.
    """
    group = self.group(name)
    return inner.InnerTraining(
      task=group.task,
      lopt=self.lopt,
      horizon=group.horizon,
      data=data,
      meta_loss=self.config.task.meta_loss,
      max_loss=group.max_loss,
      loss_shift=group.loss_shift,
      loss_scale=group.loss_scale,
      batch_fractions=self.family.batch_fractions,
    )

  def estimator(self, data):
    """The estimator over the run's `data`, its particles sharded on `mesh`.

    A plain estimator for a single task; for a family a
    `family.FamilyEstimator` with one estimator per group.
    """

    def group_estimator(group: Group):
      settings = dict(self.config.estimator)
      settings["num_particles"] = group.spec.num_particles

      def build_estimator(data):
        return make_estimator(settings, self.system(data, group.name))

      group_data = self.group_data(data, group.name)
      if self.mesh is None:
        return build_estimator(group_data)
      return sharding.shard_particles(build_estimator, group_data, self.mesh)

    if not self.is_family:
      return group_estimator(self.groups[0])
    return family_lib.FamilyEstimator(
      [(g.name, group_estimator(g), g.spec.weight) for g in self.groups],
      combine=self.family.combine,
    )

  def saved_config(self) -> dict[str, Any]:
    """The JSON stored with every checkpoint; `load_optimizer` reads it."""
    saved = {
      "format_version": FORMAT_VERSION,
      "config": json.loads(self.config.to_json()),
      "lopt": self.lopt.to_dict(),
      "horizon": self.config.inner.horizon,
    }
    if self.is_family:
      saved["loss_normalization"] = {
        g.name: {"shift": g.loss_shift, "scale": g.loss_scale}
        for g in self.groups
      }
    return saved


def load_data(config, mesh: jax.sharding.Mesh | None = None):
  """The dataset, whole, replicated on every device of `mesh`.

  Args:
    config: the experiment config.
    mesh: the particle mesh; by default one over all devices.

  Returns:
    `(arrays, dataset)`: the device arrays by name (`train_x`, ...) and the
    host-side `Dataset`. For a family, both are dicts keyed by task name
    (tasks of the same dataset and image size share the same arrays).
  """
  mesh = sharding.make_mesh() if mesh is None else mesh
  tasks = family_lib.resolve(config)
  if not tasks.keyed:
    return _load_one(config, config.task.dataset, config.task.image_size, mesh)
  loaded, arrays, datasets = {}, {}, {}
  for spec in tasks.specs:
    if spec.data_key not in loaded:
      loaded[spec.data_key] = _load_one(config, *spec.data_key, mesh)
    arrays[spec.name], datasets[spec.name] = loaded[spec.data_key]
  return arrays, datasets


def _load_one(config, name: str, image_size: int, mesh):
  dataset = data_lib.load_dataset(
    name, data_dir=config.task.data_dir or None, image_size=image_size
  )
  arrays = {
    "train_x": dataset.train.images,
    "train_y": dataset.train.labels,
    "valid_x": dataset.validation.images,
    "valid_y": dataset.validation.labels,
    "test_x": dataset.test.images,
    "test_y": dataset.test.labels,
  }
  # From numpy, every process its own copy: the multi-process-safe way to
  # build a replicated global array (style.md B.5).
  return sharding.put_replicated(arrays, mesh), dataset


def build(config, dataset, mesh: jax.sharding.Mesh | None = None) -> Experiment:
  """The static parts of a run.

  Args:
    config: the experiment config.
    dataset: the loaded dataset (its shapes and class count size the task);
      for a family, `load_data`'s dict of them by task name.
    mesh: the particle mesh; by default one over all devices. The number of
      particles must be divisible by its size once particles are run
      (`Experiment.estimator`); evaluation alone works on any mesh.

  Returns:
    The `Experiment`. With the `adam` normaliser this measures each task's
    reference loss (`family.REFERENCE_RATES`), a few seconds per task.
  """
  lopt_cfg = validation.lopt_config(config)
  tasks = family_lib.resolve(config)
  normalizer = tasks.normalizer
  groups = []
  for spec in tasks.specs:
    ds = dataset[spec.name] if tasks.keyed else dataset
    task = make_task(spec, ds)
    # A cross-entropy is capped at 1.5 ln C (learned_optimization's cap);
    # squared errors have no such scale and stay uncapped.
    capped = config.task.clip_meta_loss and task.num_classes >= 2
    cap = 1.5 * math.log(task.num_classes) if capped else None
    group = Group(spec, task, max_loss=cap)
    if normalizer == "lo":
      cap, shift, scale = family_lib.lo_normalizer(task.num_classes)
      group = Group(spec, task, cap, shift, scale)
    elif normalizer == "adam":
      scale = reference_loss(task, ds, spec.horizon, config.seed)
      group = dataclasses.replace(group, loss_scale=scale)
    groups.append(group)
  mesh = sharding.make_mesh() if mesh is None else mesh
  return Experiment(
    config,
    groups[0].task,
    lopt_cfg,
    make_outer_optimizer(config.outer),
    mesh,
    tuple(groups),
    tasks,
  )


def make_task(
  spec: family_lib.TaskSpec, dataset: data_lib.Dataset
) -> models.Task:
  """The inner model of `spec` on `dataset` (its shapes and class count)."""
  return models.make_task(
    spec.model,
    hidden=spec.hidden,
    num_classes=dataset.num_classes,
    input_shape=dataset.train.images.shape[1:],
    activation=spec.activation,
    batch_size=spec.batch_size,
    data_kind=dataset.kind,
    heads=spec.heads,
    seq_len=spec.seq_len,
    norm=spec.norm,
    reconstruction=spec.reconstruction,
  )


def reference_loss(
  task: models.Task, dataset: data_lib.Dataset, horizon: int, seed: int
) -> float:
  """The `adam` normaliser's L_ref: tuned Adam's mean training loss over T.

  Adam at each of `family.REFERENCE_RATES` trains `family.REFERENCE_SEEDS`
  fresh models for `horizon` steps (seeds no training or evaluation draws);
  L_ref is the best rate's mean loss over steps and seeds. One jitted,
  vmapped run per task, on the host's default device.
  """
  arrays = {
    "train_x": dataset.train.images,
    "train_y": dataset.train.labels,
    "test_x": dataset.test.images[:1],
    "test_y": dataset.test.labels[:1],
  }
  rates = np.asarray(family_lib.REFERENCE_RATES, np.float32)

  @jax.jit
  def sweep(arrays, rates, keys):
    def one(rate, key):
      tx = optax.adam(rate)
      return inner.train_model(task, tx, arrays, key, horizon)["losses"]

    per_rate = jax.vmap(lambda r: jax.vmap(lambda k: one(r, k))(keys))
    return per_rate(rates).mean(axis=(1, 2))

  means = np.asarray(sweep(arrays, rates, family_lib.reference_keys(seed)))
  finite = means[np.isfinite(means)]
  if not finite.size:
    raise validation.ConfigError(
      f"the adam normaliser's reference runs diverged at every learning "
      f"rate {list(family_lib.REFERENCE_RATES)} for a task of {task.num_params} "
      "parameters; use family.normalizer = 'lo' or 'none'"
    )
  return float(finite.min())


# -- evaluation ---------------------------------------------------------------


def eval_keys(config) -> jax.Array:
  """Held-out seeds: a key stream that training never draws from."""
  key = jax.random.fold_in(jax.random.key(config.seed), 1)
  return jax.random.split(key, config.eval.num_seeds)


def evaluate_optimizer(exp: Experiment, data, tx, keys, name=None):
  """Trains one fresh model per key for T steps; vmapped over keys.

  Args:
    exp: the experiment.
    data: the arrays of the task (`exp.group_data(run_data, name)`).
    tx: the optimizer.
    keys: one key per model.
    name: the task (group) and its horizon T; the first by default.

  Returns:
    `inner.train_model`'s dict (`losses` [num_keys, T], `test_accuracy`,
    `test_loss`, ...), every leaf leading with the key axis.
  """
  group = exp.group(name)
  run = functools.partial(
    inner.train_model, group.task, tx, data, num_steps=group.horizon
  )
  return jax.vmap(lambda k: run(key=k))(keys)


def summarize_eval(result) -> dict[str, float]:
  """The scores of an `evaluate_optimizer` result, means over the keys.

  `mean_train_loss` (over all T steps: the meta-objective), the
  `final_train_loss` (over the last 10 steps), `test_accuracy` and
  `test_loss` of the trained models.
  """
  losses = np.asarray(result["losses"])
  return {
    "mean_train_loss": float(losses.mean()),
    "final_train_loss": float(losses[:, -10:].mean()),
    "test_accuracy": float(np.mean(result["test_accuracy"])),
    "test_loss": float(np.mean(result["test_loss"])),
  }
