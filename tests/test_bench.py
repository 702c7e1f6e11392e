"""The benchmark's plumbing and its cost model; the compilation cache.

Smoke tests: they assert no timings (speed is measured by the benchmark,
not by tests), only that the figures are there and consistent.
"""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from test_family import batch_count_leaves

from lopt import experiment
from lopt.bench import cases as bench_cases
from lopt.bench import family as bench_family
from lopt.bench import kinds as bench_kinds
from lopt.bench import measure
from lopt.bench import run as bench
from lopt.learned.config import LOptConfig
from lopt.tasks import family, models

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_inner_step_bytes_by_hand():
  # configs/tiny.py: MLP 64-8-10 on 8x8 digits, batch 16; nominal learned
  # optimizer with one hidden layer of 4. P = 64*8 + 8 + 8*10 + 10 = 610.
  task = models.make_task(
    "mlp", hidden=(8,), num_classes=10, input_shape=(8, 8, 1), batch_size=16
  )
  lopt = LOptConfig(kind="nominal", hidden=(4,))
  assert task.num_params == 610
  expected = {
    "inner_data": 16 * (64 + 1),  # the batch and its labels
    "inner_model": 2 * 610 + 610,  # params forward and backward, gradient
    # The two layers' outputs (16 x 8, 16 x 10), forward and backward.
    "inner_activations": 4 * 16 * (8 + 10),
    # Read p, g, 6 momenta, v; write p, 6 momenta, v.
    "lopt_state": (1 + 1 + 6 + 1) * 610 + (1 + 6 + 1) * 610,
    # 10 feature rows, 4 hidden, 2 outputs per parameter; written and read.
    "lopt_activations": 2 * 610 * (10 + 4 + 2),
  }
  expected = {k: 4 * v for k, v in expected.items()}
  moved = measure.inner_step_bytes(task, lopt)
  assert {k: moved[k] for k in expected} == expected
  assert moved["min_bytes"] == sum(expected.values()) == 135_648
  assert moved["state_bytes"] == 4 * (1040 + 1830 + 10370)
  # The adaptive kind: its MLP runs on x and -x (twice the activations) and
  # it keeps the last step (one more state array read and written); with
  # bfloat16 activations the hidden layer's take 2 bytes an element.
  adaptive = measure.inner_step_bytes(
    task, LOptConfig(kind="adaptive", hidden=(4,))
  )
  assert adaptive["lopt_activations"] == 2 * expected["lopt_activations"]
  assert adaptive["lopt_state"] == expected["lopt_state"] + 4 * 2 * 610
  half = measure.inner_step_bytes(
    task, LOptConfig(kind="nominal", hidden=(4,), activation_dtype="bfloat16")
  )
  assert half["lopt_activations"] == 2 * 610 * (4 * (10 + 2) + 2 * 4)


def test_roofline_is_consistent():
  case = {
    "flops_per_inner_step": 2e6,
    "min_bytes_per_inner_step": 1e6,
    "inner_steps_per_sec": 1000.0,
  }
  case["achieved_gflops"] = 2.0
  case["achieved_gbs"] = 1.0
  measure.add_roofline(case, peak_gflops=100.0, bandwidth_gbs=10.0)
  # 2 FLOP/byte x 10 GB/s = 20 GFLOP/s < 100: memory bound, at 10 %.
  assert case["arithmetic_intensity"] == 2.0
  assert case["bound"] == "memory"
  assert case["roofline_gflops"] == pytest.approx(20.0)
  assert case["roofline_fraction"] == pytest.approx(0.1)
  assert case["memory_bandwidth_fraction"] == pytest.approx(0.1)
  measure.add_roofline(case, peak_gflops=10.0, bandwidth_gbs=10.0)
  assert case["bound"] == "compute"
  assert case["roofline_fraction"] == pytest.approx(0.2)


def test_linear_fit_recovers_a_line_and_its_largest_relative_residual():
  fit = bench_cases.linear_fit([1, 2, 3, 4], [12.0, 14.0, 16.0, 18.0])
  assert fit["slope"] == pytest.approx(2.0)
  assert fit["intercept"] == pytest.approx(10.0)
  assert fit["max_relative_residual"] == pytest.approx(0.0, abs=1e-12)
  # Symmetric bumps on a line leave it the least-squares fit: y = 10 + 2x
  # with +1, -1, -1, +1 (orthogonal to 1 and x). Residuals 1/13, 1/13,
  # 1/15, 1/19 of y: the largest is 1/13.
  fit = bench_cases.linear_fit([1, 2, 3, 4], [13.0, 13.0, 15.0, 19.0])
  assert fit["slope"] == pytest.approx(2.0)
  assert fit["intercept"] == pytest.approx(10.0)
  assert fit["max_relative_residual"] == pytest.approx(1 / 13)


def _single_task_config(spec: family.TaskSpec, lopt_kind: str):
  """configs/tiny.py set to one family task's fields, without a family."""
  config = experiment.load_config(os.path.join(REPO, "configs", "tiny.py"))
  config.lopt.kind = lopt_kind
  for field in ("model", "activation", "batch_size", "dataset", "image_size"):
    config.task[field] = getattr(spec, field)
  config.task.hidden = spec.hidden
  config.inner.horizon = spec.horizon
  config.estimator.num_particles = spec.num_particles
  return config


def test_a_family_run_state_is_its_groups_states_plus_the_shared_part():
  # configs/tiny_family.py: an MLP, a deeper tanh MLP and a CNN on 4x4
  # inputs, each group's state counted from jax.eval_shape of init.
  config = experiment.load_config(
    os.path.join(REPO, "configs", "tiny_family.py")
  )
  config.family.normalizer = "none"
  exp, _, _, abstract = bench_family.abstract_run_state(config)
  counted = bench_family.run_state_bytes(exp, abstract)
  assert set(counted["groups"]) == {"cnn", "deep_tanh", "mlp"}
  assert counted["total"] == counted["shared"] + sum(counted["groups"].values())
  # Each group holds what the same task alone would plus its particles'
  # drawn batch sizes (the family's batch-fraction augmentation, int32s),
  # and theta, the outer optimizer's state, the step and the key are the
  # same as alone.
  assert family.resolve(config).batch_fractions != (1.0,)
  for spec in family.resolve(config).specs:
    alone_exp, _, _, alone = bench_family.abstract_run_state(
      _single_task_config(spec, config.lopt.kind)
    )
    single = bench_family.run_state_bytes(alone_exp, alone)
    counts = batch_count_leaves(abstract["estimator_state"][spec.name])
    assert counts and all(c.dtype == jnp.int32 for c in counts)
    extra = bench_cases.tree_bytes(counts)
    assert extra >= 4 * spec.num_particles
    assert single["groups"] == {
      family.SINGLE: counted["groups"][spec.name] - extra
    }
    assert single["shared"] == counted["shared"]
  # By hand: the key is 2 uint32 words, the step an int32.
  assert bench_cases.tree_bytes(
    {"rng": jax.random.key(0), "step": jnp.zeros((), jnp.int32)}
  ) == (2 * 4 + 4)


@pytest.mark.parametrize(
  "quick, devices, timed, memory",
  [
    (True, 1, 2, [1, 2, 4]),
    (False, 1, 16, [8, 16, 32]),
    (False, 8, 16, [8, 16, 32]),
    (False, 3, 18, [9, 18, 36]),
    (True, 8, 16, [8, 16, 32]),
  ],
)
def test_the_family_plan_divides_every_group_over_the_devices(
  quick, devices, timed, memory
):
  spec = bench.family_plan(quick, "c.py", devices)
  assert spec["particles"] == timed and spec["memory_particles"] == memory
  assert spec["compile_memory"] is not quick
  assert spec["kind"] in bench.CASES


# Tens of seconds: two steps functions of a three-group family compiled.
@pytest.mark.slow
def test_the_family_case_writes_its_figures_and_table(tmp_path):
  spec = dict(
    config=os.path.join(REPO, "configs", "tiny.py"),
    particles=2,
    memory_particles=[1, 2, 4],
    unroll_length=2,
    steps_per_dispatch=1,
    reps=2,
    compile_memory=False,
  )
  result = json.loads(json.dumps(bench_family.family_case(spec)))  # JSON-able
  assert result["tasks"] == ["gelu", "relu", "tanh"]
  t = result["throughput"]
  single, fam = t["single"], t["family"]
  assert set(fam["groups"]) == set(result["tasks"])
  assert set(single["groups"]) == {family.SINGLE}
  # As many trajectories and inner steps per dispatch: 3 x 2 particles.
  assert single["num_particles"] == fam["num_particles"] == 6
  assert single["inner_steps_per_dispatch"] == fam["inner_steps_per_dispatch"]
  assert fam["inner_steps_per_dispatch"] == 2 * 6 * 2 * 1
  for program in (single, fam):
    for key in (
      "compile_seconds",
      "inner_steps_per_sec",
      "flops_per_inner_step",
    ):
      assert program[key] > 0 and math.isfinite(program[key]), key
    assert len(program["dispatch_seconds"]) == 2
    assert (
      program["inner_steps_per_sec_min"]
      <= program["inner_steps_per_sec"]
      <= program["inner_steps_per_sec_max"]
    )
    assert program["xla_memory"]["total_bytes"] > 0
  assert t["ratio"] == pytest.approx(
    fam["inner_steps_per_sec"] / single["inner_steps_per_sec"]
  )
  assert t["ratio_min"] <= t["ratio_max"] and len(t["ratio_paired"]) == 2
  assert 0.8 < t["flops_ratio"] < 1.2  # the same shapes and matmuls
  assert t["meets_target"] == (t["ratio"] >= 0.85)
  # The same shapes: the family's state at 3 x 2 particles is the single
  # task's at 6, and it is linear in the particle count, exactly.
  assert fam["state_bytes"] == {
    **single["state_bytes"],
    "groups": {
      name: single["state_bytes"]["groups"][family.SINGLE] // 3
      for name in result["tasks"]
    },
  }
  memory = result["memory"]
  points = memory["points"]
  assert [p["total_particles"] for p in points] == [3, 6, 12]
  for p in points:
    assert p["state_bytes"]["total"] == p["single_state_bytes"]
  assert points[1]["state_bytes"] == fam["state_bytes"]
  assert memory["state_fit"]["max_relative_residual"] < 1e-9
  assert memory["state_fit"]["slope"] * 6 == pytest.approx(
    sum(fam["state_bytes"]["groups"].values())
  )
  # XLA's analysis only at the timed count without compile_memory: no fit.
  assert [p["xla_memory"] is not None for p in points] == [False, True, False]
  assert memory["xla_total_fit"] is None and memory["xla_temp_fit"] is None
  lines = "\n".join(bench._family_lines(result))
  assert "family/one task:" in lines and "run state:" in lines


# Minutes: every section of the bench, each case in its own process.
@pytest.mark.slow
def test_quick_bench_with_a_flag_sized_case_writes_the_documented_json(
  tmp_path,
):
  output = tmp_path / "bench.json"
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "lopt.bench",
      "--quick",
      "--particles=2",
      f"--output={output}",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert result.returncode == 0, result.stderr[-4000:]
  report = json.loads(output.read_text())
  assert {
    "machine",
    "matmul_peak_gflops",
    "matmul_peak_gflops_highest",
    "memory_bandwidth_gbs",
    "cases",
    "checkpoint_overhead",
    "sharding_overhead_8dev",
  } <= set(report)
  # The default backend, whatever it is; its peaks measured in this run.
  assert report["machine"]["backend"] in ("cpu", "gpu", "tpu")
  assert report["matmul_peak_gflops"] > 0
  digits = [c for c in report["cases"] if c["name"].startswith("digits_")]
  assert [c["name"] for c in digits] == ["digits_adaptive_nres_n2_w10"]
  assert report["memory_bandwidth_gbs"] == digits[0]["memory_bandwidth_gbs"]
  for case in digits:
    assert case["estimator"] == "nres" and case["unroll_length"] == 10
    assert case["bound"] in ("memory", "compute")
    for key in (
      "num_particles",
      "compile_seconds",
      "inner_steps_per_sec",
      "outer_iters_per_sec",
      "flops_per_inner_step",
      "achieved_gflops",
      "min_bytes_per_inner_step",
      "state_bytes_per_inner_step",
      "achieved_gbs",
      "memory_bandwidth_fraction",
      "arithmetic_intensity",
      "roofline_gflops",
      "roofline_fraction",
      "peak_rss_mb",
    ):
      # A number, finite and positive (a NaN or None fails).
      assert case[key] > 0 and math.isfinite(case[key]), (key, case[key])
    assert case["num_particles"] == 2 and case["trajectories"] == 4
    rate = case["inner_steps_per_sec"]
    assert rate > 0
    # XLA's count and the hand count of the matmuls agree to within the
    # elementwise work XLA also counts.
    ratio = case["flops_per_inner_step"] / case["analytic_matmul_flops"]
    assert 0.9 < ratio < 1.5, ratio
    # The memory roofline: bytes x rate, against this run's bandwidth.
    moved = case["inner_step_bytes"]
    assert case["min_bytes_per_inner_step"] == moved["min_bytes"]
    assert 0 < moved["state_bytes"] < moved["min_bytes"]
    assert case["achieved_gbs"] == pytest.approx(
      rate * moved["min_bytes"] / 1e9
    )
    # Against the bandwidth measured in the case's own process.
    assert case["memory_bandwidth_gbs"] > 0
    assert case["memory_bandwidth_fraction"] == pytest.approx(
      case["achieved_gbs"] / case["memory_bandwidth_gbs"]
    )
    assert case["arithmetic_intensity"] == pytest.approx(
      case["flops_per_inner_step"] / moved["min_bytes"]
    )
    assert case["roofline_gflops"] <= report["matmul_peak_gflops"] * (1 + 1e-9)
  budget = next(c for c in report["cases"] if c["name"] == "budget_60s")
  assert budget["meta_objective"] > 0
  soak = report["memory"]["soak"]
  assert soak["outer_steps"] > 0 and soak["rss_samples"]
  assert math.isfinite(soak["rss_growth_mb_per_min"])
  detail = report["checkpoint_detail"]
  assert detail["cpu_seconds_per_save"] > 0 and detail["checkpoint_mb"] > 0
  low, high = detail["checkpoint_overhead_interval"]
  assert low <= report["checkpoint_overhead"] <= high
  assert detail["blocks"] == 2 and len(detail["wall_seconds"][0]) == 2
  # The default config's clock cadence: one save per minute of training.
  assert detail["default_every_seconds"] == 60.0
  assert detail["checkpoint_overhead_default_cadence"] == pytest.approx(
    detail["seconds_per_save"] / 60.0
  )
  low, high = detail["checkpoint_overhead_default_cadence_interval"]
  assert low <= high
  assert "at the default cadence (a save every 60 s)" in result.stdout
  assert set(report["sharding_detail"]) == {"1", "8"}
  throughput = report["family"]["throughput"]
  assert throughput["ratio"] > 0 and throughput["family"]["compile_seconds"] > 0
  assert report["family"]["memory"]["state_fit"]["slope"] > 0
  assert "family/one task:" in result.stdout
  assert "matmul peak" in result.stdout and "memory bandwidth" in result.stdout


def _start(workdir, *flags, env=None):
  """`lopt.main` on configs/tiny.py with two outer steps."""
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "lopt.main",
      "--config=configs/tiny.py",
      "--config.outer.num_steps=2",
      f"--workdir={workdir}",
      *flags,
    ],
    cwd=REPO,
    env={**os.environ, **(env or {})},
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-4000:]
  return result


def _entries(cache_dir) -> set[str]:
  return {p.name for p in cache_dir.iterdir() if p.name.endswith("-cache")}


@pytest.mark.slow
def test_a_second_start_of_the_same_config_hits_the_compilation_cache(
  tmp_path,
):
  # The first start fills the cache in its workdir (the default place).
  _start(tmp_path / "first")
  cache = tmp_path / "first" / "compilation_cache"
  written = _entries(cache)
  assert any(name.startswith("jit_train_steps-") for name in written), written
  # A second start of the same config, in another workdir, given that cache:
  # JAX reports the hits (with JAX_LOG_COMPILES) and writes nothing new.
  second = _start(
    tmp_path / "second",
    f"--compilation_cache_dir={cache}",
    env={"JAX_LOG_COMPILES": "1"},
  )
  for name in ("train_steps", "init_run_state"):
    assert (
      f"Persistent compilation cache hit for 'jit_{name}'" in second.stderr
    ), second.stderr[-4000:]
  assert _entries(cache) == written
  assert not (tmp_path / "second" / "compilation_cache").exists()


def test_a_task_kind_case_reports_throughput_flops_and_the_lopt_share():
  # In-process, on the cheapest kind: the production step of a regressor.
  spec = dict(
    kind="kinds",
    task_kind="regression",
    num_particles=2,
    unroll_length=2,
    steps_per_dispatch=1,
    reps=2,
  )
  case = bench_kinds.kinds_case(spec)
  (group,) = case["groups"].values()
  # configs/task_kinds.py:regression: 10 -> 64 -> 64 -> 1.
  assert group["model"] == "mlp" and group["inner_params"] == 4929
  assert group["inner_steps_per_outer_step"] == 2 * 2 * 2
  assert group["flops_share"] == 1.0
  assert group["flops_per_inner_step"] > 2 * 32 * 4929  # forward alone
  assert case["inner_steps_per_sec"] > 0 and case["achieved_gflops"] > 0
  assert 0.0 <= case["lopt_time_share"] < 1.0
  # Its roofline, from the bytes an inner step moves (one group: its own).
  assert case["min_bytes_per_inner_step"] == group["min_bytes_per_inner_step"]
  assert group["min_bytes_per_inner_step"] > 4 * 3 * 4929  # params, state
  measure.add_roofline(case, 100.0, 10.0)
  assert case["bound"] == "memory" and 0 < case["roofline_fraction"]
  lines = bench_kinds.table_lines([case])
  assert lines[-1].startswith("| regression | 4,929 |")
  assert "| memory, " in lines[-1]
  assert [s.get("task_kind") for s in bench_kinds.plan(True)] == [
    *bench_kinds.TASK_KINDS,
    None,
  ]
