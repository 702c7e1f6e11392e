"""Tests for lopt.suite: the held-out suite against per-task tuned Adam.

The real suites are only inspected (their task lists), never run: the runner
is tested on a two-task suite of 20-step models, a 2-rate Adam grid, the
untuned baselines (Adam 1e-3, Prodigy, schedule-free AdamW) and an
untrained learned optimizer, and the metrics on hand-made curves.
"""

import collections
import dataclasses
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs import task_kinds
from lopt import evaluate, experiment
from lopt.learned import optimizers
from lopt.learned.config import LOptConfig
from lopt.suite import baselines as suite_baselines
from lopt.suite import evaluation as suite
from lopt.suite import metrics as suite_metrics
from lopt.suite import nnx as suite_nnx
from lopt.suite import report as suite_report
from lopt.suite import tasks as suite_tasks
from lopt.suite.tasks import Suite, SuiteTask
from lopt.tasks import inner, models

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_GRID = ((1e-3, 3e-2), suite.SCHEDULES)

# The meta-training family of configs/generalist.py as its author described
# it (model, hidden, activation, batch, image side, T), kept here as well so
# that the check stands if that file's family changes later.
_GENERALIST_GROUPS = (
  ("mlp", (32, 32, 32), "gelu", 128, 8, 1000),
  ("mlp", (128,), "relu", 64, 8, 500),
  ("mlp", (16, 16, 16, 16), "tanh", 256, 8, 1000),
  ("mlp", (64, 64), "gelu", 32, 16, 500),
  ("cnn", (8, 16), "relu", 64, 8, 500),
  ("mlp", (48, 48), "relu", 128, 8, 2000),
)


def _signature(task_cfg, horizon):
  """A config's task as `SuiteTask.signature` writes it."""
  return (
    task_cfg["model"],
    tuple(task_cfg["hidden"]),
    task_cfg["activation"],
    task_cfg["batch_size"],
    task_cfg["image_size"] or suite_tasks.NATIVE_SIZE,
    horizon,
    task_cfg.get("dataset", "digits"),
    *(task_cfg.get(f, d) for f, d in models.MODEL_DEFAULTS.items()),
  )


def _meta_training_signatures():
  """The default task, the groups above and configs/generalist.py's family."""
  default = experiment.load_config(os.path.join(_REPO, "configs/default.py"))
  found = {_signature(default.task, default.inner.horizon)}
  found.update(
    (*g, "digits", *models.MODEL_DEFAULTS.values()) for g in _GENERALIST_GROUPS
  )
  family = []
  for name in ("generalist", "wide_generalist"):
    config = experiment.load_config(os.path.join(_REPO, f"configs/{name}.py"))
    family += [
      dict(config.task.to_dict(), **entry.to_dict())
      for entry in config.family.tasks.values()
    ]
  assert len(family) >= len(_GENERALIST_GROUPS) + 6
  for fields in family:  # a field left out is config.task's (or T's)
    found.add(_signature(fields, fields.get("horizon", config.inner.horizon)))
  # The single-task configs of the other kinds.
  for kind in task_kinds.KINDS:
    config = task_kinds.get_config(kind)
    found.add(_signature(config.task, config.inner.horizon))
  return found


@pytest.mark.parametrize("name", ["heldout", "wide"])
def test_suites_are_disjoint_from_meta_training(name):
  seen = _meta_training_signatures()
  assert len(seen) >= 16
  for spec in suite_tasks.SUITES[name].tasks:
    assert spec.signature() not in seen, spec.name


def test_the_wide_suite_covers_every_kind():
  wide = suite_tasks.WIDE
  assert len(wide.tasks) >= 20 and len(wide.seeds) >= 2
  kinds = collections.Counter(
    "regression" if t.dataset == "diabetes" else t.model for t in wide.tasks
  )
  for kind in ("transformer", "autoencoder", "regression", "resnet"):
    assert kinds[kind] >= 4, kinds
  assert kinds["nnx_mlp"] >= 2
  assert max(t.horizon for t in wide.tasks) >= 10_000
  sizes = [
    suite_tasks.build_task(t, (t.seq_len,), 256, "text").num_params
    for t in wide.tasks
    if t.model == "transformer"
  ]
  assert max(sizes) >= 100_000, sizes
  quick = suite_tasks.WIDE_QUICK
  assert {t.model for t in quick.tasks} >= {"transformer", "autoencoder"}
  assert max(t.horizon for t in quick.tasks) <= 300


def test_suites_cover_what_they_promise():
  heldout = suite_tasks.HELDOUT
  assert len(heldout.tasks) >= 10 and len(heldout.seeds) >= 3
  specs = heldout.tasks
  assert any(t.model == "nnx_mlp" for t in specs)
  assert any(t.model == "cnn" for t in specs)
  assert any(t.horizon >= 2000 for t in specs)
  assert {t.image_size for t in specs} - {0, 8}
  assert {"silu", "elu"} <= {t.activation for t in specs}
  assert {16, 512} <= {t.batch_size for t in specs}
  quick = suite_tasks.SUITES["quick"]
  assert 3 <= len(quick.tasks) <= 4 and len(quick.seeds) == 2
  assert max(t.horizon for t in quick.tasks) <= 300
  assert set(suite_tasks.SUITES) == {"heldout", "quick", "wide", "wide_quick"}


def test_specs_reject_unknown_models_activations_and_duplicates():
  with pytest.raises(ValueError, match="model must be one of"):
    SuiteTask("x", "vit", (8,), "relu")
  with pytest.raises(ValueError, match="activation must be one of"):
    SuiteTask("x", "mlp", (8,), "swish")
  t = SuiteTask("x", "mlp", (8,), "silu")
  with pytest.raises(ValueError, match="unique"):
    Suite("s", (t, t), (0, 1))


# -- metrics on hand-made curves ---------------------------------------------


def test_speedup_is_exact_on_a_monotone_curve():
  num_steps = 1000
  curve = 1.0 - 0.5 * np.arange(num_steps) / num_steps  # 1 -> 0.5005
  # Reached exactly at step 500 and, between steps, interpolated linearly.
  value, never = suite_metrics.speedup(curve, 0.75, ema=0.0)
  assert value == pytest.approx(0.5, abs=1e-12) and not never
  value, never = suite_metrics.speedup(
    curve, 0.75 - 0.5 * 0.25 / num_steps, ema=0.0
  )
  assert value == pytest.approx(500.25 / num_steps, abs=1e-12)
  assert not never
  # Smoothing only delays a decreasing curve.
  assert suite_metrics.speedup(curve, 0.75)[0] > 0.5


def test_speedup_never_reached_and_degenerate_targets():
  curve = np.linspace(2.0, 1.0, 100)
  assert suite_metrics.speedup(curve, 0.9) == (
    None,
    True,
  )  # censored: Adam slower
  assert suite_metrics.speedup(curve, 2.5) == (
    0.0,
    False,
  )  # worse than Adam's start
  assert suite_metrics.speedup(curve, math.nan) == (
    0.0,
    False,
  )  # learned diverged
  spiky = np.concatenate([[2.0, np.nan, 0.1], np.full(7, 1.5)])
  # A non-finite step never counts; the crossing is interpolated from the
  # running minimum before it (2.0) to the step that reaches 0.1.
  value, _ = suite_metrics.speedup(spiky, 0.5, ema=0.0)
  assert value == pytest.approx((1 + 1.5 / 1.9) / 10)


def _runs(per_seed_curves):
  """`train_models`-shaped output for one config from [S, T] curves."""
  losses = np.asarray(per_seed_curves, np.float64)[None]
  ones = np.ones(losses.shape[:2])
  return {"losses": losses, "test_accuracy": ones, "test_loss": ones}


def _adam_result(curves):
  out = _runs(curves)
  sweep = [
    {
      "schedule": "cosine",
      "learning_rate": 0.01,
      "per_seed": suite_metrics.per_seed_scores(out, 0),
    }
  ]
  return {
    "sweep": sweep,
    "best": 0,
    "best_curve": out["losses"][0].mean(0),
    "cached": False,
  }


def test_ratios_failures_and_speedup_of_one_task():
  spec = SuiteTask("hand", "mlp", (8,), "relu", horizon=20)
  t = np.arange(20)
  adam = _adam_result([2.0 - 0.05 * t, 2.2 - 0.05 * t])
  learned = _runs([1.0 - 0.01 * t, 1.0 - 0.01 * t])
  s = suite_metrics.score_task(spec, learned, adam, (1e-4, 0.01, 0.1))
  adam_mean = np.mean([2.0 - 0.05 * t, 2.2 - 0.05 * t])
  assert s["ratio"] == pytest.approx(np.mean(1.0 - 0.01 * t) / adam_mean)
  final = lambda c: np.mean(c[-10:])  # noqa: E731
  assert s["final_ratio"] == pytest.approx(
    final(1.0 - 0.01 * t)
    / np.mean([final(2.0 - 0.05 * t), final(2.2 - 0.05 * t)])
  )
  assert s["adam_never_reached"] and s["speedup"] is None
  assert not s["learned"]["failed"] and not s["adam"]["best_on_grid_edge"]
  # One seed ends above where it started, one is NaN: both are failures.
  bad = _runs([0.5 + 0.05 * t, np.full(20, np.nan)])
  b = suite_metrics.score_task(spec, bad, adam, (0.01, 0.1))
  assert b["learned"]["failed"] and b["learned"]["failure_rate"] == 1.0
  assert b["speedup"] == 0.0 and not b["adam_never_reached"]
  assert b["adam"]["best_on_grid_edge"]
  # The table says all of it: censored speedup, failure, divergence, edge.
  b["name"] = "bad"
  table = suite_report.format_table(
    {
      "suite": "hand",
      "learned": "theta",
      "seeds": [0, 1],
      "tasks": [s, b],
      "aggregates": suite_metrics.aggregate([s, b], num_bootstrap=10),
    }
  )
  assert "| hand | 20 | 0.9050 | 0.01, cosine | 1.6250 | 0.557 |" in table
  # Without baselines (an older report): their columns say so.
  assert "| 0.557 | 0.622 | > 1 | 1.000 / 1.000 | 1.000 | n/a | n/a |" in table
  assert "| bad | 20 | diverged (failed) | 0.01*, cosine |" in table
  assert "| worst ratio | diverged |" in table


def _baseline_result(curves, test_loss=(1.0, 1.0)):
  """`evaluation.baseline`-shaped result from [S, T] curves."""
  out = _runs(curves)
  out["test_loss"] = np.asarray([test_loss])
  return {
    "per_seed": suite_metrics.per_seed_scores(out, 0),
    "curve": out["losses"][0].mean(0),
    "cached": False,
  }


def test_tuning_free_ratio_is_against_the_better_of_the_two():
  spec = SuiteTask("hand", "mlp", (8,), "relu", horizon=20)
  t = np.arange(20)
  adam = _adam_result([2.0 - 0.05 * t, 2.2 - 0.05 * t])
  learned = _runs([1.0 - 0.01 * t, 1.0 - 0.01 * t])
  learned["test_loss"] = np.asarray([[0.5, 0.7]])  # Adam's are 1
  low, high = np.full(20, 0.8), np.full(20, 1.6)
  free = ("prodigy", "schedule_free_adamw")
  assert set(free) == set(suite_baselines.TUNING_FREE)
  for better, worse in (free, free[::-1]):
    base = {
      "adam_1e-3": _baseline_result([high, high]),
      worse: _baseline_result([0.9 * high, 0.9 * high]),
      better: _baseline_result([low, low]),
    }
    s = suite_metrics.score_task(spec, learned, adam, (1e-4, 0.1), base)
    assert s["tuning_free_best"] == better
    expected = np.mean(1.0 - 0.01 * t) / 0.8
    assert s["ratios"]["tuning_free"] == s["ratios"][better]
    assert s["ratios"][better] == pytest.approx(expected)
    assert s["ratios"][worse] < s["ratios"]["tuning_free"]
    assert s["final_ratios"]["tuning_free"] == s["final_ratios"][better]
    assert set(s["ratios"]) == {*base, "tuning_free"} == set(s["final_ratios"])
    assert s["test_loss_ratio"] == pytest.approx(0.6)
  # A diverged seed never makes one the better, even with the lowest seed.
  base["prodigy"] = _baseline_result([np.full(20, np.nan), np.full(20, 0.1)])
  base["schedule_free_adamw"] = _baseline_result([high, high])
  s = suite_metrics.score_task(spec, learned, adam, (1e-4, 0.1), base)
  assert s["tuning_free_best"] == "schedule_free_adamw"
  # Without baselines: the tuned-Adam fields only.
  s = suite_metrics.score_task(spec, learned, adam, (1e-4, 0.1))
  assert s["ratios"] == {} and s["tuning_free_best"] is None


def _full_task(rng, name):
  """A scored task with two seeds that disagree, against every baseline."""
  spec = SuiteTask(name, "mlp", (8,), "relu", horizon=20)
  t = np.arange(20)

  def curves():
    return [a - b * t for a, b in rng.uniform([1, 0.01], [2, 0.04], (2, 2))]

  adam = _adam_result(curves())
  learned = _runs(curves())
  learned["test_loss"] = rng.uniform(0.5, 1.5, (1, 2))
  base = {
    n: _baseline_result(curves(), rng.uniform(0.5, 1.5, 2))
    for n in suite_baselines.BASELINES
  }
  return suite_metrics.score_task(spec, learned, adam, (1e-4, 0.1), base)


def _assert_axes_hold_their_points(aggregates):
  """Every axis's statistics lie inside their intervals.

  Not a property of any bootstrap (a max is biased upward), but here one
  that cannot fail: with 2 seeds and at most 3 tasks, the draw that gives
  every task both seeds (mass >= 1/8 > 2.5%) reproduces each point.
  """
  for axis, stats in aggregates["axes"].items():
    for k in ("win_fraction", "median_ratio", "iqm_ratio", "worst_ratio"):
      low, high = stats[f"{k}_ci95"]
      assert low - 1e-12 <= stats[k] <= high + 1e-12, (axis, k)


def test_every_axis_aggregates_with_intervals_and_the_table_shows_them():
  rng = np.random.default_rng(1)
  tasks = [_full_task(rng, f"t{i}") for i in range(3)]
  a = suite_metrics.aggregate(tasks, num_bootstrap=400)
  assert set(a["axes"]) == set(suite_metrics.AXES)
  assert {k: a[k] for k in a["axes"]["adam"]} == a["axes"]["adam"]
  _assert_axes_hold_their_points(a)
  # Each axis aggregates its own per-task ratio.
  for axis, per_task in (
    ("adam", [t["ratio"] for t in tasks]),
    ("adam_1e-3", [t["ratios"]["adam_1e-3"] for t in tasks]),
    ("tuning_free", [t["ratios"]["tuning_free"] for t in tasks]),
    ("final", [t["final_ratio"] for t in tasks]),
    ("test_loss", [t["test_loss_ratio"] for t in tasks]),
  ):
    assert a["axes"][axis]["median_ratio"] == pytest.approx(np.median(per_task))
    assert a["axes"][axis]["worst_ratio"] == pytest.approx(max(per_task))
    assert all(t["ci95"][axis][0] <= t["ci95"][axis][1] for t in tasks)
  summary = {
    "suite": "hand",
    "learned": "theta",
    "seeds": [0, 1],
    "tasks": tasks,
    "aggregates": a,
    "baselines": {"tuning_free": list(suite_baselines.TUNING_FREE)},
  }
  table = suite_report.format_table(summary)
  assert (
    "| test loss ratio | ratio vs Adam 1e-3 | ratio vs best tuning-free |"
    in (table)
  )
  t = tasks[0]
  assert (
    f"| {t['test_loss_ratio']:.3f} | {t['ratios']['adam_1e-3']:.3f} | "
    f"{t['ratios']['tuning_free']:.3f} ({t['tuning_free_best']}) |"
  ) in table
  free = a["axes"]["tuning_free"]
  assert (
    f"| best tuning-free: mean train loss | {free['win_fraction']:.2f} "
    f"[{free['win_fraction_ci95'][0]:.2f}, "
  ) in table
  for label in suite_report.AXIS_LABELS.values():
    assert f"| {label} |" in table
  assert "Against the best tuning-free optimizer: wins" in (
    suite_report.summary_line(summary)
  )


def _scored(ratios, never=False):
  """Task sections with per-seed means that give `ratios` exactly."""
  return [
    {
      "ratio": r,
      "speedup": None if never else 0.5,
      "adam_never_reached": never,
      "learned": {"per_seed_mean_train_loss": [r, r, r], "failed": False},
      "adam": {"best": {"per_seed_mean_train_loss": [1.0, 1.0, 1.0]}},
    }
    for r in ratios
  ]


def test_aggregates_and_their_bootstrap_intervals():
  ratios = [0.5, 0.8, 0.9, 1.2, 3.0, 0.7, 0.95, 1.1]
  a = suite_metrics.aggregate(_scored(ratios), num_bootstrap=200)
  assert a["win_fraction"] == 5 / 8
  assert a["median_ratio"] == pytest.approx(np.median(ratios))
  assert a["worst_ratio"] == 3.0
  assert a["iqm_ratio"] == pytest.approx(np.mean(sorted(ratios)[2:6]))
  # Seeds that agree leave nothing to resample: degenerate intervals.
  assert a["median_ratio_ci95"] == pytest.approx([a["median_ratio"]] * 2)
  assert a["median_speedup"] == 0.5 and a["speedup_win_fraction"] == 0.0
  a = suite_metrics.aggregate(_scored([0.9, 1.1], never=True), num_bootstrap=10)
  assert a["speedup_win_fraction"] == 1.0 and a["median_speedup"] is None
  assert a["median_speedup_censored"]
  # Seeds that disagree give a real interval around the estimate.
  tasks = _scored([1.0, 0.5])
  tasks[0]["learned"]["per_seed_mean_train_loss"] = [0.6, 1.0, 1.4]
  a = suite_metrics.aggregate(tasks, num_bootstrap=500)
  low, high = a["worst_ratio_ci95"]
  assert low < 1.0 < high and tasks[0]["ratio_ci95"][0] < 1.0
  assert set(a["axes"]) == {"adam"}  # no baselines, no other axes


# -- Adam: the grid and its cache ---------------------------------------------


def _sweep(means_by_config):
  return [
    {
      "schedule": s,
      "learning_rate": lr,
      "per_seed": {"mean_train_loss": np.asarray(m, np.float64)},
    }
    for (s, lr), m in means_by_config.items()
  ]


def test_best_adam_is_any_schedule_and_never_a_non_finite_run():
  sweep = _sweep(
    {
      ("constant", 0.01): [0.30, 0.30],
      ("linear", 0.01): [0.20, 0.22],
      ("cosine", 0.01): [0.19, 0.20],
      ("cosine", 0.1): [np.nan, 0.01],  # lowest seed, but one run diverged
      ("linear", 0.1): [-np.inf, 0.5],
    }
  )
  assert suite.choose_best(sweep) == 2
  assert suite.choose_best(sweep[3:]) in (0, 1)  # all non-finite: any


_TINY = Suite(
  "tiny",
  (
    SuiteTask("mlp8_relu", "mlp", (8,), "relu", batch_size=16, horizon=20),
    SuiteTask("nnx8_silu", "nnx_mlp", (8,), "silu", batch_size=16, horizon=20),
  ),
  seeds=(0, 1),
)


@pytest.fixture(scope="module")
def digits():
  return suite.load_data(_TINY.tasks[0])


def test_adam_grid_scores_every_config_and_keeps_the_best(digits):
  data, ds = digits
  spec = _TINY.tasks[0]
  task = suite_tasks.build_task(spec, ds.image_shape, ds.num_classes)
  keys = suite_tasks.task_keys(_TINY.seeds)
  out = suite.run_adam_grid(spec, task, data, keys, *_GRID)
  configs = [(e["schedule"], e["learning_rate"]) for e in out["sweep"]]
  assert configs == [(s, lr) for s in _GRID[1] for lr in _GRID[0]]
  means = [e["per_seed"]["mean_train_loss"].mean() for e in out["sweep"]]
  assert out["best"] == int(np.argmin(means))
  # The vmapped grid trains what one plain call of train_model trains.
  schedule, lr = configs[-1]
  one = inner.train_model(task, suite.adam(lr, 20, schedule), data, keys[1], 20)
  np.testing.assert_allclose(
    out["sweep"][-1]["per_seed"]["mean_train_loss"][1],
    np.mean(one["losses"]),
    rtol=1e-5,
  )


def test_train_model_traces_the_optimizer_state_without_changing_the_run(
  digits,
):
  """`trace` returns one entry per step, taken after that step's update:
  here the adaptive kind's step count and per-tensor rate log-scales."""
  data, ds = digits
  task = suite_tasks.build_task(_TINY.tasks[0], ds.image_shape, ds.num_classes)
  cfg = LOptConfig(kind="adaptive")
  tx = optimizers.learned_optimizer(
    optimizers.init_theta(cfg, jax.random.key(0)), cfg, 20
  )
  key = jax.random.key(1)
  plain = inner.train_model(task, tx, data, key, 20)
  traced = inner.train_model(
    task,
    tx,
    data,
    key,
    20,
    trace=lambda state: (state.count, state.log_lr_scale),
  )
  np.testing.assert_array_equal(traced["losses"], plain["losses"])
  counts, scales = traced["trace"]
  np.testing.assert_array_equal(counts, np.arange(1, 21))
  for leaf in jax.tree.leaves(scales):
    assert leaf.shape == (20,)
  # The rates adapt: some tensor's log-scale moves off 0 within the run.
  assert any(np.abs(leaf[-1]) > 0 for leaf in jax.tree.leaves(scales))
  assert "trace" not in plain


def test_adam_cache_hit_and_missed_when_anything_changes(tmp_path, monkeypatch):
  calls = []

  def fake_grid(spec, task, data, keys, learning_rates, schedules):
    """Instead of training: numbers (one NaN) that must survive the cache."""
    calls.append((spec, len(keys), tuple(learning_rates), tuple(schedules)))
    per_seed = {"mean_train_loss": np.asarray([0.5, np.nan])}
    sweep = [
      {"schedule": "linear", "learning_rate": 0.01, "per_seed": per_seed}
    ]
    curve = np.linspace(2.0, 0.1, spec.horizon)
    return {"sweep": sweep, "best": 0, "best_curve": curve}

  monkeypatch.setattr(suite, "run_adam_grid", fake_grid)
  spec = _TINY.tasks[0]

  def tuned(spec=spec, seeds=(0, 1), grid=_GRID):
    return suite.tuned_adam(spec, None, None, seeds, grid, str(tmp_path))

  first = tuned()
  second = tuned()
  assert len(calls) == 1 and not first["cached"] and second["cached"]
  assert second["best"] == first["best"] == 0
  np.testing.assert_allclose(second["best_curve"], first["best_curve"])
  got = second["sweep"][0]["per_seed"]["mean_train_loss"]
  assert got[0] == 0.5 and np.isnan(got[1])  # null in the JSON, NaN again
  tuned(seeds=(0, 2))
  tuned(spec=dataclasses.replace(spec, horizon=30))
  tuned(spec=dataclasses.replace(spec, activation="elu"))
  tuned(grid=((1e-3, 3e-2), ("constant", "linear")))
  tuned(grid=((1e-3, 1e-2), suite.SCHEDULES))
  assert len(calls) == 6
  tuned(seeds=(0, 2))  # every earlier key is still a hit
  tuned()
  assert len(calls) == 6
  monkeypatch.setattr(suite, "ADAM_CACHE_VERSION", suite.ADAM_CACHE_VERSION + 1)
  tuned()
  assert len(calls) == 7
  assert len(os.listdir(tmp_path)) == 7  # one file per key, nothing else
  # A garbled file is recomputed and rewritten, not trusted or fatal.
  digest = suite.adam_cache_key(spec, (0, 1), *_GRID)
  (tmp_path / f"{spec.name}-{digest}.json").write_text("{not json")
  tuned()
  tuned()
  assert len(calls) == 8


# -- the runner and the CLI ---------------------------------------------------


def _untrained():
  cfg = LOptConfig(kind="nominal", hidden=(4,))
  return optimizers.init_theta(cfg, jax.random.key(0)), cfg


@pytest.fixture(scope="module")
def scored_twice(tmp_path_factory):
  """One task scored twice with one cache: (first, second, what the first
  trained, what both trained, the cache directory)."""
  trained = []
  cache = tmp_path_factory.mktemp("suite_cache")
  one_task = Suite("one", _TINY.tasks[:1], _TINY.seeds)
  grid, base = suite.run_adam_grid, suite.run_baseline
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(
      suite, "run_adam_grid", lambda *a: trained.append("adam") or grid(*a)
    )
    patch.setattr(
      suite, "run_baseline", lambda *a: trained.append(a[-1]) or base(*a)
    )

    def run():
      return suite.evaluate_suite(
        _untrained(),
        one_task,
        adam_cache_dir=str(cache),
        learning_rates=_GRID[0],
        schedules=("constant",),
        num_bootstrap=50,
      )

    first = run()
    by_first = list(trained)
    second = run()
  return first, second, by_first, trained, cache


def test_evaluate_suite_trains_adam_and_baselines_once_then_reads_the_cache(
  scored_twice,
):
  first, second, by_first, trained, cache = scored_twice
  assert by_first == ["adam", *suite_baselines.BASELINES]
  assert trained == by_first  # the second run trained none of them
  (t,), (t2,) = first["tasks"], second["tasks"]
  assert not t["adam"]["cached"] and t2["adam"]["cached"]
  for name in suite_baselines.BASELINES:
    assert (
      not t["baselines"][name]["cached"] and t2["baselines"][name]["cached"]
    )
  assert t2["seconds"]["baselines"] == 0.0 < t["seconds"]["baselines"]
  files = sorted(os.listdir(cache))
  assert len(files) == 1 + len(suite_baselines.BASELINES)
  for name in suite_baselines.BASELINES:
    assert sum(f.startswith(f"mlp8_relu-{name}-") for f in files) == 1
  assert second["aggregates"] == first["aggregates"]
  assert second["baselines"]["names"] == list(suite_baselines.BASELINES)
  assert "outputs" not in first
  assert math.isfinite(t["ratio"]) and 0 <= t["learned"]["test_accuracy"] <= 1
  assert len(t["curves"]["learned"]) == 20
  assert t["num_params"] == 64 * 8 + 8 + 8 * 10 + 10
  # Adam 1e-3 trains what the grid's constant 1e-3 trains: same inits and
  # batches for every optimizer.
  (grid_1e3,) = [e for e in t["adam"]["sweep"] if e["learning_rate"] == 1e-3]
  assert t["baselines"]["adam_1e-3"]["mean_train_loss"] == pytest.approx(
    grid_1e3["mean_train_loss"], rel=1e-5
  )
  # The tuning-free reference is the better of the two here too.
  free = {
    n: t["baselines"][n]["mean_train_loss"]
    for n in ("prodigy", "schedule_free_adamw")
  }
  assert t["tuning_free_best"] == min(free, key=free.get)
  assert t["ratios"]["tuning_free"] == t["ratios"][t["tuning_free_best"]]
  assert math.isfinite(t["test_loss_ratio"])
  assert set(first["aggregates"]["axes"]) == set(suite_metrics.AXES)
  _assert_axes_hold_their_points(first["aggregates"])
  with pytest.raises(ValueError, match="Unknown baselines"):
    suite.evaluate_suite(_untrained(), "quick", baselines=("adamw",))


def test_schedule_free_is_tested_at_its_averaged_iterate(scored_twice, digits):
  first = scored_twice[0]
  data, ds = digits
  task = suite_tasks.build_task(_TINY.tasks[0], ds.image_shape, ds.num_classes)
  key = suite_tasks.task_keys(_TINY.seeds)[1]
  tx = optax.contrib.schedule_free_adamw()
  raw = inner.train_model(task, tx, data, key, 20)
  averaged = inner.train_model(
    task, tx, data, key, 20, eval_params=optax.contrib.schedule_free_eval_params
  )
  # The training losses stay those where the gradient is taken.
  np.testing.assert_array_equal(averaged["losses"], raw["losses"])
  raw_loss, avg_loss = float(raw["test_loss"]), float(averaged["test_loss"])
  # The two points differ 100x more than the tolerance below: the check
  # tells them apart.
  assert abs(raw_loss / avg_loss - 1) > 1e-3
  got = first["tasks"][0]["baselines"]["schedule_free_adamw"]
  assert got["per_seed_test_loss"][1] == pytest.approx(avg_loss, rel=1e-5)


def test_baseline_eval_params_find_a_schedule_free_state_anywhere():
  params = {"w": jnp.arange(3.0)}
  grads = {"w": jnp.ones(3)}
  for tx, inside in (
    (optax.contrib.schedule_free_adamw(), lambda s: s),
    (
      optax.chain(optax.clip(1.0), optax.contrib.schedule_free_adamw()),
      lambda s: s[1],
    ),
  ):
    state = tx.init(params)
    for _ in range(3):
      updates, state = tx.update(grads, state, params)
      params = optax.apply_updates(params, updates)
    got = suite_baselines.eval_params(state, params)
    want = optax.contrib.schedule_free_eval_params(inside(state), params)
    np.testing.assert_array_equal(got["w"], want["w"])
    assert not np.allclose(got["w"], params["w"])
  adam = optax.adam(1e-3)
  assert suite_baselines.eval_params(adam.init(params), params) is params


def test_baseline_cache_hit_and_missed_when_anything_changes(
  tmp_path, monkeypatch
):
  calls = []

  def fake_baseline(spec, task, data, keys, name):
    calls.append((spec, len(keys), name))
    per_seed = {"mean_train_loss": np.asarray([0.5, np.nan])}
    return {"name": name, "per_seed": per_seed, "curve": np.ones(spec.horizon)}

  monkeypatch.setattr(suite, "run_baseline", fake_baseline)
  spec = _TINY.tasks[0]

  def run(name="prodigy", spec=spec, seeds=(0, 1)):
    return suite.baseline(spec, None, None, seeds, name, str(tmp_path))

  first, second = run(), run()
  assert len(calls) == 1 and not first["cached"] and second["cached"]
  got = second["per_seed"]["mean_train_loss"]
  assert got[0] == 0.5 and np.isnan(got[1])
  np.testing.assert_array_equal(second["curve"], first["curve"])
  run(name="schedule_free_adamw")
  run(seeds=(0, 2))
  run(spec=dataclasses.replace(spec, horizon=30))
  assert len(calls) == 4
  monkeypatch.setattr(suite, "ADAM_CACHE_VERSION", suite.ADAM_CACHE_VERSION + 1)
  run()  # Adam's version is not the baselines'
  assert len(calls) == 4
  monkeypatch.setattr(
    suite, "BASELINE_CACHE_VERSION", suite.BASELINE_CACHE_VERSION + 1
  )
  run()
  assert len(calls) == 5 and len(os.listdir(tmp_path)) == 5


def test_the_runner_trains_the_nnx_task_with_the_learned_optimizer(digits):
  data, ds = digits
  spec = _TINY.tasks[1]
  task = suite_tasks.build_task(spec, ds.image_shape, ds.num_classes)
  theta, cfg = _untrained()
  keys = suite_tasks.task_keys(_TINY.seeds)
  out = suite.train_models(
    task,
    lambda th: optimizers.learned_optimizer(th, cfg, 20),
    data,
    keys,
    20,
    jax.tree.map(lambda x: x[None], theta),
  )
  assert out["losses"].shape == (1, 2, 20)
  losses = out["losses"][0]
  assert np.isfinite(losses).all() and (losses[:, -5:] < losses[:, :1]).all()
  assert not np.allclose(losses[0], losses[1])  # two seeds, two models


def test_nnx_task_trains_like_nnx_optimizer_does():
  """The NNX task's pure path equals nnx.Optimizer with the learned tx."""
  theta, cfg = _untrained()
  tx = optimizers.learned_optimizer(theta, cfg, 20)
  task = suite_nnx.NNXTask("n", (8, 8, 1), (8,), 10, "silu", 4)
  x = jax.random.uniform(jax.random.key(1), (4, 8, 8, 1))
  y = jnp.arange(4)
  params = task.init(jax.random.key(2))
  assert isinstance(params, nnx.State)

  @jax.jit
  def pure_step(params):
    grads = jax.grad(task.loss)(params, x, y)
    updates, _ = tx.update(grads, tx.init(params), params)
    return optax.apply_updates(params, updates)

  @nnx.jit
  def nnx_step(model, opt):
    opt.update(model, nnx.grad(lambda m: task.loss(nnx.state(m), x, y))(model))

  before = [np.array(a) for a in jax.tree.leaves(params)]
  pure = pure_step(params)
  model = nnx.merge(task.graphdef, params)
  nnx_step(model, nnx.Optimizer(model, tx, wrt=nnx.Param))
  moved = jax.tree.leaves(nnx.state(model))
  assert any(not np.allclose(a, b) for a, b in zip(moved, before))
  for a, b in zip(moved, jax.tree.leaves(pure)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_cli_suite_writes_json_md_png_and_prints_the_table(
  tiny_run, tmp_path, monkeypatch, capsys
):
  monkeypatch.setitem(
    suite_tasks.SUITES, "tiny", Suite("tiny", _TINY.tasks[:1], _TINY.seeds)
  )
  output = tmp_path / "out"
  evaluate.main(
    {
      "workdir": str(tiny_run.workdir),
      "suite": "tiny",
      "output": str(output),
      "adam_cache_dir": str(tmp_path / "cache"),
      "num_seeds": 8,
      "num_steps": 0,
    }
  )
  printed = capsys.readouterr().out
  assert "| task | T | learned mean loss |" in printed
  assert "| ratio vs Adam 1e-3 | ratio vs best tuning-free |" in printed
  assert "| mlp8_relu | 20 |" in printed
  assert "| best tuning-free: mean train loss |" in printed
  assert "Suite tiny: learned beats tuned Adam on" in printed
  assert "Against the best tuning-free optimizer: wins" in printed
  with open(output / "suite_tiny.json") as f:
    saved = json.load(f)
  assert [t["name"] for t in saved["tasks"]] == ["mlp8_relu"]
  assert saved["adam_grid"]["learning_rates"] == list(suite.LEARNING_RATES)
  assert len(saved["adam_grid"]["learning_rates"]) >= 8
  assert 0 <= saved["aggregates"]["win_fraction"] <= 1
  best = saved["tasks"][0]["adam"]["best"]
  assert best["schedule"] in suite.SCHEDULES
  assert best["learning_rate"] in suite.LEARNING_RATES
  assert str(output / "suite_tiny.md") in printed
  md = (output / "suite_tiny.md").read_text()
  assert md.startswith("Suite `tiny`") and "| median ratio |" in md
  png = (output / "suite_tiny.png").read_bytes()
  assert png.startswith(b"\x89PNG") and len(png) > 10_000
  assert saved["tasks"][0]["tuning_free_best"] in suite_baselines.TUNING_FREE
  assert set(saved["aggregates"]["axes"]) == set(suite_metrics.AXES)
  cached = os.listdir(tmp_path / "cache")
  assert len(cached) == 1 + len(suite_baselines.BASELINES)


def test_cli_rejects_an_unknown_suite_by_name():
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "lopt.evaluate",
      "--workdir=/nonexistent",
      "--suite=helout",
    ],
    cwd=_REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == (
    "Config error: --suite = 'helout' is invalid: it must be one of "
    "['heldout', 'quick', 'wide', 'wide_quick']"
  )
