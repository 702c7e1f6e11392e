"""Config validation: every field checked before anything runs.

`check_config` turns each bad value into one `ConfigError` that names the
field, the value and what is allowed, before any data is loaded or anything
is compiled: a mistake costs the user seconds, not a crash after minutes of
compilation. The valid names of every choice are the module constants below
(`MODELS`, `ACTIVATIONS`, `ESTIMATORS`, `OUTER_OPTIMIZERS`, ...). What a
resumed run may change is `lopt.checkpoint.resume_policy`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
import optax

from lopt import estimators, sharding
from lopt.learned.config import KINDS, LOptConfig
from lopt.tasks import data as data_lib
from lopt.tasks import family, inner, models

#: Valid names, per choice.
MODELS = models.MODELS
ACTIVATIONS = models.ACTIVATIONS
META_LOSSES = inner.META_LOSSES
LOPT_KINDS = KINDS
ESTIMATORS = tuple(sorted(estimators.REGISTRY))
OUTER_OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
  "adam": optax.adam,
  "sgd": optax.sgd,
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
  "boundaries",
  "scales",
)


class ConfigError(ValueError):
  """A config value that cannot work; the message names field and value."""


#: Integers that reach the device as int32 (step counters, horizons, sizes).
_INT32_MAX = 2**31 - 1
#: `jax.random.key` keeps only the low 32 bits of a seed: 2**32 is seed 0.
_SEED_MAX = 2**32 - 1
_MISSING = object()  # `_get`: the field is required
_ABSENT = object()  # `_get`: an optional field that is not there


def _fail(field: str, value: Any, allowed: str) -> None:
  raise ConfigError(f"{field} = {value!r} is invalid: it must be {allowed}")


def _get(config, field: str, default: Any = _MISSING) -> Any:
  """`config`'s value at the dotted `field`; a ConfigError if it is missing.

  `default`, if given, stands in for a missing field (the optional fields
  that the builders read with `.get`).
  """
  node = config
  for part in field.split("."):
    try:
      node = node[part]
    except (KeyError, TypeError, AttributeError):
      if default is not _MISSING:
        return default
      raise ConfigError(
        f"{field} is missing from the config (configs/default.py has every "
        "field, with what it means)"
      ) from None
  return node


def _is_int(value: Any) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(
    value, (bool, np.bool_)
  )


def _check_int(
  field: str, value: Any, low: int, high: int = _INT32_MAX, why: str = ""
) -> None:
  if not (_is_int(value) and low <= value <= high):
    _fail(field, value, f"an integer in [{low}, {high}]{why}")


def _check_real(
  field: str, value: Any, *, low: float, strict: bool, high: float | None = None
) -> None:
  ok = (
    isinstance(value, (int, float, np.integer, np.floating))
    and not isinstance(value, (bool, np.bool_))
    and math.isfinite(value)
    and (value > low if strict else value >= low)
    and (high is None or value <= high)
  )
  if not ok:
    bound = f"> {low}" if strict else f">= {low}"
    if high is not None:
      bound += f" and <= {high}"
    _fail(field, value, f"a finite number {bound}")


def lopt_config(config: ml_collections.ConfigDict) -> LOptConfig:
  """The learned optimizer's `LOptConfig` from `config.lopt`.

  Every field of `LOptConfig` may be set there (kind and hidden are
  required; the others default as the dataclass does).

  Raises:
    ConfigError: naming the field, its value and what is allowed.
  """
  fields = dict(config.lopt.to_dict())
  fields["hidden"] = tuple(fields["hidden"])
  try:
    return LOptConfig.from_dict(fields)
  except ValueError as e:
    raise ConfigError(f"lopt: {e}") from None


def check_choice(field: str, value: Any, choices) -> None:
  # Names only: `in` on a dict of choices would raise for an unhashable value,
  # and a number could equal a key by accident.
  if not (isinstance(value, str) and value in choices):
    _fail(field, value, f"one of {sorted(choices)}")


def _check_flag(field: str, value: Any) -> None:
  # Not `value in (False, True)`: 0, 1 and 1.0 compare equal to a bool.
  if not isinstance(value, (bool, np.bool_)):
    _fail(field, value, "True or False")


def _check_widths(field: str, value: Any, *, allow_empty: bool) -> None:
  ok = isinstance(value, (tuple, list)) and all(
    _is_int(w) and 1 <= w <= _INT32_MAX for w in value
  )
  if not ok or (not value and not allow_empty):
    what = "a sequence of integers >= 1"
    _fail(field, value, what if allow_empty else f"a non-empty {what}")


def check_model(
  spec: family.TaskSpec, field: Callable[[str, str], str]
) -> None:
  """The settings that say what a task's model is, and that it fits its data.

  Args:
    spec: the task, resolved (`lopt.tasks.family.resolve`).
    field: maps a setting and its base config name to the name the user
      wrote it under (a family task's own field, or the base one).
  """
  kind = data_lib.dataset_kind(spec.dataset)
  allowed = models.MODEL_DATA.get(spec.model, ())
  if kind not in allowed:
    _fail(
      field("model", "task.model"),
      spec.model,
      f"a model of {kind} data ({', '.join(sorted(m for m, ks in models.MODEL_DATA.items() if kind in ks))})"
      f" for dataset {spec.dataset!r}",
    )
  if kind != "images" and spec.image_size:
    _fail(
      field("image_size", "task.image_size"),
      spec.image_size,
      f"0 for dataset {spec.dataset!r} ({kind} data, not images)",
    )
  _check_int(field("heads", "task.heads"), spec.heads, 1)
  _check_int(field("seq_len", "task.seq_len"), spec.seq_len, 1)
  check_choice(field("norm", "task.norm"), spec.norm, models.NORMS)
  check_choice(
    field("reconstruction", "task.reconstruction"),
    spec.reconstruction,
    models.RECONSTRUCTIONS,
  )
  if spec.model in ("resnet", "autoencoder", "transformer") and not spec.hidden:
    _fail(
      field("hidden", "task.hidden"),
      spec.hidden,
      f"at least one width for a {spec.model}",
    )
  if spec.model == "transformer" and (
    len(set(spec.hidden)) != 1 or spec.hidden[0] % spec.heads
  ):
    _fail(
      field("hidden", "task.hidden"),
      spec.hidden,
      f"one width per block, all equal and a multiple of heads = {spec.heads}",
    )


def _classifies(spec: family.TaskSpec) -> bool:
  kind = data_lib.dataset_kind(spec.dataset)
  return models.objective(spec.model, kind) == "classification"


#: Settings that a config may leave out; the builders default them.
_OPTIONAL_ESTIMATOR = ("sigma", "noise_period", "step_unlocked")
_OPTIONAL_OUTER = (
  "clip",
  "decay_steps",
  "decay_factor",
  "boundaries",
  "scales",
)


def _section(config, section: str, fields, optional) -> dict[str, Any]:
  """The settings `fields` of `config[section]`; `optional` ones if set."""
  settings = {}
  for name in fields:
    field = f"{section}.{name}"
    if name not in optional:
      settings[name] = _get(config, field)
    elif (value := _get(config, field, _ABSENT)) is not _ABSENT:
      settings[name] = value
  return settings


def check_outer(settings: Mapping[str, Any], prefix: str = "outer") -> None:
  """Validates outer-optimizer settings (`OUTER_FIELDS`); see `check_config`."""
  check_choice(f"{prefix}.optimizer", settings["optimizer"], OUTER_OPTIMIZERS)
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
  boundaries = settings.get("boundaries", ())
  scales = settings.get("scales", ())
  ok = isinstance(boundaries, (tuple, list)) and all(
    _is_int(b) and 1 <= b <= _INT32_MAX for b in boundaries
  )
  if not ok or list(boundaries) != sorted(set(boundaries)):
    _fail(
      f"{prefix}.boundaries",
      boundaries,
      "a strictly increasing sequence of outer steps >= 1 (() = none)",
    )
  ok = isinstance(scales, (tuple, list)) and all(
    isinstance(v, (int, float, np.integer, np.floating))
    and not isinstance(v, (bool, np.bool_))
    and math.isfinite(v)
    and v > 0
    for v in scales
  )
  if not ok or len(scales) != len(boundaries):
    _fail(
      f"{prefix}.scales",
      scales,
      f"one finite factor > 0 per entry of {prefix}.boundaries "
      f"({len(boundaries)})",
    )
  if boundaries and settings.get("decay_steps", 0):
    _fail(
      f"{prefix}.boundaries",
      boundaries,
      f"() when {prefix}.decay_steps is set: give one schedule, "
      "piecewise constant (boundaries, scales) or exponential "
      "(decay_steps, decay_factor)",
    )


def check_estimator(settings: Mapping[str, Any], horizon: int) -> None:
  """Validates estimator settings (`ESTIMATOR_FIELDS`) against a horizon T.

  Every field is checked, also those the chosen estimator ignores.
  """
  # Before `estimators.check_settings`, whose own checks these complete: a
  # name that is not even a string; the configs' "0 = unset" convention
  # (0.0 or False must not pass as 0); and counts that must fit the int32
  # arrays they size.
  check_choice("estimator.name", settings["name"], ESTIMATORS)
  noise_period = settings.get("noise_period", 0)
  _check_int("estimator.noise_period", noise_period, 0, why=" (0 = unset)")
  num_particles = settings["num_particles"]
  if _is_int(num_particles) and num_particles > _INT32_MAX:
    _check_int("estimator.num_particles", num_particles, 1)
  try:
    estimators.check_settings(
      settings["name"],
      horizon=horizon,
      num_particles=num_particles,
      unroll_length=settings["unroll_length"],
      sigma=settings.get("sigma"),
      noise_period=noise_period or None,
      step_unlocked=settings.get("step_unlocked", True),
    )
  except ValueError as e:
    raise ConfigError(str(e)) from None


def check_config(
  config: ml_collections.ConfigDict, num_devices: int | None = None
) -> None:
  """Fails fast, naming the field, on names and values that cannot work.

  Every field of configs/default.py is checked (type, range, finiteness,
  choices), also estimator settings that the chosen estimator ignores, and
  a missing field is named too. Nothing is loaded or compiled.

  Args:
    config: a learned-optimizer config (see configs/default.py).
    num_devices: the number of devices the particles are sharded over;
      `jax.device_count()` (all processes) by default.

  Raises:
    ConfigError: naming the field, its value and what is allowed.
  """

  def get(field, default=_MISSING):
    return _get(config, field, default)

  _check_int("seed", get("seed"), 0, _SEED_MAX)
  dataset = get("task.dataset")
  if not isinstance(dataset, str):
    _fail("task.dataset", dataset, "a dataset name (a string)")
  try:
    data_lib.check_dataset_name(dataset)
  except ValueError as e:
    raise ConfigError(f"task.dataset: {e}") from None
  data_dir = get("task.data_dir")
  if data_dir is not None and not isinstance(data_dir, str):
    _fail("task.data_dir", data_dir, 'a directory (a string; "" = default)')
  _check_int("task.image_size", get("task.image_size"), 0)
  check_choice("task.model", get("task.model"), MODELS)
  _check_widths("task.hidden", get("task.hidden"), allow_empty=True)
  check_choice("task.activation", get("task.activation"), ACTIVATIONS)
  _check_int("task.batch_size", get("task.batch_size"), 1)
  check_choice("task.meta_loss", get("task.meta_loss"), META_LOSSES)
  _check_flag("task.clip_meta_loss", get("task.clip_meta_loss"))
  horizon = get("inner.horizon")
  _check_int("inner.horizon", horizon, 1)
  check_choice("lopt.kind", get("lopt.kind"), LOPT_KINDS)
  _check_widths("lopt.hidden", get("lopt.hidden"), allow_empty=False)
  lopt_config(config)
  # The optional settings (read with `.get` by the builders) are passed on
  # only when present, so that the checks default them as the builders do.
  est = _section(config, "estimator", ESTIMATOR_FIELDS, _OPTIONAL_ESTIMATOR)
  check_estimator(est, horizon)
  check_outer(_section(config, "outer", OUTER_FIELDS, _OPTIONAL_OUTER))
  for field in (
    "outer.num_steps",
    "outer.steps_per_dispatch",
    "checkpoint.keep",
    "eval.num_seeds",
    "log.every_steps",
  ):
    _check_int(field, get(field), 1)
  _check_int(
    "eval.every_steps", get("eval.every_steps"), 0, why=" (0 = no evaluation)"
  )
  _check_real(
    "eval.adam_learning_rate",
    get("eval.adam_learning_rate"),
    low=0,
    strict=True,
  )
  _check_checkpoint_cadence(config)
  dispatch = get("outer.steps_per_dispatch")
  for field in ("checkpoint.every_steps", "outer.num_steps"):
    value = get(field)
    if value % dispatch:
      _fail(
        field,
        value,
        f"a multiple of outer.steps_per_dispatch ({dispatch}): "
        "checkpoints and the end fall between dispatches",
      )
  num_devices = jax.device_count() if num_devices is None else num_devices
  if config.get("family") is not None:
    _check_family(config, est, num_devices)
    return
  check_model(family.resolve(config).specs[0], lambda f, base: base)
  try:
    sharding.check_divisible(est["num_particles"], num_devices)
  except ValueError as e:
    raise ConfigError(str(e)) from None


def _check_checkpoint_cadence(config: ml_collections.ConfigDict) -> None:
  """Saving by step count, by time (> 0 if not by steps; optional) or both."""
  every_steps = _get(config, "checkpoint.every_steps")
  _check_int("checkpoint.every_steps", every_steps, 0, why=" (0 = by time)")
  every_seconds = _get(config, "checkpoint.every_seconds", None)
  if every_seconds is not None:
    _check_real(
      "checkpoint.every_seconds", every_seconds, low=0, strict=not every_steps
    )
  elif not every_steps:
    raise ConfigError(
      "checkpoint.every_seconds is missing and checkpoint.every_steps = 0: "
      "a run must save by time, by step count or both"
    )
  _check_int(
    "checkpoint.keep_period", _get(config, "checkpoint.keep_period", 0), 0
  )


def _check_family(config, est: Mapping[str, Any], num_devices: int) -> None:
  """`check_config` for `family.*`: every task's fields, named by task."""
  try:
    family.check_names(config)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  check_choice(
    "family.normalizer",
    config.family.get("normalizer", "adam"),
    family.NORMALIZERS,
  )
  check_choice(
    "family.combine", config.family.get("combine", "unit"), family.COMBINES
  )
  fractions = config.family.get("batch_fractions", (1.0,))
  if not (isinstance(fractions, (tuple, list)) and fractions):
    _fail("family.batch_fractions", fractions, "a non-empty tuple of numbers")
  for i, f in enumerate(fractions):
    _check_real(f"family.batch_fractions[{i}]", f, low=0, strict=True, high=1)
  tasks = family.resolve(config)
  if not tasks.keyed:
    check_model(tasks.specs[0], lambda f, base: base)
    try:
      sharding.check_divisible(est["num_particles"], num_devices)
    except ValueError as e:
      raise ConfigError(str(e)) from None
    return
  for spec, (name, entry) in zip(
    tasks.specs, sorted(config.family.tasks.items()), strict=True
  ):
    prefix = f"family.tasks.{name}"
    given = dict(entry)

    def field(f, default, prefix=prefix, given=given):
      # The field as the user wrote it: the task's own, or the base one.
      return f"{prefix}.{f}" if f in given else default

    try:
      data_lib.check_dataset_name(spec.dataset)
    except ValueError as e:
      raise ConfigError(f"{field('dataset', 'task.dataset')}: {e}") from None
    _check_int(field("image_size", "task.image_size"), spec.image_size, 0)
    check_choice(field("model", "task.model"), spec.model, MODELS)
    _check_widths(field("hidden", "task.hidden"), spec.hidden, allow_empty=True)
    check_choice(
      field("activation", "task.activation"), spec.activation, ACTIVATIONS
    )
    _check_int(field("batch_size", "task.batch_size"), spec.batch_size, 1)
    check_model(spec, field)
    if tasks.normalizer == "lo" and not _classifies(spec):
      _fail(
        "family.normalizer",
        "lo",
        f"'adam' or 'none': {prefix} is not a classifier, and the 'lo' "
        "normaliser is a cross-entropy's",
      )
    _check_int(field("horizon", "inner.horizon"), spec.horizon, 1)
    _check_real(f"{prefix}.weight", spec.weight, low=0, strict=False)
    try:
      check_estimator(dict(est, num_particles=spec.num_particles), spec.horizon)
      sharding.check_divisible(spec.num_particles, num_devices)
    except ValueError as e:
      raise ConfigError(f"{prefix} (T = {spec.horizon}): {e}") from None
  try:
    family.check_some_weight(tasks.specs)
  except ValueError as e:
    raise ConfigError(str(e)) from None
