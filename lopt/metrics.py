"""Process-0 metric writer: JSON lines and TensorBoard events.

`MetricWriter(workdir)` appends one JSON object per logged step to
`workdir/metrics.jsonl` (the big_vision convention: greppable, and readable
with nothing but the standard library; see `read_metrics`) and writes the same
scalars as TensorBoard events under `workdir/tensorboard/` with tensorboardX,
a maintained event writer that needs neither TensorFlow nor PyTorch.
(`tensorboard`'s own writer and `flax.metrics.tensorboard` go through
`tensorboard.compat.tf`, which imports TensorFlow whenever it is installed;
clu's writers use `flax.metrics.tensorboard`.)

metrics.jsonl is flushed at every write, so a killed run loses nothing
written there. tensorboardX writes events from a background thread and
flushes them within `TENSORBOARD_FLUSH_SECS` and at `close()`.

Only one process of a multi-host run should write; by default that is
process 0, and the writer is a no-op everywhere else.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Mapping
from typing import Any, TextIO

import jax
import numpy as np
from absl import logging

from lopt import jsonio

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
# How stale the TensorBoard events may get; metrics.jsonl is never stale.
TENSORBOARD_FLUSH_SECS = 5

# tensorboardX names event files by the second and the host only: the pid and
# a counter keep two writers of one second (a quick restart, a test) apart.
_writer_ids = itertools.count()


def _open(path: str, mode: str) -> TextIO:
  if "://" in path:
    # gs://... workdirs on TPU pods. etils comes with orbax; note that object
    # stores may not support appending to an existing metrics.jsonl.
    from etils import epath  # pylint: disable=g-import-not-at-top

    return epath.Path(path).open(mode)
  return open(path, mode)


def _join(*parts: str) -> str:
  return "/".join(p.rstrip("/") for p in parts)


def _to_float(name: str, value: Any) -> float:
  """Converts a Python, numpy or (scalar) jax number to a Python float."""
  if isinstance(value, (str, bytes)):
    raise TypeError(f"metric {name!r} is a string: {value!r}")
  array = np.asarray(value)  # Copies a jax array to the host.
  if array.size != 1:
    raise ValueError(
      f"metric {name!r} must be a scalar, got shape {array.shape}"
    )
  return float(array.reshape(()))


def _ends_mid_line(path: str) -> bool:
  with open(path, "rb") as f:
    if f.seek(0, os.SEEK_END) == 0:
      return False
    f.seek(-1, os.SEEK_END)
    return f.read(1) != b"\n"


class MetricWriter:
  """Writes scalar metrics to `metrics.jsonl` and TensorBoard.

  Use as a context manager, or call `close()`.
  """

  def __init__(
    self, workdir: str | os.PathLike[str], *, enabled: bool | None = None
  ):
    """Creates the writer (and `workdir` if needed).

    Args:
      workdir: the run's work directory.
      enabled: whether this process writes; defaults to
        `jax.process_index() == 0`. A disabled writer accepts every call and
        does nothing.
    """
    self.workdir = os.fspath(workdir)
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._jsonl = None
    self._tensorboard = None
    if not self.enabled:
      return
    if "://" not in self.workdir:
      os.makedirs(self.workdir, exist_ok=True)
    # Appending: a resumed run continues the file of the run it resumes.
    path = _join(self.workdir, METRICS_FILE)
    self._jsonl = _open(path, "a")
    if "://" not in path and _ends_mid_line(path):
      # The previous run was killed mid-line; keep our first line separate.
      self._jsonl.write("\n")
    try:
      # Imported here: processes that do not write never pay for it.
      import tensorboardX  # pylint: disable=g-import-not-at-top

      self._tensorboard = tensorboardX.SummaryWriter(
        _join(self.workdir, TENSORBOARD_DIR),
        flush_secs=TENSORBOARD_FLUSH_SECS,
        filename_suffix=f".{os.getpid()}.{next(_writer_ids)}",
      )
    except ImportError as e:
      # No tensorboardX, or a gs:// workdir without google-cloud-storage
      # (tensorboardX's GCS writer needs it).
      logging.warning("No TensorBoard events (%s); writing %s only.", e, path)

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Writes scalar metrics of one step.

    Args:
      step: the outer step.
      metrics: name -> scalar (Python, numpy or jax number). Non-finite values
        are written as NaN / Infinity, which Python's json reads back.
    """
    if not self.enabled:
      return
    if "step" in metrics:
      raise ValueError('"step" is reserved for the step argument')
    # Converting here also moves jax scalars to the host, once.
    scalars = {name: _to_float(name, value) for name, value in metrics.items()}
    self._jsonl.write(json.dumps({"step": int(step), **scalars}) + "\n")
    self._jsonl.flush()
    if self._tensorboard:
      for name, value in scalars.items():
        self._tensorboard.add_scalar(name, value, int(step))

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    """Writes hyperparameters to TensorBoard's hparams tab.

    Call it once, at the start of a fresh run. The hparams plugin then shows
    them next to this run's scalars (it finds the metrics by itself).

    Args:
      hparams: e.g. the config (a ConfigDict or a dict); nested dicts are
        flattened to 'a.b' names, and values other than bool, int, float and
        str are written as their JSON text.
    """
    if not (self.enabled and self._tensorboard):
      return
    if hasattr(hparams, "to_dict"):  # ml_collections.ConfigDict
      hparams = hparams.to_dict()
    flat = {}
    for name, value in jsonio.flatten(hparams).items():
      if isinstance(value, (np.generic, jax.Array)):
        value = np.asarray(value).item()
      if isinstance(value, float) and not math.isfinite(value):
        value = str(value)
      if not isinstance(value, (bool, int, float, str)):
        value = json.dumps(value, default=str)
      flat[name] = value
    # Only the session-start summary, in this run's own event file:
    # `SummaryWriter.add_hparams` would write a separate run in a
    # sub-directory, with the metrics we pass it and a session end (success)
    # before the run has started.
    from tensorboardX import summary  # pylint: disable=g-import-not-at-top

    _, session_start, _ = summary.hparams(flat, {})
    self._tensorboard.file_writer.add_summary(session_start, global_step=0)

  def close(self) -> None:
    """Flushes and closes the files; later writes raise."""
    if self._jsonl:
      self._jsonl.close()
    if self._tensorboard:
      self._tensorboard.close()

  def __enter__(self) -> MetricWriter:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def read_metrics(workdir: str | os.PathLike[str]) -> list[dict[str, Any]]:
  """Reads `workdir/metrics.jsonl`.

  Args:
    workdir: the run's work directory.

  Returns:
    One dict per written line, in file order. A resumed run repeats the
    steps between its checkpoint and the interruption; keep the last line of
    each step to get the trajectory that was checkpointed. An empty list if
    the file does not exist.
  """
  path = _join(os.fspath(workdir), METRICS_FILE)
  if "://" not in path and not os.path.exists(path):
    return []
  rows = []
  with _open(path, "r") as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        # A run killed mid-write leaves a truncated line; the rest is fine.
        logging.warning("Skipping line %d of %s: %r", number, path, line)
  return rows
