"""The README's Performance figures, from the bench's and the peers' JSON.

    .venv/bin/python docs/performance/summarize.py

Reads `bench.json` (`python -m lopt.bench`) and the peer runs of the same
session (`peer_*.json`, from ../shared/peers) in this directory, writes
`summary.json` (every derived number the README quotes: per-row rates,
fractions of the measured peaks, ratios between rows, ranges over the
digits cases) and prints the README's table in Markdown.
"""

from __future__ import annotations

import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))

#: The README's lopt rows: (label, bench case, learned optimizer).
LOPT_ROWS = (
  ("lopt NRES", "digits_adaptive_nres_n16_w10", "adaptive (the generalists')"),
  ("lopt NRES", "digits_mlp_nres_n16_w10", "MLPLOpt"),
  ("lopt PES", "digits_mlp_pes_n16_w10", "MLPLOpt"),
  ("lopt NRES", "digits_nominal_nres_n16_w10", "nominal"),
)


def _load(name: str) -> dict:
  with open(os.path.join(HERE, name)) as f:
    return json.load(f)


def _row(rate: float, flops: float, peak: float, **extra) -> dict:
  gflops = rate * flops / 1e9
  return {
    "inner_steps_per_sec": rate,
    "mflop_per_inner_step": flops / 1e6,
    "achieved_gflops": gflops,
    "percent_of_matmul_peak": 100 * gflops / peak,
    **extra,
  }


def summarize() -> dict:
  bench = _load("bench.json")
  evosax = _load("peer_evosax_nres.json")
  lo = _load("peer_lo_pes_mlplopt.json")
  flops = _load("peer_flops.json")
  cases = {c["name"]: c for c in bench["cases"]}
  peak = bench["matmul_peak_gflops"]
  rows = {}
  for label, name, lopt in LOPT_ROWS:
    c = cases[name]
    rows[name] = _row(
      c["inner_steps_per_sec"],
      c["flops_per_inner_step"],
      peak,
      label=label,
      lopt=lopt,
      compile_seconds=c["compile_seconds"],
      achieved_gbs=c["achieved_gbs"],
      percent_of_bandwidth=100 * c["memory_bandwidth_fraction"],
      bound=c["bound"],
      percent_of_roofline=100 * c["roofline_fraction"],
    )
  peer_peak = flops["peak_matmul"]["gflops_median"]
  evosax_flops = flops["flops_per_inner_step"]["xla"]["inner_step_total"]
  rows["evosax"] = _row(
    evosax["throughput"]["inner_steps_per_s"],
    evosax_flops,
    peer_peak,
    label=f"evosax {evosax['peer_version']} {evosax['strategy']}",
    lopt=f"its MLP, {evosax['lopt_num_params']:,} params",
  )
  # learned_optimization's MLPLOpt is lopt's MLPLOpt: lopt's FLOP count.
  mlp = cases["digits_mlp_pes_n16_w10"]
  rows["learned_optimization"] = _row(
    lo["throughput"]["inner_steps_per_s"],
    mlp["flops_per_inner_step"],
    peer_peak,
    label=f"learned_optimization {lo['strategy']}",
    lopt=f"its MLPLOpt, {lo['lopt_num_params']:,} params",
  )
  ceiling = next(
    t for t in flops["task_ceiling"] if t["N"] == 32 and t["W"] == 10
  )
  rows["bare_unroll"] = _row(
    ceiling["inner_steps_per_s"],
    ceiling["achieved_gflops_xla_count"] / ceiling["inner_steps_per_s"] * 1e9,
    peer_peak,
    label="a bare vmapped W-step unroll (peers' flops.py)",
  )
  nres = rows["digits_mlp_nres_n16_w10"]
  digits = [c for c in bench["cases"] if c["name"].startswith("digits_")]

  def span(key, scale=1.0):
    values = [scale * c[key] for c in digits]
    return [min(values), max(values)]

  moved = cases["digits_mlp_nres_n16_w10"]["inner_step_bytes"]
  checkpoint = bench["checkpoint_detail"]
  return {
    "machine": bench["machine"],
    "matmul_peak_gflops": peak,
    "peer_matmul_peak_gflops": peer_peak,
    "memory_bandwidth_gbs": bench["memory_bandwidth_gbs"],
    # FLOP per byte above which a case is compute-bound.
    "ridge_flop_per_byte": peak / bench["memory_bandwidth_gbs"],
    # digits NRES N=16 W=10: the learned optimizer's activations' share of
    # the least bytes an inner step moves.
    "lopt_activation_share": moved["lopt_activations"] / moved["min_bytes"],
    "rows": rows,
    "nres_over_learned_optimization": nres["inner_steps_per_sec"]
    / rows["learned_optimization"]["inner_steps_per_sec"],
    "nres_gflops_over_evosax": nres["achieved_gflops"]
    / rows["evosax"]["achieved_gflops"],
    "digits": {
      "cases": len(digits),
      "inner_steps_per_sec": span("inner_steps_per_sec"),
      "percent_of_matmul_peak": span("achieved_gflops", 100 / peak),
      "percent_of_bandwidth": span("memory_bandwidth_fraction", 100),
      "percent_of_roofline": span("roofline_fraction", 100),
      "compile_seconds": span("compile_seconds"),
      "bounds": sorted({c["bound"] for c in digits}),
    },
    "checkpoint": {
      "overhead": bench["checkpoint_overhead"],
      "interval": checkpoint["checkpoint_overhead_interval"],
      "cpu_ms_per_save": 1e3 * checkpoint["cpu_seconds_per_save"],
      "ms_per_save": 1e3 * checkpoint["seconds_per_save"],
      "every_seconds": checkpoint["default_every_seconds"],
      "overhead_default_cadence": checkpoint[
        "checkpoint_overhead_default_cadence"
      ],
      "overhead_default_cadence_interval": checkpoint[
        "checkpoint_overhead_default_cadence_interval"
      ],
      "cpu_overhead": checkpoint["checkpoint_cpu_overhead"],
    },
    # What users meta-train: a case per task kind and the generalists'
    # families, through the production step.
    "kinds": {
      c["task_kind"]: {
        "inner_params": sum(g["inner_params"] for g in c["groups"].values()),
        "groups": len(c["groups"]),
        "inner_steps_per_sec": c["inner_steps_per_sec"],
        "achieved_gflops": c["achieved_gflops"],
        "percent_of_matmul_peak": 100 * c["achieved_gflops"] / peak,
        "seconds_per_outer_step": c["outer_step_seconds"],
        "compile_seconds": c["compile_seconds"],
        "lopt_time_share": c.get("lopt_time_share"),
        "bound": c["bound"],
        "percent_of_roofline": 100 * c["roofline_fraction"],
      }
      for c in bench.get("kinds", [])
    },
    # The adaptive N = 16, W = 10 case with its hidden activations stored
    # in bfloat16, against the same case in float32.
    "bfloat16": _bfloat16(cases),
  }


def _bfloat16(cases: dict) -> dict:
  full = cases["digits_adaptive_nres_n16_w10"]
  half = cases["digits_adaptive_nres_n16_w10_bf16"]
  return {
    "throughput_ratio": half["inner_steps_per_sec"]
    / full["inner_steps_per_sec"],
    "min_kb_per_inner_step": [
      full["min_bytes_per_inner_step"] / 1e3,
      half["min_bytes_per_inner_step"] / 1e3,
    ],
    "percent_of_roofline": [
      100 * full["roofline_fraction"],
      100 * half["roofline_fraction"],
    ],
  }


def table(summary: dict) -> str:
  head = (
    "| digits 8x8, T = 1000, batch 128, 32 trajectories, W = 10 "
    "| learned optimizer | inner steps/s | GFLOP/s | % of matmul peak "
    "| compile s |\n|---|---|---|---|---|---|"
  )
  lines = [head]
  for row in summary["rows"].values():
    compile_s = row.get("compile_seconds")
    lines.append(
      f"| {row['label']} | {row.get('lopt', '')} "
      f"| {row['inner_steps_per_sec']:,.0f} | {row['achieved_gflops']:.1f} "
      f"| {row['percent_of_matmul_peak']:.1f} "
      f"| {'' if compile_s is None else f'{compile_s:.1f}'} |"
    )
  return "\n".join(lines)


def main() -> None:
  summary = summarize()
  with open(os.path.join(HERE, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  print(table(summary))


if __name__ == "__main__":
  main()
