"""Resuming a workdir under a changed config: refused, unless it is harmless.

A real tiny run wrote a checkpoint (2 outer steps: the session's `tiny_run`);
each test resumes a copy of that workdir with another config. Fields that change what is computed are
refused at start-up with every change listed (old -> new); the fields of
`experiment.RESUMABLE_FIELDS` continue the run; `allow_config_change`
continues it anyway and records the change.
"""

import json
import os
import shutil
import subprocess
import sys

import ml_collections
import pytest

from configs import tiny
from lopt import checkpoint, metrics, train, validation
from lopt.checkpoint import resume_policy

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 2


def tiny_config(**fields):
  """The tiny config, STEPS outer steps, no meta-evaluation; then `fields`."""
  config = tiny.get_config()
  config.outer.num_steps = STEPS
  config.eval.every_steps = 0
  for field, value in fields.items():
    section, name = field.split("__")
    config[section][name] = value
  return config


@pytest.fixture(scope="module")
def finished_run(tiny_run):
  """A workdir with the checkpoint of step STEPS of the tiny run.

  The session's `lopt.main` run (conftest.py); its meta-evaluation cadence
  differs from `tiny_config()`'s, which a resume allows.
  """
  assert tiny_run.num_steps == STEPS
  return tiny_run.workdir


@pytest.fixture
def workdir(finished_run, tmp_path):
  """A copy of the finished run for one test to resume."""
  copy = tmp_path / "run"
  shutil.copytree(finished_run, copy)
  return copy


def saved_json(workdir, step=None):
  return checkpoint.load_meta(str(workdir / "checkpoints"), step)[1]


def test_a_changed_sigma_is_refused_naming_old_and_new(workdir):
  before = sorted(os.listdir(workdir / "checkpoints"))
  with pytest.raises(validation.ConfigError) as error:
    train.train_and_evaluate(tiny_config(estimator__sigma=0.02), str(workdir))
  message = str(error.value)
  assert "estimator.sigma: 0.01 -> 0.02" in message
  assert f"step {STEPS}" in message
  assert "new workdir" in message and "--allow_config_change" in message
  # Nothing was trained or saved.
  assert sorted(os.listdir(workdir / "checkpoints")) == before


def test_every_changed_field_is_listed(workdir):
  config = tiny_config(
    estimator__name="pes",
    estimator__num_particles=8,
    outer__learning_rate=1e-3,
    lopt__hidden=(8, 8),
  )
  config.seed = 1
  config.log.every_steps = 1  # allowed: not listed
  with pytest.raises(validation.ConfigError) as error:
    train.train_and_evaluate(config, str(workdir))
  message = str(error.value)
  for line in (
    'estimator.name: "nres" -> "pes"',
    "estimator.num_particles: 4 -> 8",
    "lopt.hidden: [4] -> [8, 8]",
    "outer.learning_rate: 0.0003 -> 0.001",
    "seed: 0 -> 1",
  ):
    assert f"  {line}\n" in message, message
  assert "5 field(s)" in message
  assert "log.every_steps:" not in message


def test_more_steps_and_other_cadences_continue_the_run(workdir):
  config = tiny_config(
    outer__num_steps=2 * STEPS,
    log__every_steps=1,
    checkpoint__every_steps=1,
    checkpoint__keep=5,
  )
  state = train.train_and_evaluate(config, str(workdir))
  assert int(state["step"]) == 2 * STEPS
  assert saved_json(workdir)["config"]["outer"]["num_steps"] == 2 * STEPS
  rows = metrics.read_metrics(workdir)
  assert "config_changes" not in {k for row in rows for k in row}


def test_an_allowed_change_is_recorded(workdir):
  # Resumed at its last step: nothing to train, but the change is on record.
  state = train.train_and_evaluate(
    tiny_config(estimator__sigma=0.02), str(workdir), allow_config_change=True
  )
  assert int(state["step"]) == STEPS
  rows = metrics.read_metrics(workdir)
  assert {"step": STEPS, "config_changes": 1} in rows


def test_an_allowed_change_that_resizes_the_state_is_refused(workdir):
  with pytest.raises(validation.ConfigError) as error:
    train.train_and_evaluate(
      tiny_config(estimator__num_particles=8),
      str(workdir),
      allow_config_change=True,
    )
  message = str(error.value)
  assert "cannot continue under the changed estimator.num_particles" in (
    message
  )
  assert "new workdir" in message


def test_the_command_line_refuses_with_one_message(workdir):
  base = [
    sys.executable,
    "-m",
    "lopt.main",
    "--config=configs/tiny.py",
    f"--workdir={workdir}",
    f"--config.outer.num_steps={STEPS}",
    "--config.eval.every_steps=0",
  ]
  result = subprocess.run(
    [*base, "--config.estimator.sigma=0.02"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode != 0
  assert "Traceback" not in result.stderr, result.stderr
  assert result.stderr.count("Config error:") == 1, result.stderr
  assert "estimator.sigma: 0.01 -> 0.02" in result.stderr
  # The flag lets it through; the change lands in the log.
  result = subprocess.run(
    [*base, "--config.estimator.sigma=0.02", "--allow_config_change"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "estimator.sigma: 0.01 -> 0.02" in result.stderr
  assert "changes what is computed" in result.stderr


# -- the comparison itself, on every field ------------------------------------


def leaves(tree, prefix=""):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from leaves(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value


def changed(value):
  """Another value of the same type (what a command-line override gives)."""
  if isinstance(value, bool):
    return not value
  if isinstance(value, (int, float)):
    return value + 1
  if isinstance(value, str):
    return value + "_other"
  if isinstance(value, list):
    return value + [3]
  raise TypeError(value)


FIELDS = dict(leaves(json.loads(tiny.get_config().to_json())))


@pytest.mark.parametrize("field", sorted(FIELDS))
def test_only_resumable_fields_may_change(field):
  saved = {"config": json.loads(tiny.get_config().to_json())}
  config = tiny.get_config().to_dict()
  node = config
  *sections, name = field.split(".")
  for section in sections:
    node = node[section]
  node[name] = changed(FIELDS[field])
  config = ml_collections.ConfigDict(config)
  (change,) = resume_policy.compare_configs(saved, config)
  assert change.field == field
  if field in resume_policy.RESUMABLE_FIELDS:
    assert resume_policy.check_resume(saved, config) == [change]
  else:
    with pytest.raises(validation.ConfigError, match=f"  {field}: "):
      resume_policy.check_resume(saved, config)
    assert resume_policy.check_resume(saved, config, allow_changes=True) == [
      change
    ]


def test_the_allow_list_is_what_the_issue_allows():
  assert set(resume_policy.RESUMABLE_FIELDS) == {
    "outer.num_steps",
    "log.every_steps",
    "eval.every_steps",
    "checkpoint.every_steps",
    "checkpoint.every_seconds",
    "checkpoint.keep",
    "checkpoint.keep_period",
    "task.data_dir",
  }
  # Every allowed field exists, so a rename cannot silently drop it.
  assert set(resume_policy.RESUMABLE_FIELDS) <= set(FIELDS)


def test_a_checkpoint_from_before_saving_by_the_clock_resumes():
  """Runs saved before `checkpoint.every_seconds` existed resume under
  today's configs, which save by the clock."""
  config = tiny.get_config()
  config.checkpoint.every_seconds = 60.0
  saved = {"config": json.loads(config.to_json())}
  for field in ("every_seconds", "keep_period"):
    del saved["config"]["checkpoint"][field]
  changes = resume_policy.check_resume(saved, config)
  assert {c.field for c in changes} == {
    "checkpoint.every_seconds",
    "checkpoint.keep_period",
  }


def test_a_field_the_checkpoint_lacks_is_a_change():
  config = tiny.get_config()
  saved = {"config": json.loads(config.to_json())}
  del saved["config"]["task"]["clip_meta_loss"]
  with pytest.raises(
    validation.ConfigError, match=r"task.clip_meta_loss: \(not set\) -> true"
  ):
    resume_policy.check_resume(saved, config)


def test_a_checkpoint_without_a_saved_config_is_a_clear_error():
  with pytest.raises(validation.ConfigError, match="no 'config' entry"):
    resume_policy.check_resume({"format_version": 1}, tiny.get_config())
