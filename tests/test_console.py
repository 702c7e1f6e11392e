"""The console: lopt's own lines, other libraries' INFO off, short sweeps."""

import logging as py_logging
import os
import subprocess
import sys

import pytest
from absl import logging

from lopt import console


def _record(pathname: str, level: int) -> py_logging.LogRecord:
  return py_logging.LogRecord("absl", level, pathname, 1, "msg", (), None)


def test_other_libraries_info_is_filtered_but_not_their_warnings():
  keep = console._OwnInfoOnly()
  orbax = "/site-packages/orbax/checkpoint/checkpoint_manager.py"
  own = os.path.join(os.path.dirname(console.__file__), "train.py")
  assert not keep.filter(_record(orbax, py_logging.INFO))
  assert keep.filter(_record(orbax, py_logging.WARNING))
  assert keep.filter(_record(own, py_logging.INFO))
  # A known notice that says nothing is wrong stays off too.
  notice = _record(orbax, py_logging.WARNING)
  notice.msg = "Given directory is read only=%s"
  assert not keep.filter(notice)


@pytest.mark.parametrize(
  "seconds,text",
  [(0.4, "0s"), (42, "42s"), (185, "3m05s"), (7440, "2h04m"), (-1, "?")],
)
def test_durations_read_like_a_person_writes_them(seconds, text):
  assert console.duration(seconds) == text


def test_a_sweep_logs_a_few_lines_with_an_eta():
  lines = []

  class Collect(py_logging.Handler):
    def emit(self, record):
      lines.append(record.getMessage())

  handler = Collect()
  logger = py_logging.getLogger("absl")
  logger.addHandler(handler)
  previous = logging.get_verbosity()
  logging.set_verbosity(logging.INFO)
  try:
    progress = console.Progress(24, "Adam")
    for i in range(24):
      progress.step(f"lr {i}")
  finally:
    logger.removeHandler(handler)
    logging.set_verbosity(previous)
  assert lines[0] == "Adam [1/24] lr 0"
  assert lines[-1].startswith("Adam [24/24] lr 23 (ETA ")
  assert len(lines) == 9  # the first, then every third of 24


def test_a_missing_checkpoint_is_one_line_without_a_traceback(tmp_path):
  result = subprocess.run(
    [sys.executable, "-m", "lopt.evaluate", f"--workdir={tmp_path}"],
    cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 1
  assert "Traceback" not in result.stderr
  assert f"Error: No complete checkpoint in {tmp_path}" in result.stderr
