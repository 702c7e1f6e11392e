"""Config -> run: every builder, and the validation they rely on, in one place.

Every entry point turns an `ml_collections` config into the same parts here
(`lopt.train` for `lopt.main`, `lopt.evaluate`, `lopt.compare`, `lopt.bench`
and the notebooks), so a setting means the same thing wherever it is read:

    config = experiment.load_config("configs/default.py")
    experiment.check_config(config)          # ConfigError names the field
    data, dataset = experiment.load_data(config)
    exp = experiment.build(config, dataset)  # task, learned optimizer, outer
    est = exp.estimator(data)                # sharded over exp.mesh

Validation lives in `lopt.validation` and is re-exported here: the valid
names of every choice (`MODELS`, `ACTIVATIONS`, `ESTIMATORS`,
`OUTER_OPTIMIZERS`, ...), `check_config`, which reports a bad value as one
`ConfigError` naming the field, the value and what is allowed, before any
data is loaded or anything is compiled, and `check_resume`.
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

from lopt import data as data_lib
from lopt import estimators, inner, optimizers, sharding, systems, tasks
from lopt.validation import (  # noqa: F401  (re-exported: see above)
  ACTIVATIONS,
  ESTIMATOR_FIELDS,
  ESTIMATORS,
  LOPT_KINDS,
  META_LOSSES,
  MODELS,
  NOT_SET,
  OUTER_FIELDS,
  OUTER_OPTIMIZERS,
  RESUMABLE_FIELDS,
  ConfigChange,
  ConfigError,
  check_choice,
  check_config,
  check_estimator,
  check_outer,
  check_resume,
  compare_configs,
)

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
  check_outer(settings)
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
  tx = OUTER_OPTIMIZERS[settings["optimizer"]](rate)
  if settings.get("clip", 0.0):
    tx = optax.chain(optax.clip_by_global_norm(settings["clip"]), tx)
  return tx


def make_system(config: ml_collections.ConfigDict, **changes):
  """The toy system of `config.system`, with `changes` applied."""
  fields = dict(config.system)
  name = fields.pop("name")
  check_choice("system.name", name, SYSTEMS)
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
