"""Process-0 metric writer: JSON lines always, TensorBoard when installed.

`MetricWriter(workdir)` appends one JSON object per logged step to
`workdir/metrics.jsonl` (the big_vision convention: greppable, and readable
with nothing but the standard library; see `read_metrics`) and writes the same
scalars as TensorBoard events under `workdir/tensorboard/`.

The events are written with the `tensorboard` package's own record writer and
protos, never with TensorFlow: `tensorboard`'s `EventFileWriter` goes through
`tensorboard.compat.tf`, which imports TensorFlow whenever it is installed
(seconds of start-up and a second ML runtime in the process). Without the
`tensorboard` package only the JSON lines are written.

Only one process of a multi-host run should write; by default that is
process 0, and the writer is a no-op everywhere else.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from collections.abc import Mapping
from typing import Any, BinaryIO, TextIO

import jax
import numpy as np
from absl import logging

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def _open(path: str, mode: str) -> TextIO | BinaryIO:
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


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


class _EventWriter:
  """Writes TensorBoard event files without TensorFlow."""

  def __init__(self, logdir: str):
    # Imported here so that lopt works without the `tensorboard` package.
    # pylint: disable=g-import-not-at-top
    from tensorboard.compat.proto import (
      event_pb2,
      summary_pb2,
      tensor_pb2,
      tensor_shape_pb2,
      types_pb2,
    )
    from tensorboard.summary.writer.record_writer import RecordWriter
    # pylint: enable=g-import-not-at-top

    self._event_pb2 = event_pb2
    self._summary_pb2 = summary_pb2
    self._tensor_pb2 = tensor_pb2
    self._tensor_shape_pb2 = tensor_shape_pb2
    self._types_pb2 = types_pb2
    if "://" not in logdir:
      os.makedirs(logdir, exist_ok=True)
    # TensorBoard reads every file with 'tfevents' in its name; time, host and
    # pid keep a restarted run from overwriting the events of the earlier one.
    name = (
      f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}"
      f".{os.getpid()}"
    )
    self.path = _join(logdir, name)
    self._file = _open(self.path, "wb")
    self._records = RecordWriter(self._file)
    self._write(self._event_pb2.Event(file_version="brain.Event:2"))

  def _write(self, event) -> None:
    event.wall_time = time.time()
    self._records.write(event.SerializeToString())
    self._records.flush()

  def _summary(self, step: int, values: list[Any]) -> None:
    summary = self._summary_pb2.Summary(value=values)
    self._write(self._event_pb2.Event(step=step, summary=summary))

  def scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    self._summary(
      step,
      [
        self._summary_pb2.Summary.Value(tag=tag, simple_value=value)
        for tag, value in scalars.items()
      ],
    )

  def text(self, step: int, tag: str, text: str) -> None:
    # The layout of the text plugin: a scalar string tensor with plugin data.
    metadata = self._summary_pb2.SummaryMetadata(
      plugin_data=self._summary_pb2.SummaryMetadata.PluginData(
        plugin_name="text"
      )
    )
    tensor = self._tensor_pb2.TensorProto(
      dtype=self._types_pb2.DT_STRING,
      string_val=[text.encode("utf-8")],
      tensor_shape=self._tensor_shape_pb2.TensorShapeProto(),
    )
    self._summary(
      step,
      [
        self._summary_pb2.Summary.Value(
          tag=tag, metadata=metadata, tensor=tensor
        )
      ],
    )

  def hparams(self, hparams: Mapping[str, Any]) -> None:
    # pylint: disable-next=g-import-not-at-top
    from tensorboard.plugins.hparams import summary_v2

    summary = summary_v2.hparams_pb(dict(hparams))
    self._write(self._event_pb2.Event(step=0, summary=summary))

  def close(self) -> None:
    self._records.close()


class MetricWriter:
  """Writes scalar metrics to `metrics.jsonl` and TensorBoard.

  Use as a context manager, or call `close()`. Every write is flushed, so a
  preempted run loses nothing that was written.
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
    self._events = None
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
      self._events = _EventWriter(_join(self.workdir, TENSORBOARD_DIR))
    except ImportError:
      logging.warning(
        "The tensorboard package is not installed: writing %s only.",
        METRICS_FILE,
      )

  @property
  def event_file(self) -> str | None:
    """The TensorBoard event file being written, if any."""
    return self._events.path if self._events else None

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
    if self._events:
      self._events.scalars(int(step), scalars)

  def write_text(self, step: int, tag: str, text: str) -> None:
    """Writes a (markdown) text note to TensorBoard's text tab.

    Args:
      step: the outer step.
      tag: the name of the note, e.g. 'config'.
      text: the note; markdown is rendered.
    """
    if self.enabled and self._events:
      self._events.text(int(step), tag, text)

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    """Writes hyperparameters to TensorBoard's hparams tab.

    Args:
      hparams: e.g. the config as a dict; nested dicts are flattened to
        'a.b' names and values other than bool, int, float and str are
        written as their JSON text.
    """
    if not (self.enabled and self._events):
      return
    if hasattr(hparams, "to_dict"):  # ml_collections.ConfigDict
      hparams = hparams.to_dict()
    flat = {}
    for name, value in _flatten(hparams).items():
      if isinstance(value, (np.generic, jax.Array)):
        value = np.asarray(value).item()
      if isinstance(value, float) and not math.isfinite(value):
        value = str(value)
      if not isinstance(value, (bool, int, float, str)):
        value = json.dumps(value, default=str)
      flat[name] = value
    self._events.hparams(flat)

  def flush(self) -> None:
    """Flushes; every write already does, so this is rarely needed."""
    if self._jsonl:
      self._jsonl.flush()

  def close(self) -> None:
    """Closes the files; later writes raise."""
    if self._jsonl:
      self._jsonl.close()
    if self._events:
      self._events.close()

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
