"""Tests for lopt.metrics: JSON lines and TensorBoard events."""

import json
import os
import pathlib
import struct
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from lopt import metrics


def read_events(path: str) -> list:
  """Parses a TFRecord file of Event protos (lengths and CRCs unchecked)."""
  event_pb2 = pytest.importorskip("tensorboard.compat.proto.event_pb2")

  events = []
  with open(path, "rb") as f:
    data = f.read()
  offset = 0
  while offset < len(data):
    (length,) = struct.unpack("<Q", data[offset : offset + 8])
    offset += 12  # length and its CRC
    events.append(event_pb2.Event.FromString(data[offset : offset + length]))
    offset += length + 4  # payload and its CRC
  return events


def _write_some(workdir) -> metrics.MetricWriter:
  writer = metrics.MetricWriter(workdir)
  assert writer.enabled  # process 0 by default
  for step in range(3):
    writer.write(
      step,
      {
        "loss": jnp.float32(1.0 / (step + 1)),
        "grad_norm": np.float64(step),
        "resets": jnp.int32(step),
        "lr": 0.1,
      },
    )
  return writer


def test_jsonl_lines(tmp_path):
  with _write_some(tmp_path):
    pass
  rows = metrics.read_metrics(tmp_path)
  assert [r["step"] for r in rows] == [0, 1, 2]
  assert rows[1] == {
    "step": 1,
    "loss": 0.5,
    "grad_norm": 1.0,
    "resets": 1.0,
    "lr": 0.1,
  }
  assert all(
    type(v) is float for r in rows for k, v in r.items() if k != "step"
  )
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert json.loads(lines[2])["loss"] == pytest.approx(1 / 3)


def test_tensorboard_events_are_readable(tmp_path):
  writer = _write_some(tmp_path)
  writer.write_text(0, "notes", "**hello**")
  writer.write_hparams(
    {"seed": 1, "outer": {"learning_rate": 1e-3}, "hidden": (32, 32)}
  )
  event_file = writer.event_file
  writer.close()
  assert os.path.dirname(event_file) == str(tmp_path / "tensorboard")
  events = read_events(event_file)
  assert events[0].file_version == "brain.Event:2"
  losses = [
    (e.step, v.simple_value)
    for e in events
    for v in e.summary.value
    if v.tag == "loss"
  ]
  assert losses == [(0, 1.0), (1, 0.5), (2, pytest.approx(1 / 3))]
  plugins = {
    v.metadata.plugin_data.plugin_name for e in events for v in e.summary.value
  }
  assert {"text", "hparams"} <= plugins

  # And through TensorBoard's own reader (which imports TensorFlow if it is
  # installed; the writer never does).
  event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator"
  )

  acc = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
  acc.Reload()
  assert {"loss", "grad_norm", "resets", "lr"} <= set(acc.Tags()["scalars"])
  assert [(s.step, s.value) for s in acc.Scalars("grad_norm")] == [
    (0, 0.0),
    (1, 1.0),
    (2, 2.0),
  ]


def test_disabled_writer_writes_nothing(tmp_path):
  with metrics.MetricWriter(tmp_path / "w", enabled=False) as writer:
    writer.write(0, {"loss": 1.0})
    writer.write_text(0, "notes", "x")
    writer.write_hparams({"a": 1})
  assert not (tmp_path / "w").exists()
  assert metrics.read_metrics(tmp_path / "w") == []


def test_resume_appends_after_a_truncated_line(tmp_path):
  with metrics.MetricWriter(tmp_path) as writer:
    writer.write(0, {"loss": 1.0})
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 1, "lo')  # killed mid-write
  with metrics.MetricWriter(tmp_path) as writer:
    writer.write(1, {"loss": 0.5})
  assert metrics.read_metrics(tmp_path) == [
    {"step": 0, "loss": 1.0},
    {"step": 1, "loss": 0.5},
  ]
  # Each writer has its own event file.
  assert len(os.listdir(tmp_path / "tensorboard")) == 2


def test_bad_metrics(tmp_path):
  with metrics.MetricWriter(tmp_path) as writer:
    with pytest.raises(ValueError, match="scalar"):
      writer.write(0, {"loss": np.ones(3)})
    with pytest.raises(TypeError, match="string"):
      writer.write(0, {"loss": "low"})
    with pytest.raises(ValueError, match="reserved"):
      writer.write(0, {"step": 1})


def test_writer_does_not_import_tensorflow(tmp_path):
  pytest.importorskip("tensorboard")
  # In a fresh interpreter: another test may have imported TensorFlow here.
  script = (
    "import sys; from lopt import metrics; "
    f"w = metrics.MetricWriter({str(tmp_path)!r}); "
    'w.write(0, {"loss": 1.0}); w.write_text(0, "t", "x"); '
    'w.write_hparams({"a": 1}); w.close(); '
    'assert w.event_file; print("tensorflow" in sys.modules)'
  )
  result = subprocess.run(
    [sys.executable, "-c", script],
    cwd=pathlib.Path(__file__).resolve().parents[1],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == "False"
