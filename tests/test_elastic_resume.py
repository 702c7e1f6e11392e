"""Elastic resume onto more devices, against a run that never stopped.

A run starts on 1 device, checkpoints at step 2 and stops; the same command
resumes it on 8 simulated CPU devices to step 4. Its final run state is
compared with the same 4 steps run straight on 1 device and straight on 8.
The runs are `lopt.main` subprocesses (the device count is fixed when a
process starts), with the helpers of test_sharding.py; the final
checkpoints are read back here, on this process's one device.

What must hold, leaf by leaf: everything drawn from keys or counted (the
step, the rng, every particle's counter and noise) is bit-identical; the
floats (theta, the outer optimizer state, the inner models, their
learned-optimizer state) agree to float32 rounding, because a different
device count sums the particles' contributions in another order.
"""

import sys

import numpy as np
import pytest
from test_sharding import (
  assert_trees_close,
  child_env,
  finish,
  flat,
  kill_leftovers,
  overrides,
  shared_dirs,
  start,
)
from test_train import restore_final

from configs import tiny

# Four subprocess runs, each compiling the tiny step: over a minute on 2 cores.
pytestmark = pytest.mark.slow

STEPS = 4
#: Leaves that no reduction order can change: keys, counts, drawn noise and
#: NRES's credit (its sum). Measured: the other floats differ by <= 6e-6 of
#: their leaf's scale between 1 and 8 devices.
EXACT = (
  "step",
  "rng",
  "estimator_state.counter",
  "estimator_state.noise",
  "estimator_state.credit",
)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  return shared_dirs(tmp_path_factory)


@pytest.fixture(autouse=True)
def no_leftover_processes():
  yield
  kill_leftovers()


def run(workdir, devices, cache_dir, flags):
  """`lopt.main` on `devices` CPU devices; returns its output."""
  command = [
    sys.executable,
    "-m",
    "lopt.main",
    "--config=configs/tiny.py",
    f"--workdir={workdir}",
    *flags,
  ]
  process = start(command, f"{workdir}.log", child_env(cache_dir, devices))
  return finish(process, f"{devices}-device run in {workdir}")


def final_state(workdir, data_dir):
  config = tiny.get_config()
  config.estimator.num_particles = 8
  config.task.data_dir = data_dir
  return flat(restore_final(workdir, config))


def test_resume_from_one_device_onto_eight_matches_straight_runs(
  dirs, tmp_path
):
  data_dir, cache_dir = dirs
  flags = overrides(data_dir, outer__num_steps=STEPS)
  straight = {d: tmp_path / f"straight{d}" for d in (1, 8)}
  for devices, workdir in straight.items():
    run(workdir, devices, cache_dir, flags)
  elastic = tmp_path / "elastic"
  run(elastic, 1, cache_dir, overrides(data_dir, outer__num_steps=STEPS // 2))
  out = run(elastic, 8, cache_dir, flags)
  assert f"Resuming from the checkpoint of step {STEPS // 2}" in out
  assert "Resuming with a changed outer.num_steps: 2 -> 4" in out

  resumed = final_state(elastic, data_dir)
  for devices, workdir in straight.items():
    reference = final_state(workdir, data_dir)
    assert sorted(resumed) == sorted(reference)
    assert int(resumed["step"]) == int(reference["step"]) == STEPS
    for name in resumed:
      if name.startswith(EXACT) or name.endswith("count"):
        np.testing.assert_array_equal(
          resumed[name], reference[name], err_msg=f"{name} ({devices})"
        )
    assert_trees_close(resumed, reference)
  # The particles' states are part of the comparison, not just theta.
  assert any(name.startswith("estimator_state.inner") for name in resumed)
