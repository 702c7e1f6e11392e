"""Multi-process runs, hard kills and SIGTERM, end to end through lopt.main.

Two processes on localhost form one `jax.distributed` job (CPU collectives
over gloo, JAX's default), each with 2 CPU devices: 4 devices in all, as on
a pod slice with 2 hosts. The command line is the one
launch/local_multiprocess.sh runs. Every process has a hard timeout.
Helpers (environment, shared data and compilation cache) come from
test_sharding.py.
"""

import os
import signal
import socket
import sys
import time

import jax
import numpy as np
import pytest
from test_sharding import (
  TIMEOUT,
  child_env,
  finish,
  flat,
  overrides,
  shared_dirs,
  start,
)
from test_train import committed_steps

from configs import tiny
from lopt import checkpoint, experiment, metrics, sharding, train

# Each test starts several jax.distributed processes: minutes on 2 cores.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  return shared_dirs(tmp_path_factory)


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


def launch(workdir, flags: list[str], cache_dir: str, processes: int = 2):
  """Starts `processes` lopt.main processes as one job, 2 devices each."""
  port = free_port()
  distributed = [
    "--distributed",
    f"--coordinator_address=localhost:{port}",
    f"--num_processes={processes}",
  ]
  return [
    start(
      main_command(workdir, [*distributed, f"--process_id={i}", *flags]),
      f"{workdir}.process{i}.log",
      child_env(cache_dir, 2),
    )
    for i in range(processes)
  ]


def finish_all(processes, what: str) -> list[str]:
  deadline = time.monotonic() + TIMEOUT
  return [
    finish(
      p, f"{what}, process {i}", timeout=max(1.0, deadline - time.monotonic())
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


def test_two_processes_resume_after_sigkill_like_an_uninterrupted_run(
  dirs, tmp_path
):
  data_dir, cache_dir = dirs
  total = 16
  common = overrides(data_dir, outer__num_steps=total)
  straight, killed = tmp_path / "straight", tmp_path / "killed"

  # Two jobs side by side (their start-ups overlap): the reference, one
  # uninterrupted 2-process run, meta-evaluating (on replicated theta, in
  # both processes) at steps 0, 8 and 16; and the same run, killed hard
  # (both processes) after a few checkpoints...
  reference = launch(
    straight,
    common
    + ["--config.checkpoint.every_steps=16", "--config.eval.every_steps=8"],
    cache_dir,
  )
  processes = launch(killed, common, cache_dir)
  wait_for(
    lambda: (committed_steps(killed) or [0])[-1] >= 4,
    processes,
    "waiting for checkpoints",
  )
  for p in processes:
    p.send_signal(signal.SIGKILL)
  for p in processes:
    p.wait()
  interrupted_at = committed_steps(killed)[-1]
  assert 4 <= interrupted_at < total, "the kill came too late to test resume"

  outs = finish_all(reference, "uninterrupted run")
  assert "Devices: 4 x cpu in 2 process(es), 2 particles each" in outs[0]
  assert "Eval at step 8: learned optimizer" in outs[0]
  # Only process 0 writes metrics: each step once, not twice.
  assert metric_steps(straight) == list(range(1, total + 1))

  # ... then restarted with the same command: it resumes and finishes.
  outs = finish_all(launch(killed, common, cache_dir), "resumed run")
  assert f"Resuming from the checkpoint of step {interrupted_at}" in outs[0]
  assert committed_steps(killed)[-1] == total

  a, _ = checkpoint.load_meta(str(straight / "checkpoints"))
  b, _ = checkpoint.load_meta(str(killed / "checkpoints"))
  a, b = flat(a), flat(b)
  assert int(a["step"]) == int(b["step"]) == total
  # Same program on the same devices: bit for bit, not just close.
  assert sorted(a) == sorted(b)
  for name in a:
    np.testing.assert_array_equal(a[name], b[name], err_msg=name)


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
  out = finish(process, "the SIGTERM'd run", timeout=60)  # exit status 0
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
  abstract = jax.eval_shape(lambda d: train.init_run_state(exp, d), data)
  with checkpoint.Checkpointer(
    workdir / "checkpoints", every_steps=1, keep=5
  ) as ckpt:
    state = ckpt.restore(stopped_at, checkpoint.abstract_like(abstract))
  state = sharding.to_host(state)
  assert int(state["step"]) == stopped_at
  assert state["estimator_state"].counter.shape == (8,)
