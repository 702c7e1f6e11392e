"""`lopt.compare`: budgets, step accounting, the JSON and the PNG.

Toy configs run in-process with tiny budgets. The learned-optimizer path
(train_and_evaluate on the tiny config, two outer steps) runs through the
command line, in a subprocess that shares a persistent XLA compilation cache
with the notebook tests, which meta-train the same tiny config.
"""

import importlib
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import influence_balancing, lorenz, tiny
from lopt import experiment, export, metrics, validation
from lopt.compare import learned as compare_lopt
from lopt.compare import report as compare_report
from lopt.compare import run as compare
from lopt.compare import stats as compare_stats
from lopt.compare import toy as compare_toy
from lopt.compare.budget import Budget, label_budget
from lopt.train import outer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CURVE_KEYS = {
  "outer_steps",
  "steps",
  "sequential_steps",
  "seconds",
  "meta_loss",
  "train_loss",
  "seed",
}


def small_lorenz():
  config = lorenz.get_config()
  config.system.horizon = 40
  config.estimator.num_particles = 4
  config.estimator.unroll_length = 10
  config.overrides.full_es.num_particles = 2
  config.eval.num_inits = 8
  config.eval.num_points = 5
  return config


def small_influence():
  config = influence_balancing.get_config()
  config.estimator.num_particles = 8
  config.eval.num_points = 4
  return config


@pytest.mark.slow
def test_toy_json_and_png_have_every_curve(tmp_path):
  config = small_lorenz()
  labels = ["nres", "full_es", "tbptt"]
  result = compare.compare(config, labels, [0, 1], Budget(steps=4000))
  json_path, png_path = compare_report.write(result, str(tmp_path), "lorenz")
  assert os.path.getsize(png_path) > 10_000
  with open(json_path) as f:
    saved = json.load(f)
  assert {
    "kind",
    "budget",
    "meta_loss_definition",
    "labels",
    "seeds",
    "estimators",
    "config",
    "theta_true",
  } <= set(saved)
  assert saved["kind"] == "toy" and saved["labels"] == labels
  assert list(saved["estimators"]) == labels
  start = None
  for label in labels:
    entry = saved["estimators"][label]
    assert {"settings", "runs", "summary"} <= set(entry)
    assert entry["settings"]["name"] == label
    assert [r["seed"] for r in entry["runs"]] == [0, 1]
    for run in entry["runs"]:
      assert CURVE_KEYS <= set(run)
      n = len(run["outer_steps"])
      assert n >= 3 and all(
        len(run[k]) == n for k in ("steps", "seconds", "meta_loss", "theta")
      )
      assert np.all(np.diff(run["steps"]) > 0)
      assert np.all(np.diff(run["seconds"]) > 0)
      # The budget is spent, overshooting by less than one update.
      assert 4000 <= run["steps"][-1] < 4000 + run["steps_per_update"]
      # Every estimator starts from the same theta and the same meta-loss.
      start = start or (run["theta"][0], run["meta_loss"][0])
      assert (run["theta"][0], run["meta_loss"][0]) == start
  # Per-estimator settings of the config are applied.
  entries = saved["estimators"]
  assert entries["full_es"]["settings"]["num_particles"] == 2
  assert entries["full_es"]["runs"][0]["steps_per_update"] == 2 * 2 * 40
  assert entries["tbptt"]["settings"]["learning_rate"] == 3e-4
  assert compare.settings(config, "tes")["learning_rate"] == 3e-4
  pes = compare.settings(config, "pes")
  assert (pes["boundaries"], pes["scales"]) == ((1000,), (0.1,))
  # The parallel estimate: sequential steps x one particle's step time.
  for entry in entries.values():
    for run in entry["runs"]:
      assert run["step_seconds"] > 0
      np.testing.assert_allclose(
        run["parallel_seconds"],
        np.asarray(run["sequential_steps"]) * run["step_seconds"],
      )
  summary = entries["nres"]["summary"]
  assert summary["final_meta_loss"]["num_finite"] == 2
  assert len(summary["final_theta_mean"]) == 2


@pytest.mark.parametrize(
  "label,name,unroll_length",
  [("nres", "nres", 1), ("tes", "tes", 1), ("tbptt_w10", "tbptt", 10)],
)
def test_steps_are_the_estimators_own_count(label, name, unroll_length):
  """Cumulative steps equal the sum of info["steps"] of a plain run."""
  config = small_influence()
  runner = compare_toy.ToyRunner(config, label, compare.settings(config, label))
  assert runner.settings["name"] == name
  assert runner.estimator.unroll_length == unroll_length
  run = runner.run(
    5, Budget(outer_steps=30), compare_toy.make_evaluator(config)
  )
  assert run["outer_steps"][-1] == 30
  _, history = outer.meta_train(
    runner.estimator,
    runner.optimizer,
    jnp.asarray(config.theta_init),
    jax.random.key(0),
    30,
  )
  assert run["steps"][-1] == int(np.sum(np.asarray(history["steps"], np.int64)))
  members = {"nres": 2, "tes": 3, "tbptt": 1}[name]
  assert run["steps_per_update"] == members * 8 * unroll_length
  assert run["burn_in_steps"] == 0  # lockstep particles: no burn-in
  # Sequential steps: one update advances every particle W steps at once.
  assert run["sequential_steps"] == [
    n * unroll_length for n in run["outer_steps"]
  ]


def test_seconds_budget_and_unbiased_estimators_move_theta_right():
  config = small_influence()
  config.estimator.num_particles = 64
  # NRES rather than PES: on this endless horizon PES's accumulated credit
  # grows with every step, so how far it gets in 0.5 s would depend on the
  # machine's speed.
  result = compare.compare(config, ["nres", "tbptt"], [0], Budget(seconds=0.5))
  for label, entry in result["estimators"].items():
    seconds = entry["runs"][0]["seconds"]
    # It stops once the budget is spent, not before; how many points fit in
    # it depends on the machine, so that is not asserted.
    assert seconds[-1] >= 0.5, (label, seconds)
    assert seconds == sorted(seconds) and len(seconds) >= 2
  theta = {
    label: entry["runs"][0]["theta"][-1][0]
    for label, entry in result["estimators"].items()
  }
  # From 0.5: NRES heads to -1/6, truncated backprop (W = 1) away from it.
  assert theta["nres"] < 0.5 < theta["tbptt"]


def test_labels_and_budgets_are_checked():
  config = small_influence()
  with pytest.raises(ValueError, match="not an estimator"):
    compare.settings(config, "nres2")
  config.overrides.bad = {"name": "nres", "learning_rte": 1.0}
  with pytest.raises(ValueError, match="learning_rte"):
    compare.settings(config, "bad")
  with pytest.raises(ValueError, match="budget"):
    Budget()
  with pytest.raises(ValueError, match="budget_seconds"):
    compare.compare(tiny.get_config(), ["nres"], [0], Budget(seconds=1.0))


def tiny_nres_command(tmp_path, outer_steps: int) -> list[str]:
  """`lopt.compare` of NRES on the tiny config, seed 0, into `tmp_path`."""
  return [
    sys.executable,
    "-m",
    "lopt.compare",
    "--config=configs/tiny.py",
    "--estimators=nres",
    "--seeds=0",
    f"--budget_outer_steps={outer_steps}",
    f"--output_dir={tmp_path}",
    f"--workdir={tmp_path / 'runs'}",
  ]


def test_learned_optimizer_config_from_the_command_line(tmp_path, request):
  env = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    JAX_COMPILATION_CACHE_DIR=str(
      request.config.cache.mkdir("jax_compilation_cache")
    ),
  )

  def run_compare():
    return subprocess.run(
      tiny_nres_command(tmp_path, outer_steps=2),
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
    )

  result = run_compare()
  assert result.returncode == 0, result.stderr[-3000:]
  assert "| nres |" in result.stdout
  assert os.path.getsize(tmp_path / "tiny.png") > 10_000
  saved = json.loads((tmp_path / "tiny.json").read_text())
  assert saved["kind"] == "lopt" and saved["budget"]["outer_steps"] == 2
  run = saved["estimators"]["nres"]["runs"][0]
  assert CURVE_KEYS <= set(run)
  assert run["outer_steps"] == [0, 1, 2]
  # Steps: 2 members x 4 pairs x W = 5 per outer step.
  assert run["steps_per_update"] == 40
  assert run["steps"] == [0, 40, 80]
  assert run["seconds"][0] == 0 and np.all(np.diff(run["seconds"]) > 0)
  assert all(np.isfinite(run["meta_loss"]))
  # The run was train_and_evaluate in its own workdir, with this estimator.
  assert run["workdir"] == str(tmp_path / "runs" / "nres" / "seed0")
  rows = metrics.read_metrics(run["workdir"])
  assert sum("outer_steps_per_sec" in r for r in rows) == 2
  # Seconds are the run's own training clock, logged at every checkpoint.
  logged = {r["step"]: r["train_seconds"] for r in rows if "train_seconds" in r}
  assert run["seconds"][1:] == [logged[1], logged[2]]
  assert run["sequential_steps"] == [0, 5, 10]
  assert run["step_seconds"] > 0
  assert run["parallel_seconds"] == [
    n * run["step_seconds"] for n in (0, 5, 10)
  ]
  _, _, saved_config = export.load_theta(run["workdir"])
  assert saved_config["config"]["estimator"]["name"] == "nres"
  assert saved_config["config"]["outer"]["num_steps"] == 2

  # Again: the finished run and its scored curve are reused, not redone.
  again = run_compare()
  assert again.returncode == 0, again.stderr[-3000:]
  assert "Reusing the finished, scored run" in again.stderr
  rerun = json.loads((tmp_path / "tiny.json").read_text())
  assert rerun["estimators"]["nres"]["runs"] == [run]


@pytest.mark.slow
def test_an_interrupted_run_stops_the_comparison_and_resumes(tmp_path):
  """SIGTERM mid-run: no result from a short run; the next call resumes it."""
  command = tiny_nres_command(tmp_path, outer_steps=3000)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  ckpt_dir = tmp_path / "runs" / "nres" / "seed0" / "checkpoints"
  process = subprocess.Popen(
    command, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True
  )
  deadline = time.time() + 300
  while time.time() < deadline and process.poll() is None:
    if ckpt_dir.is_dir() and any(
      (d / "commit_success.txt").exists() for d in ckpt_dir.iterdir()
    ):
      break
    time.sleep(0.05)
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=300)
  assert process.returncode != 0, stderr[-3000:]
  assert "Stopped: The run in" in stderr and "of 3000" in stderr
  assert not (tmp_path / "tiny.json").exists()

  result = subprocess.run(
    command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Resuming from the checkpoint of step" in result.stderr
  run = json.loads((tmp_path / "tiny.json").read_text())["estimators"]["nres"]
  assert run["runs"][0]["outer_steps"][-1] == 3000


def test_learned_optimizer_runs_get_every_outer_setting():
  """A label's schedule and clipping reach the run (they were once dropped)."""
  config = tiny.get_config()
  config.unlock()
  config.overrides = {"pes_decayed": {"name": "pes", "decay_steps": 4}}
  config.outer.decay_factor = 0.5
  s = compare.settings(config, "pes_decayed")
  cfg = compare_lopt.run_config(config, s, seed=3, num_steps=8, interval=2)
  assert cfg.estimator.name == "pes" and cfg.seed == 3
  assert (cfg.outer.decay_steps, cfg.outer.decay_factor) == (4, 0.5)
  assert cfg.outer.clip == config.outer.clip > 0


def test_outer_optimizer_clips_and_decays():
  tx = experiment.make_outer_optimizer(
    {
      "optimizer": "sgd",
      "learning_rate": 0.1,
      "clip": 1.0,
      "decay_steps": 2,
      "decay_factor": 0.5,
    }
  )
  theta = {"w": jnp.ones(4)}
  state = tx.init(theta)
  norms = []
  for _ in range(5):
    updates, state = tx.update({"w": jnp.full(4, 1e6)}, state, theta)
    norms.append(float(jnp.linalg.norm(updates["w"])))
  # Clipped to norm 1, times lr 0.1 halved every 2 steps (staircase).
  np.testing.assert_allclose(norms, [0.1, 0.1, 0.05, 0.05, 0.025], rtol=1e-5)


def test_piecewise_constant_schedule():
  """PES on Lorenz: 1e-5, then 1e-6 from outer step 1000 on (once)."""
  s = compare.settings(lorenz.get_config(), "pes")
  rate = experiment.make_outer_optimizer(s)
  theta = {"w": jnp.zeros(())}
  state = rate.init(theta)
  steps = []
  for step in range(1003):
    updates, state = rate.update({"w": jnp.ones(())}, state, theta)
    if step in (0, 998, 999, 1000, 1002):
      steps.append(-float(updates["w"]))
  np.testing.assert_allclose(steps, [1e-5, 1e-5, 1e-5, 1e-6, 1e-6], rtol=1e-6)
  # Scales are relative to learning_rate, not to the previous piece.
  tx = experiment.make_outer_optimizer(
    {
      "optimizer": "sgd",
      "learning_rate": 1.0,
      "boundaries": (1, 3),
      "scales": (0.5, 0.25),
    }
  )
  state = tx.init(theta)
  got = []
  for _ in range(4):
    updates, state = tx.update({"w": jnp.ones(())}, state, theta)
    got.append(-float(updates["w"]))
  assert got == [1.0, 0.5, 0.5, 0.25]


@pytest.mark.parametrize(
  "changes,field",
  [
    ({"boundaries": (1000, 10), "scales": (0.1, 0.1)}, "outer.boundaries"),
    ({"boundaries": (0,), "scales": (0.1,)}, "outer.boundaries"),
    ({"boundaries": 1000, "scales": (0.1,)}, "outer.boundaries"),
    ({"boundaries": (1000,), "scales": ()}, "outer.scales"),
    ({"boundaries": (1000,), "scales": (-0.1,)}, "outer.scales"),
    ({"boundaries": (), "scales": (0.1,)}, "outer.scales"),
    (
      {"boundaries": (1000,), "scales": (0.1,), "decay_steps": 10},
      "outer.boundaries",
    ),
  ],
)
def test_piecewise_constant_schedule_is_checked(changes, field):
  settings = {"optimizer": "sgd", "learning_rate": 1e-5, **changes}
  with pytest.raises(validation.ConfigError, match=field):
    experiment.make_outer_optimizer(settings)


@pytest.mark.slow
def test_labels_have_their_own_budgets_and_a_scale():
  config = small_lorenz()
  config.overrides.nres.budget_outer_steps = 6
  config.overrides.full_es.budget_outer_steps = 3
  result = compare.compare(
    config, ["nres", "full_es", "tes"], [0], Budget(outer_steps=4)
  )
  last = {
    label: e["runs"][0]["outer_steps"][-1]
    for label, e in result["estimators"].items()
  }
  # Labels without their own budget (tes) get the run-wide one.
  assert last == {"nres": 6, "full_es": 3, "tes": 4}
  assert result["estimators"]["nres"]["budget"]["outer_steps"] == 6
  scaled = compare.compare(
    config,
    ["nres", "full_es", "tes"],
    [0],
    Budget(outer_steps=4),
    budget_scale=0.5,
  )
  last = {
    label: e["runs"][0]["outer_steps"][-1]
    for label, e in scaled["estimators"].items()
  }
  assert last == {"nres": 3, "full_es": 2, "tes": 2}
  assert scaled["budget_scale"] == 0.5
  with pytest.raises(ValueError, match="scale"):
    Budget(steps=1).scaled(0.0)


def test_first_below_interval_and_to_target():
  # Linear between the last point above and the first below.
  assert compare_stats.first_below([0, 10, 20], [100, 80, 40], 60) == 15.0
  assert compare_stats.first_below([0, 10], [50, 40], 60) == 0.0
  assert compare_stats.first_below([0, 10], [100, 70], 60) is None
  # A non-finite point before the crossing counts as above: the first
  # finite point below is the crossing.
  assert compare_stats.first_below([0, 10, 20], [100, None, 40], 60) == 20.0
  ci = compare_stats.interval([1.0, 2.0, 3.0, None])
  # t(0.975, 2) = 4.302653; sd = 1; n = 3.
  half = 4.30265273 / np.sqrt(3)
  assert ci["n"] == 3 and ci["mean"] == 2.0
  np.testing.assert_allclose(
    [ci["low"], ci["high"]], [2 - half, 2 + half], rtol=1e-8
  )
  assert compare_stats.interval([5.0]) == {
    "mean": 5.0,
    "low": None,
    "high": None,
    "n": 1,
  }
  runs = [
    {
      "steps": [0, 10, 20],
      "seconds": [0.0, 1.0, 2.0],
      "meta_loss": [100.0, 80.0, 40.0],
    },
    {
      "steps": [0, 10, 20],
      "seconds": [0.0, 2.0, 4.0],
      "meta_loss": [100, 50, 40],
    },
    {
      "steps": [0, 10, 20],
      "seconds": [0.0, 1.0, 2.0],
      "meta_loss": [100, 90, 70],
    },
  ]
  got = compare_stats.to_target(runs, 60.0)
  assert (got["reached"], got["num_runs"]) == (2, 3)
  assert got["steps"]["values"] == pytest.approx([15.0, 8.0, None])
  assert got["seconds"]["values"] == pytest.approx([1.5, 1.6, None])
  assert got["steps"]["mean"] == pytest.approx(11.5)
  assert got["steps"]["n"] == 2
  assert "sequential_steps" not in got  # the runs have no such curve


@pytest.mark.slow
def test_targets_and_their_tables():
  config = small_lorenz()
  config.compare.targets = (1e9, 1e-9)
  config.compare.target_near_best = 0.1
  result = compare.compare(
    config, ["nres", "full_es"], [0, 1], Budget(outer_steps=4)
  )
  best = min(
    e["summary"]["final_meta_loss"]["mean"]
    for e in result["estimators"].values()
  )
  assert result["targets"][:2] == [1e9, 1e-9]
  np.testing.assert_allclose(result["targets"][2], 1.1 * best, rtol=1e-2)
  for rows in result["to_target"].values():
    high, low, _ = rows
    assert high["reached"] == 2 and low["reached"] == 0
    # Every seed starts below 1e9: zero steps, seconds, ... to get there.
    assert high["steps"]["mean"] == 0 and high["steps"]["low"] == 0
    assert set(compare_stats.AXES) <= set(high)
  table = compare_report.format_table(result)
  assert (
    "Meta-loss below 1e+09" in table and "| nres | 2/2 | 0 [0, 0] |" in table
  )
  assert "| nres | 0/2 | n/a |" in table
  assert "est. parallel seconds" in table
  # f of the way from the start to the best final loss.
  config.compare.target_progress = 0.5
  start = np.mean(
    [
      r["meta_loss"][0]
      for e in result["estimators"].values()
      for r in e["runs"]
    ]
  )
  got = compare.targets(config, result)
  np.testing.assert_allclose(got[3], start - 0.5 * (start - best), rtol=1e-2)


def toy_config_names():
  directory = os.path.join(REPO, "configs")
  names = sorted(
    f[:-3]
    for f in os.listdir(directory)
    if f.endswith(".py") and f != "__init__.py"
  )
  return [
    n
    for n in names
    if getattr(importlib.import_module(f"configs.{n}"), "KIND", None) == "toy"
  ]


def test_every_toy_config_builds_its_estimators():
  """The toy counterpart of tests/test_configs.py (which checks lopt ones)."""
  names = toy_config_names()
  assert {"lorenz", "influence_balancing"} <= set(names)
  for name in names:
    module = importlib.import_module(f"configs.{name}")
    for arg in (None, "paper"):
      config = module.get_config(arg)
      assert compare.is_toy(config) and config.kind == "toy"
      system = experiment.make_system(config)
      for label in config.compare.estimators:
        s = compare.settings(config, label)
        experiment.make_estimator(s, system)
        experiment.make_outer_optimizer(s)
      Budget(
        seconds=config.compare.get("budget_seconds", 0.0),
        steps=config.compare.get("budget_steps", 0.0),
        outer_steps=config.compare.get("budget_outer_steps", 0),
      )
  paper = lorenz.get_config("paper")
  assert (
    paper.system.horizon,
    paper.estimator.num_particles,
    paper.estimator.unroll_length,
    paper.estimator.sigma,
  ) == (2000, 200, 100, 0.04)
  lrs = {
    k: compare.settings(paper, k)["learning_rate"]
    for k in paper.compare.estimators
  }
  assert lrs == {
    "nres": 1e-5,
    "pes": 1e-5,
    "tes": 3e-4,
    "full_es": 3e-5,
    "tbptt": 3e-4,
  }
  # The paper's iteration budgets, seeds and targets.
  budgets = {
    k: label_budget(Budget(steps=1), compare.settings(paper, k))
    for k in paper.compare.estimators
  }
  assert {k: b.outer_steps for k, b in budgets.items()} == {
    "nres": 5000,
    "tes": 5000,
    "pes": 10_000,
    "tbptt": 10_000,
    "full_es": 2000,
  }
  assert len(paper.compare.seeds) >= 5 and paper.compare.targets == (60.0,)
  grid = lorenz.get_config("grid")
  for label in grid.compare.estimators:
    s = compare.settings(grid, label)
    assert label == f"{s['name']}_lr{s['learning_rate']:.0e}"
    assert s["budget_outer_steps"] == budgets[s["name"]].outer_steps
    assert s["learning_rate"] in lorenz.GRID_RATES[s["name"]]
  assert {
    compare.settings(grid, k)["name"] for k in grid.compare.estimators
  } == set(paper.compare.estimators)
