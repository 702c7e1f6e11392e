"""Shared pytest set-up.

JAX reads its platform flags once, before the first computation, so anything
that must hold for the whole session is set here, before a test imports jax.
"""

import os
import pathlib
import subprocess
import sys
from typing import NamedTuple

import pytest

# Tests run on the CPU, whatever the machine has; multi-device tests start
# their own subprocesses with their own XLA_FLAGS.
os.environ.setdefault("JAX_PLATFORMS", "cpu")


@pytest.fixture(scope="session", autouse=True)
def tfds_data_dir(tmp_path_factory):
  """Points the default tfds data_dir at the session's temporary directory.

  Tests that load data without a `data_dir` (a config's `task.data_dir = ""`,
  `load_dataset("digits")` in a notebook, ...) would otherwise prepare digits
  into the user's ~/tensorflow_datasets (or their $TFDS_DATA_DIR). Both
  `lopt.tasks.data.default_data_dir` and tfds itself read TFDS_DATA_DIR when called,
  not at import, and subprocesses inherit it with the environment. An
  autouse session fixture runs before every other fixture, so no test sees
  the user's directory. Deliberately not `setdefault`: the tests must not
  write into a real data directory either.

  Yields:
    The directory (tfds creates it on first use).
  """
  path = tmp_path_factory.getbasetemp() / "tfds_default"
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("TFDS_DATA_DIR", str(path))
    yield path


class TinyRun(NamedTuple):
  """A finished `lopt.main` run on configs/tiny.py."""

  workdir: pathlib.Path
  num_steps: int
  stderr: str


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tfds_data_dir) -> TinyRun:
  """One real 2-step meta-training run, shared by the tests that only read it.

  It runs the CLI in a subprocess, as a user would, with the default data_dir
  (the session's TFDS_DATA_DIR above). Tests must not write into its workdir.
  """
  del tfds_data_dir  # Requested so that the run inherits TFDS_DATA_DIR.
  workdir = tmp_path_factory.mktemp("tiny_run")
  num_steps = 2
  command = [
    sys.executable,
    "-m",
    "lopt.main",
    "--config=configs/tiny.py",
    f"--workdir={workdir}",
    f"--config.outer.num_steps={num_steps}",
  ]
  result = subprocess.run(
    command,
    cwd=pathlib.Path(__file__).resolve().parents[1],
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return TinyRun(workdir, num_steps, result.stderr)
