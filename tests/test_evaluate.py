"""Tests for lopt.evaluate: the learned optimizer against tuned Adam.

One tiny meta-training run (configs/tiny.py, about 15 s) and one evaluation
of it (2 seeds, 20 steps) are shared by the module; the command-line test
runs the entry point once more in a subprocess.
"""

import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import lopt
from configs import tiny
from lopt import evaluate, experiment
from lopt.learned import optimizers
from lopt.tasks import inner

_NUM_SEEDS = 2
_NUM_STEPS = 20
_SCHEDULES = ("constant", "linear")
_SCORES = ("mean_train_loss", "final_train_loss", "test_accuracy")
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run(tiny_run):
  """The session's finished tiny meta-training run: (config, workdir)."""
  config = tiny.get_config()
  config.outer.num_steps = tiny_run.num_steps
  return config, str(tiny_run.workdir)


@pytest.fixture(scope="module")
def evaluated(run, tmp_path_factory):
  """(output directory, returned summary) of evaluating the run."""
  _, workdir = run
  output = str(tmp_path_factory.mktemp("eval"))
  summary = evaluate.evaluate(
    workdir, num_seeds=_NUM_SEEDS, num_steps=_NUM_STEPS, output=output
  )
  return output, summary


def _load_json(output):
  with open(os.path.join(output, "eval.json")) as f:
    return json.load(f)


def test_writes_eval_json_and_png(evaluated):
  output, summary = evaluated
  saved = _load_json(output)
  assert saved == {k: v for k, v in summary.items() if k != "plot"}
  assert saved["num_seeds"] == _NUM_SEEDS
  assert saved["num_steps"] == _NUM_STEPS
  assert saved["dataset"] == "digits"
  assert summary["plot"] == os.path.join(output, "eval.png")
  with open(summary["plot"], "rb") as f:
    png = f.read()
  assert png.startswith(b"\x89PNG\r\n\x1a\n")
  assert len(png) > 10_000  # A real figure, not an empty canvas.


def test_learned_scores_and_ratios_to_the_best_adam(evaluated):
  saved = _load_json(evaluated[0])
  learned = saved["learned"]
  for name in _SCORES:
    assert math.isfinite(learned[name]), name
  assert 0.0 <= learned["test_accuracy"] <= 1.0
  assert 0.0 < learned["final_train_loss"]
  for schedule in _SCHEDULES:
    best = saved[f"adam_{schedule}"]["best"]
    assert learned[f"ratio_to_best_adam_{schedule}"] == pytest.approx(
      learned["mean_train_loss"] / best["mean_train_loss"], rel=1e-12
    )


@pytest.mark.parametrize("schedule", _SCHEDULES)
def test_adam_sweep_covers_1e4_to_1e1_and_keeps_its_best(evaluated, schedule):
  saved = _load_json(evaluated[0])
  sweep = saved[f"adam_{schedule}"]["sweep"]
  rates = sorted(point["learning_rate"] for point in sweep)
  assert len(set(rates)) == len(rates)
  assert rates[0] == pytest.approx(1e-4)
  assert rates[-1] == pytest.approx(1e-1)
  for decade in (-4, -3, -2):
    inside = [
      r
      for r in rates
      if 10.0**decade * (1 - 1e-9) <= r < 10.0 ** (decade + 1) * (1 - 1e-9)
    ]
    assert len(inside) >= 3, (decade, rates)
  for point in sweep:
    for name in _SCORES:
      assert name in point
  best = saved[f"adam_{schedule}"]["best"]
  assert best in sweep
  assert best["mean_train_loss"] == min(p["mean_train_loss"] for p in sweep)


def test_format_table_shows_every_row(evaluated):
  _, summary = evaluated
  table = evaluate.format_table(summary)
  lines = table.splitlines()
  learned = summary["learned"]
  row = next(line for line in lines if line.startswith("| learned optimizer"))
  assert f"{learned['mean_train_loss']:.4f}" in row
  assert f"{learned['final_train_loss']:.4f}" in row
  assert f"{learned['test_accuracy']:.3f}" in row
  for schedule in _SCHEDULES:
    best = summary[f"adam_{schedule}"]["best"]
    name = f"| Adam {schedule}, best lr {best['learning_rate']:g} |"
    row = next(line for line in lines if line.startswith(name))
    assert f"{best['mean_train_loss']:.4f}" in row
    ratio = learned[f"ratio_to_best_adam_{schedule}"]
    assert f"learned / best Adam {schedule}: {ratio:.3f}" in lines


def _train_models(config, tx):
  """Scores tx as a user would: inner.train_model on the held-out keys."""
  data, dataset = experiment.load_data(config)
  task = experiment.build(config, dataset).task

  @jax.jit
  def run(data):
    return jax.vmap(
      lambda key: inner.train_model(task, tx, data, key, num_steps=_NUM_STEPS)
    )(experiment.eval_keys(config))

  result = jax.tree.map(np.asarray, run(data))
  return {
    "mean_train_loss": result["losses"].mean(),
    "final_train_loss": result["losses"][:, -10:].mean(),
    "test_accuracy": result["test_accuracy"].mean(),
  }


def _eval_config(config):
  config = config.copy_and_resolve_references()
  config.eval.num_seeds = _NUM_SEEDS
  config.inner.horizon = _NUM_STEPS
  return config


@pytest.mark.parametrize("schedule", _SCHEDULES)
def test_best_adam_score_is_what_train_model_gives(run, evaluated, schedule):
  config = _eval_config(run[0])
  best = evaluated[1][f"adam_{schedule}"]["best"]
  tx = optimizers.adam_baseline(best["learning_rate"], _NUM_STEPS, schedule)
  got = _train_models(config, tx)
  for name in _SCORES:
    np.testing.assert_allclose(got[name], best[name], rtol=1e-5, err_msg=name)


def test_learned_score_is_what_train_model_gives(run, evaluated):
  config, workdir = run
  tx = lopt.load_optimizer(workdir, num_steps=_NUM_STEPS)
  got = _train_models(_eval_config(config), tx)
  learned = evaluated[1]["learned"]
  for name in _SCORES:
    np.testing.assert_allclose(
      got[name], learned[name], rtol=1e-6, err_msg=name
    )


def test_command_line_prints_the_table_and_the_plot(run, tmp_path):
  _, workdir = run
  output = tmp_path / "cli"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "lopt.evaluate",
      f"--workdir={workdir}",
      f"--num_seeds={_NUM_SEEDS}",
      f"--num_steps={_NUM_STEPS}",
      f"--output={output}",
    ],
    cwd=_REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  png = os.path.join(output, "eval.png")
  assert f"Loss curves: {png}" in proc.stdout
  assert os.path.isfile(png)
  saved = _load_json(output)
  table = evaluate.format_table(saved)
  assert table in proc.stdout
  assert f"over {_NUM_STEPS} steps, {_NUM_SEEDS} held-out seeds" in proc.stdout
