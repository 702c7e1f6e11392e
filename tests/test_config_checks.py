"""Every config value is checked: a bad one is one ConfigError naming it.

The walk below visits every leaf of configs/default.py and tries wrong values
of several kinds on it (wrong type, out of range, NaN and infinities for
numbers, an unknown name for a choice, a negative where none is allowed),
each in a config that is otherwise valid. Values of the wrong type cannot be
assigned to a type-locked ConfigDict, so each bad config is rebuilt from a
plain dict: that is what a config file that builds its ConfigDict from a dict
(or a future code path) could hand `check_config`.
"""

import math
import os
import subprocess
import sys

import ml_collections
import pytest

from configs import default
from lopt import validation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAN, INF = float("nan"), float("inf")


def leaves(tree, prefix=""):
  """(dotted field, value) of every leaf of a nested dict."""
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from leaves(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value


DEFAULT = default.get_config().to_dict()
FIELDS = dict(leaves(DEFAULT))

#: Wrong values for a leaf, by the type of its default value.
WRONG_BY_TYPE = {
  bool: [1, 0, 1.0, "True", None],
  int: ["7", 2.5, True, None, [1], NAN, -1, 2**40],
  float: ["0.1", None, True, NAN, INF, -INF, -1.0, [0.1]],
  str: [3, None, True, ["x"], "no_such_name"],
  tuple: ["32", 5, None, (0,), (-1,), (2.5,), (True,), ("8",)],
}
#: Wrong values for particular fields, on top of (or instead of) their type's.
WRONG_BY_FIELD = {
  "seed": [2**32],  # jax.random.key keeps 32 bits: 2**32 would be seed 0
  "task.data_dir": [3, True, ["x"]],
  "task.batch_size": [0],
  "inner.horizon": [0],
  "lopt.hidden": [()],
  "estimator.num_particles": [0, 3],  # 3: not divisible by 2 devices
  "estimator.unroll_length": [0, 1001],  # W > T = 1000
  "estimator.sigma": [0.0],
  "estimator.noise_period": [0.0, False],  # 0 is "unset"; these are not 0
  "outer.learning_rate": [0.0],
  "outer.num_steps": [0, 1505],  # 1505: not a multiple of steps_per_dispatch
  "outer.steps_per_dispatch": [0, 7],  # 7 divides neither 1500 nor 100
  "checkpoint.every_steps": [105],
  # 0 turns saving by time off, which every_steps = 0 then forbids.
  "checkpoint.every_seconds": [0.0],
  "checkpoint.keep": [0],
  "eval.num_seeds": [0],
  "eval.adam_learning_rate": [0.0],
  "log.every_steps": [0],
}
#: Fields a config may leave out: the builders default them.
OPTIONAL = {
  "estimator.noise_period",
  "estimator.step_unlocked",
  "outer.clip",
  "checkpoint.keep_period",
}
#: Fields some of whose type's wrong values are right for them: only the
#: values of WRONG_BY_FIELD are tried.
OWN_VALUES_ONLY = {"task.data_dir"}  # None is the default, any string a path


def wrong_values(field, value):
  kind = tuple if isinstance(value, (tuple, list)) else type(value)
  own = WRONG_BY_FIELD.get(field, [])
  return own if field in OWN_VALUES_ONLY else WRONG_BY_TYPE[kind] + own


CASES = [
  pytest.param(field, bad, id=f"{field}={bad!r}")
  for field, value in FIELDS.items()
  for bad in wrong_values(field, value)
]


def with_value(field, value, base=None):
  """The default config (or `base`) with `field` set to `value`, untyped."""
  tree = (base or default.get_config()).to_dict()
  node = tree
  *sections, name = field.split(".")
  for section in sections:
    node = node[section]
  node[name] = value
  return ml_collections.ConfigDict(tree)


def test_the_default_and_every_leaf_are_covered():
  validation.check_config(default.get_config(), num_devices=2)
  # A new field must come with wrong values here, or a reason it has none.
  assert all(wrong_values(f, v) for f, v in FIELDS.items())
  assert len(FIELDS) >= 30


@pytest.mark.parametrize("field,bad", CASES)
def test_a_wrong_value_is_a_config_error_naming_the_field(field, bad):
  config = with_value(field, bad)
  with pytest.raises(validation.ConfigError) as error:
    validation.check_config(config, num_devices=2)
  message = str(error.value)
  assert field in message, message
  if bad is not None:
    assert repr(bad) in message or str(bad) in message, message


@pytest.mark.parametrize("field", sorted(FIELDS))
def test_a_missing_field_is_a_config_error_naming_it(field):
  tree = default.get_config().to_dict()
  node = tree
  *sections, name = field.split(".")
  for section in sections:
    node = node[section]
  del node[name]
  config = ml_collections.ConfigDict(tree)
  if field in OPTIONAL:
    # The builders default these (`.get`); the rest must still check out.
    validation.check_config(config, num_devices=2)
    return
  with pytest.raises(validation.ConfigError) as error:
    validation.check_config(config, num_devices=2)
  message = str(error.value)
  # Missing from the config; or, for sigma, required by the estimator.
  assert f"{field} is missing" in message or (
    f"{field} is required" in message
  ), message


@pytest.mark.parametrize(
  "name,field,bad",
  [
    # Settings the chosen estimator does not use are still checked ...
    ("tbptt", "estimator.sigma", -0.1),
    ("tbptt", "estimator.sigma", NAN),
    ("tbptt", "estimator.sigma", INF),
    ("full_es", "estimator.unroll_length", 0),
    ("full_es", "estimator.unroll_length", 1001),
    ("nres", "estimator.noise_period", -1),
    ("pes", "estimator.noise_period", 2.5),
    ("tes", "estimator.noise_period", -5),
    ("full_es", "estimator.step_unlocked", "yes"),
    # ... as are those it uses, against each other: K < W = 10.
    ("gpes", "estimator.noise_period", 5),
  ],
)
def test_settings_the_estimator_ignores_are_still_checked(name, field, bad):
  config = with_value(field, bad, with_value("estimator.name", name))
  with pytest.raises(validation.ConfigError, match=field.replace(".", r"\.")):
    validation.check_config(config, num_devices=2)


def test_optional_outer_settings_are_checked_when_given():
  config = default.get_config()
  config.outer.decay_steps = -1
  with pytest.raises(validation.ConfigError, match="outer.decay_steps"):
    validation.check_config(config)
  config.outer.decay_steps = 100
  config.outer.decay_factor = 1.5
  with pytest.raises(validation.ConfigError, match="outer.decay_factor"):
    validation.check_config(config)
  config.outer.decay_factor = math.nan
  with pytest.raises(validation.ConfigError, match="outer.decay_factor"):
    validation.check_config(config)


@pytest.mark.parametrize(
  "flag,message",
  [
    ("--config.outer.learning_rate=inf", "outer.learning_rate = inf"),
    ("--config.eval.adam_learning_rate=-0.02", "eval.adam_learning_rate"),
  ],
)
def test_a_bad_value_on_the_command_line_is_one_clear_line(
  tmp_path, flag, message
):
  workdir = tmp_path / "run"
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "lopt.main",
      "--config=configs/tiny.py",
      f"--workdir={workdir}",
      flag,
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode != 0
  assert "Traceback" not in result.stderr, result.stderr
  errors = [
    line for line in result.stderr.splitlines() if "Config error:" in line
  ]
  assert len(errors) == 1, result.stderr
  assert errors[0].startswith(f"Config error: {message}"), errors[0]
  assert "must be" in errors[0]
  # Refused before anything was written.
  assert not workdir.exists()


def test_every_lopt_config_field_can_be_set_from_the_config():
  """`config.lopt` reaches the learned optimizer whole, not just its kind."""
  config = default.get_config()
  config.lopt.kind = "adaptive"
  config.lopt.adaptive_lr = 0.05
  config.lopt.lr_adapt_max = 1.0
  validation.check_config(config, num_devices=2)
  cfg = validation.lopt_config(config)
  assert (cfg.kind, cfg.adaptive_lr, cfg.lr_adapt_max) == (
    "adaptive",
    0.05,
    1.0,
  )
  for field, bad in [("hyper_lr", -0.1), ("lr_adapt_min", 0.5)]:
    wrong = with_value(field=f"lopt.{field}", value=bad, base=config)
    with pytest.raises(validation.ConfigError, match=f"{field}.*{bad}"):
      validation.check_config(wrong, num_devices=2)
  config.lopt.learning_rate = 0.1  # not a field of LOptConfig
  with pytest.raises(validation.ConfigError, match="learning_rate"):
    validation.check_config(config, num_devices=2)
