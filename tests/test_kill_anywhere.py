"""A run SIGKILLed at any moment, an async save in flight included, still ends
bit-identical to one that never stopped.

One `lopt.main` run of the tiny config (8 particles, a checkpoint every
step, only the newest 2 kept) is killed with SIGKILL several times and
restarted with the same command each time; its final run state, particles
included, must equal that of the same command run once, uninterrupted.

The kill moments come from a fixed seed, so a failure reproduces: one
during start-up (imports, data, compilation, restore), some a random moment
after the run has committed a few more steps, and one while orbax's
asynchronous save is being written. That one is detected, not hoped for:
the test polls the checkpoint directory for orbax's temporary step
directory (`<step>.orbax-checkpoint-tmp-<n>`, renamed to `<step>` as the
save commits) and kills as soon as a new one appears; a temporary directory
still there once the process is dead proves that the kill interrupted the
save. If the save won the race, the run is restarted and the kill tried
again.

The processes share the compilation cache and data directory of
test_sharding.py; each one has a hard timeout.
"""

import os
import random
import signal
import sys
import time

import numpy as np
import pytest
from test_sharding import (
  TIMEOUT,
  child_env,
  finish,
  flat,
  kill_leftovers,
  overrides,
  shared_dirs,
  start,
)
from test_train import committed_steps, restore_final

from configs import tiny

# Half a dozen lopt.main processes: minutes on 2 cores.
pytestmark = pytest.mark.slow

SEED = 12
TOTAL = 40  # outer steps; each kill below lands well before the end
TMP_MARK = ".orbax-checkpoint-tmp"
#: The kill schedule: what each kill waits for (see the module docstring).
KILLS = ("start-up", "steps", "save in flight", "steps", "save in flight")
#: Tries at catching a save in flight before the test gives up.
IN_FLIGHT_TRIES = 6


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  return shared_dirs(tmp_path_factory)


@pytest.fixture(autouse=True)
def no_leftover_processes():
  yield
  kill_leftovers()


def command(workdir, data_dir) -> list[str]:
  flags = overrides(data_dir, outer__num_steps=TOTAL, checkpoint__keep=2)
  return [
    sys.executable,
    "-m",
    "lopt.main",
    "--config=configs/tiny.py",
    f"--workdir={workdir}",
    *flags,
  ]


def in_flight(workdir) -> set[str]:
  """orbax's temporary step directories: saves begun and not committed."""
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    return set()
  return {name for name in os.listdir(directory) if TMP_MARK in name}


def wait_until(condition, process, what: str, poll: float = 0.02) -> None:
  deadline = time.monotonic() + TIMEOUT
  while not condition():
    if process.poll() is not None:
      with open(process.log_path) as f:
        pytest.fail(
          f"{what}: the run ended ({process.returncode}) before the kill:\n"
          f"{f.read()[-3000:]}"
        )
    if time.monotonic() > deadline:
      pytest.fail(f"{what}: timed out")
    time.sleep(poll)


def final_state(workdir, data_dir) -> dict[str, np.ndarray]:
  config = tiny.get_config()
  config.estimator.num_particles = 8
  config.task.data_dir = data_dir
  return flat(restore_final(workdir, config))


def test_sigkill_at_any_moment_ends_bit_identical(dirs, tmp_path):
  data_dir, cache_dir = dirs
  env = child_env(cache_dir, 1)
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  finish(
    start(command(straight, data_dir), f"{straight}.log", env),
    "the uninterrupted run",
  )

  rng = random.Random(SEED)
  caught_in_flight = 0
  launches = 0
  resumed_from = []  # (newest committed step at the kill, its log file)

  def launch():
    nonlocal launches
    launches += 1
    log = f"{killed}.{launches}.log"
    if committed_steps(killed):
      resumed_from.append((committed_steps(killed)[-1], log))
    return start(command(killed, data_dir), log, env)

  def kill(process) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL

  for moment in KILLS:
    if moment == "start-up":
      process = launch()
      time.sleep(rng.uniform(0.5, 4.0))
      kill(process)
    elif moment == "steps":
      process = launch()
      target = (committed_steps(killed) or [0])[-1] + rng.randint(2, 6)
      wait_until(
        lambda t=target: (committed_steps(killed) or [0])[-1] >= t,
        process,
        f"waiting for step {target}",
      )
      time.sleep(rng.uniform(0.0, 0.2))
      kill(process)
    else:
      for _ in range(IN_FLIGHT_TRIES):
        process = launch()
        before = in_flight(killed)
        first = (committed_steps(killed) or [0])[-1] + 1
        # A save begun after the run has resumed and committed a step of
        # its own: the same moment of a later outer step.
        wait_until(
          lambda f=first, b=before: (
            (committed_steps(killed) or [0])[-1] >= f
            and bool(in_flight(killed) - b)
          ),
          process,
          "waiting for an async save",
          poll=0.002,
        )
        seen = in_flight(killed) - before
        kill(process)
        interrupted = seen & in_flight(killed)  # uncommitted, and it is dead
        if interrupted:
          # A save of a step after the newest committed one, which the next
          # run must not resume from.
          (name,) = interrupted
          assert int(name.split(".")[0]) > committed_steps(killed)[-1]
          caught_in_flight += 1
          break
      else:
        pytest.fail(
          f"no kill landed during an async save in {IN_FLIGHT_TRIES} tries"
        )
  assert caught_in_flight == KILLS.count("save in flight")
  assert (committed_steps(killed) or [0])[-1] < TOTAL

  # The same command once more: it resumes and finishes.
  process = launch()
  finish(process, "the resumed run")
  assert committed_steps(killed)[-1] == TOTAL
  # Every restart that got as far resumed from the newest checkpoint
  # committed before its kill: an interrupted save was left behind, not
  # read. (The first runs may have died before their first checkpoint.)
  resumed = 0
  for step, log in resumed_from:
    with open(log) as f:
      out = f.read()
    if "Resuming from the checkpoint of step" in out:
      assert f"Resuming from the checkpoint of step {step} in" in out, log
      resumed += 1
  assert resumed >= 3 and resumed_from[-1][1].endswith(f".{launches}.log")

  a, b = final_state(straight, data_dir), final_state(killed, data_dir)
  assert int(a["step"]) == int(b["step"]) == TOTAL
  assert sorted(a) == sorted(b)
  assert any(name.startswith("estimator_state.") for name in a)
  for name in a:
    np.testing.assert_array_equal(a[name], b[name], err_msg=name)
