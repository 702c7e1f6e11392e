"""Meta-training end to end: outputs, exact resume after a kill, bad configs.

These run the real thing: the tiny config through `lopt.main` in
subprocesses, real orbax checkpoints on disk, and a SIGKILL.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from lopt import checkpoint, experiment, metrics, train, validation
from lopt.learned.config import LOptConfig
from lopt.train import step as train_step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main_command(workdir, *overrides):
  return [
    sys.executable,
    "-m",
    "lopt.main",
    "--config=configs/tiny.py",
    f"--workdir={workdir}",
    *overrides,
  ]


def run_main(workdir, *overrides, timeout=300):
  return subprocess.run(
    main_command(workdir, *overrides),
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def committed_steps(workdir) -> list[int]:
  """The workdir's committed checkpoint steps, read from the directory
  listing (no orbax), so it is safe while another process is saving."""
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    return []
  return sorted(
    int(d)
    for d in os.listdir(directory)
    if d.isdigit()
    and os.path.exists(os.path.join(directory, d, "commit_success.txt"))
  )


def restore_final(workdir, config):
  """The newest checkpoint of a workdir as a host-side run state."""
  data, dataset = experiment.load_data(config)
  exp = experiment.build(config, dataset)
  abstract = train_step.sharded_functions(exp, data)[2]
  with checkpoint.Checkpointer(
    os.path.join(workdir, "checkpoints"), every_steps=1, keep=1
  ) as ckpt:
    state = ckpt.restore(ckpt.latest_step(), abstract)
  return jax.tree.map(
    lambda x: np.asarray(
      jax.random.key_data(x)
      if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
      else x
    ),
    state,
  )


def test_main_writes_checkpoints_metrics_and_tensorboard(tiny_run):
  workdir = tiny_run.workdir
  assert committed_steps(workdir)[-1] == tiny_run.num_steps
  rows = metrics.read_metrics(workdir)
  logged = {k for row in rows for k in row}
  for key in (
    "meta_loss",
    "inner_steps_per_sec",
    "eval/learned/mean_train_loss",
    "eval/adam/mean_train_loss",
    "nonfinite_steps",
  ):
    assert key in logged
  assert os.listdir(workdir / "tensorboard")
  # The console: progress with an ETA, and where everything went.
  assert "ETA" in tiny_run.stderr
  assert f"Checkpoints: {workdir / 'checkpoints'}" in tiny_run.stderr
  assert "Scheduling" not in tiny_run.stderr  # orbax's INFO lines stay off


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical(tmp_path):
  """2k steps straight equal k steps, a hard kill, and the rest."""
  total = 60
  steps = [
    f"--config.outer.num_steps={total}",
    "--config.eval.every_steps=1000",
    "--config.log.every_steps=1000",
  ]
  config = tiny.get_config()
  config.outer.num_steps = total
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  result = run_main(
    straight, *steps, f"--config.checkpoint.every_steps={total}"
  )
  assert result.returncode == 0, result.stderr[-3000:]

  process = subprocess.Popen(
    main_command(killed, *steps, "--config.checkpoint.every_steps=1"),
    cwd=REPO,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  deadline = time.time() + 240
  while time.time() < deadline and process.poll() is None:
    if committed_steps(killed) and committed_steps(killed)[-1] >= 10:
      break
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  process.wait()
  interrupted_at = committed_steps(killed)[-1]
  assert 10 <= interrupted_at < total, "the kill came too late to test resume"

  result = run_main(killed, *steps, "--config.checkpoint.every_steps=1")
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"Resuming from the checkpoint of step {interrupted_at}" in (
    result.stderr
  )
  a, b = restore_final(straight, config), restore_final(killed, config)
  assert int(a["step"]) == int(b["step"]) == total
  jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.mark.slow
def test_a_stateless_estimator_checkpoints_and_resumes(tmp_path):
  """FullES keeps no estimator state: its run still saves and resumes.

  orbax refuses an empty item, so a FullES run once failed at its first
  save. Two dispatches and a resume for two more must equal four straight.
  """

  def run(workdir, num_steps):
    config = tiny.get_config()
    config.estimator.name = "full_es"
    config.outer.num_steps = num_steps
    config.eval.every_steps = 0
    train.train_and_evaluate(config, str(workdir))
    return config

  config = run(tmp_path / "straight", 4)
  run(tmp_path / "resumed", 2)
  assert committed_steps(tmp_path / "resumed")[-1] == 2
  run(tmp_path / "resumed", 4)
  a = restore_final(tmp_path / "straight", config)
  b = restore_final(tmp_path / "resumed", config)
  assert a["estimator_state"] == b["estimator_state"] == {}
  assert int(a["step"]) == int(b["step"]) == 4
  jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.mark.slow
def test_saves_by_the_clock_leave_the_trajectory_and_its_resume_exact(
  tmp_path, tfds_data_dir
):
  """Which steps a run saves now depends on timing; what it computes must
  not: a run that saves by time ends where one that saves only at its end
  does, and so does a resume from whichever step the clock picked."""
  del tfds_data_dir  # the session's, through TFDS_DATA_DIR
  config = tiny.get_config()
  total = 120
  config.outer.num_steps = total
  config.log.every_steps = 1  # the host waits for each step: saves interleave
  config.eval.every_steps = 0
  config.checkpoint.keep = 100
  config.checkpoint.every_steps = total
  train.train_and_evaluate(config, str(tmp_path / "at_end"))
  config.checkpoint.every_steps = 0
  config.checkpoint.every_seconds = 1e-3  # whenever no save is in flight
  timed = tmp_path / "timed"
  train.train_and_evaluate(config, str(timed))
  steps = committed_steps(timed)
  middle = [s for s in steps if 1 < s < total]
  assert steps[0] == 1 and steps[-1] == total and middle, steps
  resumed = tmp_path / "resumed"
  shutil.copytree(timed, resumed)
  for s in steps:
    if s > middle[len(middle) // 2]:
      shutil.rmtree(resumed / "checkpoints" / str(s))
  train.train_and_evaluate(config, str(resumed))
  final = restore_final(tmp_path / "at_end", config)
  for workdir in (timed, resumed):
    jax.tree.map(
      np.testing.assert_array_equal, final, restore_final(workdir, config)
    )


@pytest.mark.parametrize(
  "field,value,message",
  [
    ("task.dataset", "imagenet21k", "digits"),
    ("task.model", "transformer", "mlp"),
    ("estimator.name", "sgd", "nres"),
    ("outer.optimizer", "lion", "adam"),
    ("task.meta_loss", "test", "validation"),
    ("lopt.kind", "lstm", "nominal"),
    ("estimator.unroll_length", 50, "unroll_length"),
    ("estimator.sigma", 0.0, "sigma"),
    ("estimator.num_particles", 0, "num_particles"),
    ("inner.horizon", 0, "horizon"),
    ("checkpoint.every_steps", 3, "steps_per_dispatch"),
  ],
)
def test_bad_configs_fail_naming_the_field(field, value, message):
  config = tiny.get_config()
  section, name = field.split(".")
  if field == "checkpoint.every_steps":
    config.outer.steps_per_dispatch = 2
  config[section][name] = value
  with pytest.raises(ValueError, match=message):
    validation.check_config(config)


def test_bad_config_on_the_command_line(tmp_path):
  result = run_main(tmp_path, "--config.estimator.name=adamw")
  assert result.returncode != 0
  # One line that names the field, the value and the choices; no traceback.
  assert "Config error: estimator.name" in result.stderr
  assert "'adamw'" in result.stderr and "'nres'" in result.stderr
  assert "Traceback" not in result.stderr


def test_diverging_inner_runs_do_not_poison_theta():
  config = tiny.get_config()
  data, dataset = experiment.load_data(config)
  exp = experiment.build(config, dataset)
  run_state = jax.jit(lambda d: train_step.init_run_state(exp, d))(data)
  # A learning rate of e^60 overflows float32 within a few inner steps.
  theta = dict(run_state["theta"], log_lr=jnp.asarray(60.0))
  run_state = dict(run_state, theta=theta)
  run_state, info = jax.jit(
    lambda d, s: train_step.train_steps(exp, d, s, num_steps=3)
  )(data, run_state)
  assert int(np.sum(info["nonfinite"])) > 0
  for leaf in jax.tree.leaves(run_state["theta"]):
    assert np.all(np.isfinite(leaf))
  assert np.all(np.isfinite(info["grad_norm"]))


def test_run_state_fits_the_saved_config(tiny_run):
  """The checkpoint's JSON names the architecture load_optimizer rebuilds."""
  config = tiny.get_config()
  meta, saved = checkpoint.load_meta(str(tiny_run.workdir / "checkpoints"))
  assert saved["format_version"] == experiment.FORMAT_VERSION
  assert saved["config"]["estimator"]["name"] == "nres"
  cfg = LOptConfig.from_dict(saved["lopt"])
  assert cfg.hidden == tuple(config.lopt.hidden)
  json.dumps(saved)
  assert int(meta["step"]) == tiny_run.num_steps
