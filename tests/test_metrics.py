"""Tests for lopt.metrics: JSON lines and TensorBoard events.

Events are read back with TensorBoard's own reader (`EventAccumulator`, which
imports TensorFlow when it is installed; the writer never does).
"""

import json
import os
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from lopt import metrics

REPO = pathlib.Path(__file__).resolve().parents[1]


def _events(logdir) -> event_accumulator.EventAccumulator:
  acc = event_accumulator.EventAccumulator(str(logdir))
  acc.Reload()
  return acc


def _hparams(acc: event_accumulator.EventAccumulator) -> dict:
  """The hparams of a run's session-start summary, as Python values."""
  content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
  data = plugin_data_pb2.HParamsPluginData.FromString(content)
  return {
    name: getattr(value, value.WhichOneof("kind"))
    for name, value in data.session_start_info.hparams.items()
  }


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


def test_tensorboard_scalars_and_hparams(tmp_path):
  with _write_some(tmp_path) as writer:
    writer.write_hparams(
      {
        "seed": 1,
        "outer": {"learning_rate": 1e-3, "clip": float("inf")},
        "hidden": (32, 32),
        "flag": True,
      }
    )
  acc = _events(tmp_path / "tensorboard")
  assert {"loss", "grad_norm", "resets", "lr"} <= set(acc.Tags()["scalars"])
  assert [(s.step, s.value) for s in acc.Scalars("loss")] == [
    (0, 1.0),
    (1, 0.5),
    (2, pytest.approx(1 / 3)),
  ]
  assert [(s.step, s.value) for s in acc.Scalars("grad_norm")] == [
    (0, 0.0),
    (1, 1.0),
    (2, 2.0),
  ]
  assert _hparams(acc) == {
    "seed": 1.0,
    "outer.learning_rate": 1e-3,
    "outer.clip": "inf",
    "hidden": "[32, 32]",
    "flag": True,
  }


def test_disabled_writer_writes_nothing(tmp_path):
  with metrics.MetricWriter(tmp_path / "w", enabled=False) as writer:
    writer.write(0, {"loss": 1.0})
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
  # Each writer has its own event file, even within one second, and
  # TensorBoard reads the run across both.
  assert len(os.listdir(tmp_path / "tensorboard")) == 2
  acc = _events(tmp_path / "tensorboard")
  assert [(s.step, s.value) for s in acc.Scalars("loss")] == [
    (0, 1.0),
    (1, 0.5),
  ]


def test_bad_metrics(tmp_path):
  with metrics.MetricWriter(tmp_path) as writer:
    with pytest.raises(ValueError, match="scalar"):
      writer.write(0, {"loss": np.ones(3)})
    with pytest.raises(TypeError, match="string"):
      writer.write(0, {"loss": "low"})
    with pytest.raises(ValueError, match="reserved"):
      writer.write(0, {"step": 1})


def test_writer_does_not_import_tensorflow(tmp_path):
  # In a fresh interpreter: another test may have imported TensorFlow here.
  script = (
    "import sys; from lopt import metrics; "
    f"w = metrics.MetricWriter({str(tmp_path)!r}); "
    'w.write(0, {"loss": 1.0}); w.write_hparams({"a": 1}); w.close(); '
    'print("tensorflow" in sys.modules)'
  )
  result = subprocess.run(
    [sys.executable, "-c", script],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == "False"
  assert os.listdir(tmp_path / "tensorboard")


def test_real_run_events_match_metrics_jsonl(tiny_run):
  """A real tiny meta-training run, read back with TensorBoard's reader."""
  # The run's data_dir is "" (TFDS_DATA_DIR): conftest's session directory.
  assert (pathlib.Path(os.environ["TFDS_DATA_DIR"]) / "digits").is_dir()

  rows = metrics.read_metrics(tiny_run.workdir)
  logged = [(r["step"], r["meta_loss"]) for r in rows if "meta_loss" in r]
  assert logged and logged[-1][0] == tiny_run.num_steps
  acc = _events(tiny_run.workdir / "tensorboard")
  scalars = set(acc.Tags()["scalars"])
  assert {k for r in rows for k in r} - {"step"} <= scalars
  events = [(s.step, s.value) for s in acc.Scalars("meta_loss")]
  assert [step for step, _ in events] == [step for step, _ in logged]
  np.testing.assert_allclose(
    [v for _, v in events], [v for _, v in logged], rtol=1e-6
  )
  # train writes the config as hparams at the start of a fresh run.
  hparams = _hparams(acc)
  assert hparams["task.dataset"] == "digits"
  assert hparams["outer.num_steps"] == tiny_run.num_steps
