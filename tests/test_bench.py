"""The benchmark's plumbing and its cost model; the compilation cache.

Smoke tests: they assert no timings (speed is measured by the benchmark,
not by tests), only that the figures are there and consistent.
"""

import json
import math
import os
import subprocess
import sys

import pytest

from lopt import measure, optimizers, tasks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_inner_step_bytes_by_hand():
  # configs/tiny.py: MLP 64-8-10 on 8x8 digits, batch 16; nominal learned
  # optimizer with one hidden layer of 4. P = 64*8 + 8 + 8*10 + 10 = 610.
  task = tasks.make_task(
    "mlp", hidden=(8,), num_classes=10, input_shape=(8, 8, 1), batch_size=16
  )
  lopt = optimizers.LOptConfig(kind="nominal", hidden=(4,))
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
  assert [c["name"] for c in digits] == ["digits_mlp_nres_n2_w10"]
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
  assert set(report["sharding_detail"]) == {"1", "8"}
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
