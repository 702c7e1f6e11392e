"""`python -m lopt.bench --quick` runs and writes the documented JSON.

A smoke test of the benchmark's plumbing; it asserts no timings (speed is
measured by the benchmark, not by tests).
"""

import json
import math
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quick_bench_writes_the_documented_json(tmp_path):
  output = tmp_path / "bench.json"
  result = subprocess.run(
    [sys.executable, "-m", "lopt.bench", "--quick", f"--output={output}"],
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
    "cases",
    "checkpoint_overhead",
    "sharding_overhead_8dev",
  } <= set(report)
  assert report["matmul_peak_gflops"] > 0
  digits = [c for c in report["cases"] if c["name"].startswith("digits_")]
  assert digits
  for case in digits:
    for key in (
      "estimator",
      "num_particles",
      "unroll_length",
      "compile_seconds",
      "inner_steps_per_sec",
      "outer_iters_per_sec",
      "flops_per_inner_step",
      "achieved_gflops",
      "peak_rss_mb",
    ):
      assert case[key] is not None, key
    assert case["inner_steps_per_sec"] > 0
    # XLA's count and the hand count of the matmuls agree to within the
    # elementwise work XLA also counts.
    ratio = case["flops_per_inner_step"] / case["analytic_matmul_flops"]
    assert 0.9 < ratio < 1.5, ratio
  budget = next(c for c in report["cases"] if c["name"] == "budget_60s")
  assert budget["meta_objective"] > 0
  soak = report["memory"]["soak"]
  assert soak["outer_steps"] > 0 and soak["rss_samples"]
  assert math.isfinite(soak["rss_growth_mb_per_min"])
  assert "matmul peak" in result.stdout
