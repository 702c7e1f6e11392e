"""Config -> run: validation and every builder, in one place.

Every entry point turns an `ml_collections` config into the same parts here
(`lopt.train` for `lopt.main`, `lopt.evaluate`, `lopt.compare`, `lopt.bench`
and the notebooks), so a setting means the same thing wherever it is read:

    config = experiment.load_config("configs/default.py")
    experiment.check_config(config)          # ConfigError names the field
    data, dataset = experiment.load_data(config)
    exp = experiment.build(config, dataset)  # task, learned optimizer, outer
    est = exp.estimator(data)                # sharded over exp.mesh

The valid names of every choice are module constants (`MODELS`,
`ACTIVATIONS`, `ESTIMATORS`, `OUTER_OPTIMIZERS`, ...); `check_config`
reports a bad value as one `ConfigError` naming the field, the value and
what is allowed, before any data is loaded or anything is compiled.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
import optax

from lopt import data as data_lib
from lopt import estimators, inner, optimizers, sharding, systems, tasks

#: Version of the checkpoint's JSON item; bump when its layout changes.
FORMAT_VERSION = 1

#: Valid names, per choice.
MODELS = tasks.MODELS
ACTIVATIONS = tasks.ACTIVATIONS
META_LOSSES = inner.META_LOSSES
LOPT_KINDS = optimizers.KINDS
ESTIMATORS = tuple(sorted(estimators.REGISTRY))
OUTER_OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
  "adam": optax.adam,
  "sgd": optax.sgd,
}

#: Toy systems a config may name in `system.name` (`lopt.compare`).
SYSTEMS = {
  "lorenz": systems.Lorenz,
  "influence_balancing": systems.InfluenceBalancing,
  "linear_quadratic": systems.LinearQuadratic,
  "toy_regression": systems.ToyRegression,
}

#: The fields of an estimator's settings (`config.estimator`, or a compare
#: label's merged settings).
ESTIMATOR_FIELDS = (
  "name",
  "num_particles",
  "unroll_length",
  "sigma",
  "noise_period",
  "step_unlocked",
)
#: The fields of the outer optimizer's settings (`config.outer`).
OUTER_FIELDS = (
  "optimizer",
  "learning_rate",
  "clip",
  "decay_steps",
  "decay_factor",
)


class ConfigError(ValueError):
  """A config value that cannot work; the message names field and value."""


# -- loading and validation ---------------------------------------------------


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


def _fail(field: str, value: Any, allowed: str) -> None:
  raise ConfigError(f"{field} = {value!r} is invalid: it must be {allowed}")


def _is_int(value: Any) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_int(field: str, value: Any, low: int) -> None:
  if not (_is_int(value) and value >= low):
    _fail(field, value, f"an integer >= {low}")


def _check_real(
  field: str, value: Any, *, low: float, strict: bool, high: float | None = None
) -> None:
  ok = (
    isinstance(value, (int, float, np.integer, np.floating))
    and not isinstance(value, bool)
    and math.isfinite(value)
    and (value > low if strict else value >= low)
    and (high is None or value <= high)
  )
  if not ok:
    bound = f"> {low}" if strict else f">= {low}"
    if high is not None:
      bound += f" and <= {high}"
    _fail(field, value, f"a finite number {bound}")


def _check_choice(field: str, value: Any, choices) -> None:
  if value not in choices:
    _fail(field, value, f"one of {sorted(choices)}")


def _check_widths(field: str, value: Any, *, allow_empty: bool) -> None:
  ok = isinstance(value, (tuple, list)) and all(
    _is_int(w) and w >= 1 for w in value
  )
  if not ok or (not value and not allow_empty):
    what = "a sequence of integers >= 1"
    _fail(field, value, what if allow_empty else f"a non-empty {what}")


def check_outer(settings: Mapping[str, Any], prefix: str = "outer") -> None:
  """Validates outer-optimizer settings (`OUTER_FIELDS`); see `check_config`."""
  _check_choice(f"{prefix}.optimizer", settings["optimizer"], OUTER_OPTIMIZERS)
  _check_real(
    f"{prefix}.learning_rate", settings["learning_rate"], low=0, strict=True
  )
  _check_real(f"{prefix}.clip", settings.get("clip", 0.0), low=0, strict=False)
  _check_int(f"{prefix}.decay_steps", settings.get("decay_steps", 0), 0)
  _check_real(
    f"{prefix}.decay_factor",
    settings.get("decay_factor", 1.0),
    low=0,
    strict=True,
    high=1.0,
  )


def check_estimator(settings: Mapping[str, Any], horizon: int) -> None:
  """Validates estimator settings (`ESTIMATOR_FIELDS`) against a horizon T.

  Every field is checked, also those the chosen estimator ignores.
  """
  try:
    estimators.check_settings(
      settings["name"],
      horizon=horizon,
      num_particles=settings["num_particles"],
      unroll_length=settings["unroll_length"],
      sigma=settings.get("sigma"),
      noise_period=settings.get("noise_period") or None,
      step_unlocked=settings.get("step_unlocked", True),
    )
  except ValueError as e:
    raise ConfigError(str(e)) from None


def check_config(
  config: ml_collections.ConfigDict, num_devices: int | None = None
) -> None:
  """Fails fast, naming the field, on names and values that cannot work.

  Args:
    config: a learned-optimizer config (see configs/default.py).
    num_devices: the number of devices the particles are sharded over;
      `jax.device_count()` (all processes) by default.

  Raises:
    ConfigError: naming the field, its value and what is allowed.
  """
  task, est, outer = config.task, config.estimator, config.outer
  try:
    data_lib.check_dataset_name(task.dataset)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  _check_int("seed", config.seed, 0)
  _check_int("task.image_size", task.image_size, 0)
  _check_choice("task.model", task.model, MODELS)
  _check_widths("task.hidden", tuple(task.hidden), allow_empty=True)
  _check_choice("task.activation", task.activation, ACTIVATIONS)
  _check_int("task.batch_size", task.batch_size, 1)
  _check_choice("task.meta_loss", task.meta_loss, META_LOSSES)
  _check_choice("task.clip_meta_loss", task.clip_meta_loss, (False, True))
  _check_int("inner.horizon", config.inner.horizon, 1)
  _check_choice("lopt.kind", config.lopt.kind, LOPT_KINDS)
  _check_widths("lopt.hidden", tuple(config.lopt.hidden), allow_empty=False)
  check_estimator(est, config.inner.horizon)
  check_outer(outer)
  for field in (
    "outer.num_steps",
    "outer.steps_per_dispatch",
    "checkpoint.every_steps",
    "checkpoint.keep",
    "eval.num_seeds",
    "log.every_steps",
  ):
    section, name = field.split(".")
    _check_int(field, config[section][name], 1)
  _check_int("eval.every_steps", config.eval.every_steps, 0)
  _check_real(
    "eval.adam_learning_rate",
    config.eval.adam_learning_rate,
    low=0,
    strict=True,
  )
  dispatch = outer.steps_per_dispatch
  for field, value in (
    ("checkpoint.every_steps", config.checkpoint.every_steps),
    ("outer.num_steps", outer.num_steps),
  ):
    if value % dispatch:
      _fail(
        field,
        value,
        f"a multiple of outer.steps_per_dispatch ({dispatch}): "
        "checkpoints and the end fall between dispatches",
      )
  try:
    sharding.check_divisible(
      est.num_particles,
      jax.device_count() if num_devices is None else num_devices,
    )
  except ValueError as e:
    raise ConfigError(str(e)) from None


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
  `decay_steps` steps when that is set, after clipping the gradient to a
  global norm of `clip` when that is set (0 = off).
  """
  check_outer(settings)
  rate = settings["learning_rate"]
  if settings.get("decay_steps", 0):
    rate = optax.exponential_decay(
      rate,
      transition_steps=settings["decay_steps"],
      decay_rate=settings.get("decay_factor", 1.0),
      staircase=True,
    )
  tx = OUTER_OPTIMIZERS[settings["optimizer"]](rate)
  if settings.get("clip", 0.0):
    tx = optax.chain(optax.clip_by_global_norm(settings["clip"]), tx)
  return tx


def make_system(config: ml_collections.ConfigDict, **changes):
  """The toy system of `config.system`, with `changes` applied."""
  fields = dict(config.system)
  name = fields.pop("name")
  _check_choice("system.name", name, SYSTEMS)
  fields.update(changes)
  fields = {
    k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()
  }
  return SYSTEMS[name](**fields)


@dataclasses.dataclass(frozen=True)
class Experiment:
  """Everything static about a learned-optimizer run, built from the config."""

  config: ml_collections.ConfigDict
  task: tasks.Task
  lopt: optimizers.LOptConfig
  outer_tx: optax.GradientTransformation
  #: The particle mesh (`lopt.sharding.make_mesh`); None runs the particles
  #: with a plain vmap, on whatever devices the inputs are on.
  mesh: jax.sharding.Mesh | None = None

  def system(self, data) -> inner.InnerTraining:
    """Inner training of the task by the learned optimizer, over `data`."""
    cap = (
      1.5 * math.log(self.task.num_classes)
      if self.config.task.clip_meta_loss
      else None
    )
    return inner.InnerTraining(
      task=self.task,
      lopt=self.lopt,
      horizon=self.config.inner.horizon,
      data=data,
      meta_loss=self.config.task.meta_loss,
      max_loss=cap,
    )

  def estimator(self, data) -> estimators.Estimator:
    """The estimator over `system(data)`, its particles sharded on `mesh`."""

    def build_estimator(data):
      return make_estimator(self.config.estimator, self.system(data))

    if self.mesh is None:
      return build_estimator(data)
    return sharding.shard_particles(build_estimator, data, self.mesh)

  def saved_config(self) -> dict[str, Any]:
    """The JSON stored with every checkpoint; `load_optimizer` reads it."""
    return {
      "format_version": FORMAT_VERSION,
      "config": json.loads(self.config.to_json()),
      "lopt": self.lopt.to_dict(),
      "horizon": self.config.inner.horizon,
    }


def load_data(
  config, mesh: jax.sharding.Mesh | None = None
) -> tuple[dict[str, jax.Array], data_lib.Dataset]:
  """The dataset, whole, replicated on every device of `mesh`.

  Args:
    config: the experiment config.
    mesh: the particle mesh; by default one over all devices.

  Returns:
    `(arrays, dataset)`: the device arrays by name (`train_x`, ...) and the
    host-side `Dataset`.
  """
  dataset = data_lib.load_dataset(
    config.task.dataset,
    data_dir=config.task.data_dir or None,
    image_size=config.task.image_size,
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
  mesh = sharding.make_mesh() if mesh is None else mesh
  return sharding.put_replicated(arrays, mesh), dataset


def build(
  config, dataset: data_lib.Dataset, mesh: jax.sharding.Mesh | None = None
) -> Experiment:
  """The static parts of a run.

  Args:
    config: the experiment config.
    dataset: the loaded dataset (its shapes and class count size the task).
    mesh: the particle mesh; by default one over all devices. The number of
      particles must be divisible by its size once particles are run
      (`Experiment.estimator`); evaluation alone works on any mesh.

  Returns:
    The `Experiment`.
  """
  task = tasks.make_task(
    config.task.model,
    hidden=tuple(config.task.hidden),
    num_classes=dataset.num_classes,
    input_shape=dataset.image_shape,
    activation=config.task.activation,
    batch_size=config.task.batch_size,
  )
  lopt_cfg = optimizers.LOptConfig(
    kind=config.lopt.kind, hidden=tuple(config.lopt.hidden)
  )
  mesh = sharding.make_mesh() if mesh is None else mesh
  return Experiment(
    config, task, lopt_cfg, make_outer_optimizer(config.outer), mesh
  )


# -- evaluation ---------------------------------------------------------------


def eval_keys(config) -> jax.Array:
  """Held-out seeds: a key stream that training never draws from."""
  key = jax.random.fold_in(jax.random.key(config.seed), 1)
  return jax.random.split(key, config.eval.num_seeds)


def evaluate_optimizer(exp: Experiment, data, tx, keys):
  """Trains one fresh model per key for T steps; vmapped over keys.

  Returns:
    `inner.train_model`'s dict (`losses` [num_keys, T], `test_accuracy`,
    `test_loss`, ...), every leaf leading with the key axis.
  """
  run = functools.partial(
    inner.train_model,
    exp.task,
    tx,
    data,
    num_steps=exp.config.inner.horizon,
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
