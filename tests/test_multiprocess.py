"""Multi-process runs, hard kills, SIGTERM and elastic resume, end to end
through lopt.main.

Two processes on localhost form one `jax.distributed` job (CPU collectives
over gloo, JAX's default), each with 2 CPU devices: 4 devices in all, as on
a pod slice with 2 hosts. The command line is the one
launch/local_multiprocess.sh runs. Every process has a hard timeout.
Helpers (environment, shared data and compilation cache) come from
test_sharding.py.

Every interrupted multi-process run is compared with a run of the same
job that never stopped, in the whole run state (theta, the outer optimizer
state, the rng and every particle's state), read back from the final
checkpoints in this process: bit for bit where the same program ran on the
same devices, to float32 rounding where the device count changed.
"""

import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from test_elastic_resume import EXACT
from test_sharding import (
  TIMEOUT,
  assert_trees_close,
  child_env,
  finish,
  flat,
  kill_leftovers,
  overrides,
  shared_dirs,
  start,
)
from test_train import committed_steps

from configs import tiny
from lopt import checkpoint, experiment, metrics, sharding
from lopt.main import EXIT_PREEMPTED
from lopt.train import step as train_step

# Each test starts several jax.distributed processes: minutes on 2 cores.
pytestmark = pytest.mark.slow


TOTAL = 16  # outer steps of the 2-process runs


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  return shared_dirs(tmp_path_factory)


@pytest.fixture(autouse=True)
def no_leftover_processes():
  yield
  kill_leftovers()


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def main_command(workdir, flags: list[str]) -> list[str]:
  return [
    sys.executable,
    "-m",
    "lopt.main",
    "--config=configs/tiny.py",
    f"--workdir={workdir}",
    "--alsologtostderr",
    *flags,
  ]


_LAUNCHES = itertools.count(1)


def launch(
  workdir,
  flags: list[str],
  cache_dir: str,
  processes: int = 2,
  devices: int = 2,
):
  """Starts `processes` lopt.main processes as one job."""
  port = free_port()
  distributed = [
    "--distributed",
    f"--coordinator_address=localhost:{port}",
    f"--num_processes={processes}",
    # The shared cache: a restarted job compiles nothing again.
    f"--compilation_cache_dir={cache_dir}",
  ]
  number = next(_LAUNCHES)  # a log file per launch
  return [
    start(
      main_command(workdir, [*distributed, f"--process_id={i}", *flags]),
      f"{workdir}.{number}.process{i}.log",
      child_env(cache_dir, devices),
    )
    for i in range(processes)
  ]


def finish_all(processes, what: str, status: int = 0) -> list[str]:
  deadline = time.monotonic() + TIMEOUT
  return [
    finish(
      p,
      f"{what}, process {i}",
      timeout=max(1.0, deadline - time.monotonic()),
      status=status,
    )
    for i, p in enumerate(processes)
  ]


def wait_for(condition, processes, what: str, timeout: float = TIMEOUT):
  """Polls `condition()`; fails if a process exits or time runs out first."""
  deadline = time.monotonic() + timeout
  while not condition():
    for p in processes:
      if p.poll() is not None:
        for q in processes:
          q.kill()
        with open(p.log_path) as f:
          pytest.fail(
            f"{what}: a process exited early ({p.returncode}):\n"
            f"{f.read()[-3000:]}"
          )
    if time.monotonic() > deadline:
      for p in processes:
        p.kill()
      pytest.fail(f"{what}: timed out")
    time.sleep(0.05)


def metric_steps(workdir) -> list[int]:
  return [
    row["step"] for row in metrics.read_metrics(workdir) if "meta_loss" in row
  ]


def state_at(workdir, data_dir, step: int | None = None) -> dict:
  """The run state of a checkpoint (default: the newest), leaf by leaf."""
  config = tiny.get_config()
  config.estimator.num_particles = 8
  config.task.data_dir = data_dir
  data, dataset = experiment.load_data(config)
  exp = experiment.build(config, dataset)
  abstract = train_step.sharded_functions(exp, data)[2]
  with checkpoint.Checkpointer(
    workdir / "checkpoints", every_steps=1, keep=100
  ) as ckpt:
    state = flat(ckpt.restore(step or ckpt.latest_step(), abstract))
  assert any(name.startswith("estimator_state.inner") for name in state)
  return state


def assert_bit_identical(a: dict, b: dict) -> None:
  assert sorted(a) == sorted(b)
  for name in a:
    np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.fixture(scope="module")
def uninterrupted(dirs, tmp_path_factory):
  """One 2-process run of TOTAL steps that never stopped.

  Returns:
    `(workdir, final state)`; its checkpoints are those of steps 1 (orbax
    always saves a fresh run's first step) and TOTAL.

  It meta-evaluates (on replicated theta, in both processes) at steps 0, 8
  and 16, which the interrupted runs below skip: evaluation must not
  change the trajectory.
  """
  data_dir, cache_dir = dirs
  workdir = tmp_path_factory.mktemp("multiprocess") / "straight"
  flags = overrides(
    data_dir,
    outer__num_steps=TOTAL,
    checkpoint__every_steps=TOTAL,
    eval__every_steps=8,
  )
  outs = finish_all(launch(workdir, flags, cache_dir), "uninterrupted run")
  assert "Devices: 4 x cpu in 2 process(es), 2 particles each" in outs[0]
  assert "Eval at step 8: learned optimizer" in outs[0]
  # Only process 0 writes metrics: each step once, not twice.
  assert metric_steps(workdir) == list(range(1, TOTAL + 1))
  assert committed_steps(workdir) == [1, TOTAL]
  return workdir, state_at(workdir, data_dir)


def test_sigkill_of_one_process_then_restart_of_both_matches_uninterrupted(
  dirs, tmp_path, uninterrupted
):
  data_dir, cache_dir = dirs
  flags = overrides(data_dir, outer__num_steps=TOTAL)
  workdir = tmp_path / "killed"
  processes = launch(workdir, flags, cache_dir)
  wait_for(
    lambda: (committed_steps(workdir) or [0])[-1] >= 4,
    processes,
    "waiting for checkpoints",
  )
  # One host dies hard. The other can no longer make progress (every step
  # has collectives, every save a barrier); it fails or hangs, and the
  # scheduler ends it before it restarts the job.
  processes[1].send_signal(signal.SIGKILL)
  processes[1].wait()
  try:
    processes[0].wait(timeout=20)
  except subprocess.TimeoutExpired:
    processes[0].kill()
    processes[0].wait()
  interrupted_at = committed_steps(workdir)[-1]
  assert 4 <= interrupted_at < TOTAL, "the kill came too late to test resume"

  # The same command for both: it resumes and finishes.
  outs = finish_all(launch(workdir, flags, cache_dir), "resumed run")
  assert f"Resuming from the checkpoint of step {interrupted_at} in" in outs[0]
  assert committed_steps(workdir)[-1] == TOTAL
  # Same program on the same devices: bit for bit, not just close.
  assert_bit_identical(state_at(workdir, data_dir), uninterrupted[1])


def test_sigterm_to_every_process_stops_all_at_one_step_and_resumes_exactly(
  dirs, tmp_path, uninterrupted
):
  data_dir, cache_dir = dirs
  flags = overrides(data_dir, outer__num_steps=TOTAL)
  workdir = tmp_path / "preempted"
  processes = launch(workdir, flags, cache_dir)
  wait_for(
    lambda: len(metric_steps(workdir)) >= 3,
    processes,
    "waiting for training steps",
  )
  # A pod's preemption: every host gets SIGTERM, not quite at once.
  for p in processes:
    p.send_signal(signal.SIGTERM)
    time.sleep(0.05)
  # Both exit with the status that tells a scheduler "preempted, restart".
  outs = finish_all(processes, "the SIGTERM'd job", status=EXIT_PREEMPTED)
  stops = []
  for i, out in enumerate(outs):
    lines = [line for line in out.splitlines() if "Preemption at step" in line]
    assert len(lines) == 1, f"process {i}:\n{out[-3000:]}"
    stops.append(int(lines[0].split("Preemption at step ")[1].split(":")[0]))
  # The same step on every process, and it is the checkpoint they saved.
  assert stops[0] == stops[1], stops
  stopped_at = stops[0]
  assert 3 <= stopped_at < TOTAL, "SIGTERM came too late to test resume"
  assert committed_steps(workdir)[-1] == stopped_at
  assert max(metric_steps(workdir)) == stopped_at
  assert not [d for d in os.listdir(workdir / "checkpoints") if "tmp" in d]

  outs = finish_all(launch(workdir, flags, cache_dir), "resumed run")
  assert f"Resuming from the checkpoint of step {stopped_at} in" in outs[0]
  assert_bit_identical(state_at(workdir, data_dir), uninterrupted[1])


def test_a_corrupted_checkpoint_on_one_host_falls_back_on_every_host(
  dirs, tmp_path, uninterrupted
):
  """One garbled byte in particles that only process 1 reads back:
  both processes see it (the digests are summed over processes) and resume
  from the same older step; the result is the uninterrupted run's."""
  data_dir, cache_dir = dirs
  source, reference = uninterrupted
  workdir = tmp_path / "damaged"
  shutil.copytree(source / "checkpoints", workdir / "checkpoints")
  # The largest particle leaf, so that it is stored as raw bytes in a data
  # file; each device's 2 particles are one chunk, in the files of the
  # process that wrote them (and reads them back).
  name = max(
    (n for n in reference if n.startswith("estimator_state.")),
    key=lambda n: reference[n].nbytes,
  )
  step_dir = workdir / "checkpoints" / str(TOTAL)
  files = [p for p in (step_dir / "inner").rglob("*") if p.is_file()]
  damaged = []
  for first in range(0, 8, 2):
    needle = np.ascontiguousarray(reference[name][first : first + 2])
    needle = needle.tobytes()
    for path in files:
      data = bytearray(path.read_bytes())
      at = data.find(needle)
      if at >= 0 and "ocdbt.process_1" in str(path) and not damaged:
        data[at + len(needle) // 2] ^= 0x10
        path.write_bytes(bytes(data))
        damaged.append((first, path))
  assert len(damaged) == 1, damaged

  flags = overrides(data_dir, outer__num_steps=TOTAL)
  outs = finish_all(launch(workdir, flags, cache_dir), "resumed run")
  for out in outs:
    assert f"{step_dir} is corrupted" in out and name in out
    assert "Resuming from step 1, the newest intact checkpoint" in out
  assert "Resuming from the checkpoint of step 1 in" in outs[0]
  assert (workdir / "checkpoints" / f"{TOTAL}.corrupted").is_dir()
  assert committed_steps(workdir)[-1] == TOTAL
  assert_bit_identical(state_at(workdir, data_dir), reference)


def test_elastic_from_two_hosts_of_four_devices_to_two_devices_to_one(
  dirs, tmp_path
):
  """8 devices (2 processes x 4) -> 2 devices -> 1 device, against the
  same 6 steps on 8 devices straight, at step 4 and at step 6.

  Bit for bit: the step, the rng, every particle's counter, noise and NRES
  credit, and the optimizers' step counts (EXACT); the other floats to
  float32 rounding (another device count sums the particles' contributions
  in another order).
  """
  data_dir, cache_dir = dirs
  straight, elastic = tmp_path / "straight", tmp_path / "elastic"

  def flags(num_steps):
    return overrides(data_dir, outer__num_steps=num_steps, checkpoint__keep=6)

  finish_all(
    launch(straight, flags(6), cache_dir, devices=4), "straight 8 devices"
  )
  outs = finish_all(
    launch(elastic, flags(2), cache_dir, devices=4), "first 2 steps"
  )
  assert "Devices: 8 x cpu in 2 process(es), 1 particles each" in outs[0]
  for devices, (first, last) in ((2, (2, 4)), (1, (4, 6))):
    process = start(
      main_command(
        elastic, [*flags(last), f"--compilation_cache_dir={cache_dir}"]
      ),
      f"{elastic}.{devices}.log",
      child_env(cache_dir, devices),
    )
    out = finish(process, f"steps {first} to {last} on {devices} devices")
    assert f"Devices: {devices} x cpu in 1 process(es)" in out
    assert f"Resuming from the checkpoint of step {first} in" in out

    resumed = state_at(elastic, data_dir, last)
    reference = state_at(straight, data_dir, last)
    assert int(resumed["step"]) == int(reference["step"]) == last
    assert sorted(resumed) == sorted(reference)
    for name in resumed:
      if name.startswith(EXACT) or name.endswith("count"):
        np.testing.assert_array_equal(
          resumed[name], reference[name], err_msg=f"{name} ({devices})"
        )
    assert_trees_close(resumed, reference)


def test_sigterm_saves_the_step_reached_and_exits_cleanly(dirs, tmp_path):
  data_dir, cache_dir = dirs
  workdir = tmp_path / "run"
  # Far more steps than it will take; no interval checkpoint before 1000.
  flags = overrides(
    data_dir, outer__num_steps=100_000, checkpoint__every_steps=1000
  )
  process = start(
    main_command(workdir, flags), f"{workdir}.log", child_env(cache_dir, 1)
  )
  wait_for(
    lambda: len(metric_steps(workdir)) >= 3,
    [process],
    "waiting for training steps",
  )
  process.send_signal(signal.SIGTERM)
  out = finish(process, "the SIGTERM'd run", timeout=60, status=EXIT_PREEMPTED)
  logged = [
    line
    for line in out.splitlines()
    if "SIGTERM: saved the checkpoint of step" in line
  ]
  assert logged, out[-3000:]
  stopped_at = int(logged[-1].split("step ")[-1].split(";")[0])
  # The step it had reached: the last one it logged.
  assert stopped_at >= 3 and max(metric_steps(workdir)) == stopped_at
  # The first step (orbax always saves a fresh run's first) and the one
  # SIGTERM asked for, nothing half-written.
  assert committed_steps(workdir) == [1, stopped_at]
  assert not [d for d in os.listdir(workdir / "checkpoints") if "tmp" in d]

  # Restorable, particles included.
  config = tiny.get_config()
  config.estimator.num_particles = 8
  config.task.data_dir = data_dir
  data, dataset = experiment.load_data(config)
  exp = experiment.build(config, dataset)
  abstract = jax.eval_shape(lambda d: train_step.init_run_state(exp, d), data)
  with checkpoint.Checkpointer(
    workdir / "checkpoints", every_steps=1, keep=5
  ) as ckpt:
    state = ckpt.restore(stopped_at, abstract)
  state = sharding.to_host(state)
  assert int(state["step"]) == stopped_at
  assert state["estimator_state"].counter.shape == (8,)
