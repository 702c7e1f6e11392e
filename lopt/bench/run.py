"""Throughput, efficiency and memory benchmark of meta-training.

    python -m lopt.bench [--quick] [--output=bench.json]
    python -m lopt.bench --particles=16,64,256,1024 --unroll_lengths=10 \
        --sections=digits,checkpoint --output=gpu.json   # on an accelerator

It times what `lopt.main` runs: the jitted, sharded functions of
`lopt.train.step.sharded_functions`, on the default backend (a GPU or TPU
when there is one), for configs loaded by path (`--config`, by default the
repository's configs/default.py). Every case runs in its own subprocess, so
its compile time and peak resident memory are its own. Figures:

* `inner_steps_per_sec`: perturbed inner training steps per second, every
  trajectory counted (the + and - members of a pair are two), at steady
  state after compilation: the median over timed dispatches of
  `outer.steps_per_dispatch` outer steps each. `compile_seconds`: the
  wall-clock of compiling that dispatch (no compilation cache).
* `flops_per_inner_step`: XLA's cost analysis of ONE compiled inner step of
  one trajectory (`InnerTraining.step`: batch sampling, forward and
  backward of the inner model, the learned optimizer). Costing the step
  itself avoids the trap that XLA counts a `lax.scan` body once, not once
  per iteration. `analytic_matmul_flops` beside it counts the matmuls by
  hand as a check.
* `achieved_gflops` = inner_steps_per_sec x flops_per_inner_step, against
  `matmul_peak_gflops`: a float32 matmul (2048^3 on a CPU, 8192^3 on an
  accelerator) at JAX's default precision, the one the program's matmuls
  use, measured in the same run; `matmul_peak_gflops_highest` is the same
  at `Precision.HIGHEST` (true float32 where the default allows TF32).
* The memory roofline, per digits case (`inner_step_bytes`): the bytes one
  inner step of one trajectory must move at the least, counted from the
  shapes (the table in `inner_step_bytes`), and `achieved_gbs` =
  inner_steps_per_sec x min_bytes_per_inner_step, against
  `memory_bandwidth_gbs`: a streaming triad `a = b + s * c` over arrays
  far larger than any cache, in jit, measured in the case's own process
  after its timing (the report's figure is the median over the cases). With the
  FLOP peak this gives each case's roofline (`arithmetic_intensity`,
  `roofline_gflops`, `bound`: memory or compute, and the achieved fraction
  of it). Activations that stay in cache can make `memory_bandwidth_fraction`
  exceed 1.
* `budget_60s`: meta-trains the default config for 60 s of wall-clock,
  compilation and burn-in included, then scores the final theta by the
  meta-objective: the mean training loss of full T-step inner runs on
  held-out seeds.
* `memory`: `particles` fits the steady-state resident memory (`rss_mb`,
  after the timed dispatches) of the MLPLOpt NRES W=10 cases against their
  particle count (a line, and the largest deviation from it); `soak`
  meta-trains the default config for `--soak_seconds` (10 minutes) and
  reports the RSS growth per minute over its second half. On an
  accelerator `device_peak_mb` is the device's own peak memory.
* `checkpoint_overhead`: outer-step time with an async checkpoint every 10
  steps over the time without, minus one, in `lopt.train.loop`'s order
  (dispatch, then save): the median over 20 blocks, each a few dispatches
  without saves then a few with (adjacent in time: the machine's speed
  drifts), of the block's time ratio, with a bootstrap 95 % interval over blocks
  (`checkpoint_overhead_interval`). `checkpoint_cpu_overhead` is the same
  ratio in process CPU time (all threads); `cpu_seconds_per_save` is the
  CPU time of one save and its background work, with nothing else running.
  `checkpoint_overhead_default_cadence`: the config's clock cadence
  (`checkpoint.every_seconds`, `default_every_seconds`) costs one save per
  that many seconds of training, so the measured seconds per save over it,
  with the blocks' bootstrap interval.
* `sharding_overhead_8dev`: wall-clock of the same total work on 8
  simulated CPU devices over 1 device (an overhead, not a speed-up, on a
  machine with few cores). It always runs on the CPU backend.
* The cases lead with what users meta-train: the digits cases with the
  `adaptive` kind (the generalists') under NRES, then (`kinds`,
  `lopt.bench.kinds`) a case per task kind and the families of
  configs/generalist.py and configs/wide_generalist.py through the
  production step; the table prints them first.
* `family` (`lopt.tasks.family`): a 3-task family against one task with as
  many trajectories, on the same budget. The family is the config's task
  (configs/default.py: MLP 64-32-32-32-10, batch 128) under gelu, relu and
  tanh (the same shapes and matmuls; `flops_ratio`, XLA's FLOPs per inner
  step of the family's mean task over the single task's, says how close
  the per-step cost is), N particles each; the single task is the
  config's, with 3N particles; both NRES at the same W and T. `throughput`:
  both steps functions compiled ahead of time (`compile_seconds` each),
  then timed in interleaved dispatches; `ratio` is the family's median
  inner steps/s over the single task's (`target_ratio`: >= 0.85),
  `ratio_min`/`ratio_max` the range of the per-repeat ratios. `memory`:
  the family's run-state bytes (from `jax.eval_shape`, per group; the
  single task's at as many particles beside them) and XLA's memory
  analysis of the compiled steps function (`--quick`: at the timed count
  only) at 2-3 particle counts, each with a line fitted against the total
  particle count (`state_fit`, `xla_total_fit`, `xla_temp_fit`: slope in
  bytes per particle, intercept, largest relative residual).
"""

import json
import os
import statistics
import subprocess
import sys

from absl import app, flags

from lopt import console
from lopt.bench import cases as bench_cases
from lopt.bench import family as bench_family
from lopt.bench import kinds as bench_kinds
from lopt.bench import measure

#: Every case, by the `kind` of its spec.
CASES = {
  "family": bench_family.family_case,
  "kinds": bench_kinds.kinds_case,
  **bench_cases.CASES,
}

SECTIONS = tuple(
  "digits kinds lorenz budget soak checkpoint sharding family".split()
)


def define_flags() -> dict[str, flags.FlagHolder]:
  """The command-line flags (see `lopt.console.run_program`)."""
  return {
    "quick": flags.DEFINE_bool(
      "quick", False, "A few-minute subset: one digits case, short runs."
    ),
    "output": flags.DEFINE_string("output", "bench.json", "Where to write."),
    "case": flags.DEFINE_string("case", "", "Internal: run one case (JSON)."),
    "config": flags.DEFINE_string(
      "config",
      bench_cases.repo_config("default"),
      "The config file (a path) that the digits, budget, soak, checkpoint, "
      "sharding and family cases start from.",
    ),
    "particles": flags.DEFINE_list(
      "particles",
      None,
      "Particle counts of the digits cases (default 4,16,64; --quick: 16), "
      "e.g. 16,64,256,1024 on an accelerator.",
    ),
    "unroll_lengths": flags.DEFINE_list(
      "unroll_lengths",
      None,
      "Unroll lengths W of the digits cases (default 1,10; --quick: 10).",
    ),
    "sections": flags.DEFINE_list(
      "sections",
      list(SECTIONS),
      f"Which parts to run, of {','.join(SECTIONS)}.",
    ),
    "budget_seconds": flags.DEFINE_float(
      "budget_seconds", 60.0, "Wall-clock budget of the budget case."
    ),
    "soak_seconds": flags.DEFINE_float(
      "soak_seconds",
      600.0,
      "Length of the memory soak run of the default config (0 skips it; "
      "--quick soaks configs/tiny.py for 15 s).",
    ),
  }


def run_case(spec: dict, cpu_devices: int | None = None) -> dict:
  """Runs one case in a fresh subprocess; returns its JSON result.

  Args:
    spec: the case (`kind` and its arguments).
    cpu_devices: run on the CPU backend with this many simulated devices,
      whatever the default backend; None: the default backend.
  """
  env = dict(os.environ)
  if cpu_devices is not None:
    env["JAX_PLATFORMS"] = "cpu"
    env.pop("JAX_NUM_CPU_DEVICES", None)  # would win over the XLA flag
    env["XLA_FLAGS"] = (
      env.get("XLA_FLAGS", "")
      + f" --xla_force_host_platform_device_count={cpu_devices}"
    ).strip()
  env["PYTHONPATH"] = bench_cases.REPO + os.pathsep + env.get("PYTHONPATH", "")
  result = subprocess.run(
    [sys.executable, "-m", "lopt.bench", f"--case={json.dumps(spec)}"],
    env=env,
    capture_output=True,
    text=True,
    check=False,
  )
  if result.returncode != 0:
    raise RuntimeError(f"bench case {spec} failed:\n{result.stderr[-4000:]}")
  return json.loads(result.stdout.strip().splitlines()[-1])


def plan(
  quick: bool,
  particles: list[int] | None = None,
  unroll_lengths: list[int] | None = None,
  config: str = "",
) -> list[dict]:
  """The digits cases of a full or quick run.

  Args:
    quick: the adaptive kind under NRES alone, 2 timed dispatches.
    particles: the particle counts; default (4, 16, 64), quick (16,).
    unroll_lengths: the unroll lengths; default (1, 10), quick (10,).
    config: the config file the cases start from.
  """
  particles = particles or ([16] if quick else [4, 16, 64])
  unroll_lengths = unroll_lengths or ([10] if quick else [1, 10])
  # First what users meta-train (the adaptive kind of the generalists and
  # the task kinds, under NRES), then the papers' MLPLOpt and the default
  # config's nominal kind under NRES and PES.
  kinds = [("adaptive", "nres")]
  if not quick:
    kinds += [(k, e) for k in ("mlp", "nominal") for e in ("nres", "pes")]
  specs = [
    dict(
      kind="digits",
      config=config,
      estimator=est,
      lopt=lopt,
      num_particles=n,
      unroll_length=w,
      reps=2 if quick else 5,
    )
    for lopt, est in kinds
    for n in particles
    for w in unroll_lengths
  ]
  if not quick:  # the N = 16, W = 10 case with bfloat16 activations
    same = [
      s for s in specs if (s["num_particles"], s["unroll_length"]) == (16, 10)
    ]
    specs.insert(1, dict((same or specs)[0], activation_dtype="bfloat16"))
  return specs


def family_plan(quick: bool, config: str = "", devices: int = 1) -> dict:
  """The family case (`bench_family.family_case`) of a full or quick run.

  Particle counts per task are multiples of the device count (every group
  is sharded over all devices): m, 2m and 4m for the memory fit, 2m timed
  (on the single task 3 x 2m), with m = 8 rounded up to a multiple of
  `devices`, or m = `devices` with `quick`.

  Args:
    quick: 1 outer step a dispatch, 3 timed dispatches, and XLA's memory
      analysis only at the timed count (no extra compilations); else 2
      outer steps a dispatch and 7 timed dispatches.
    config: the config file the family and the single task start from.
    devices: the number of devices the case runs on.
  """
  m = devices if quick else -(-8 // devices) * devices
  return dict(
    kind="family",
    config=config,
    particles=2 * m,
    memory_particles=[m, 2 * m, 4 * m],
    unroll_length=10,
    steps_per_dispatch=1 if quick else 2,
    reps=3 if quick else 7,
    compile_memory=not quick,
  )


def _family_lines(family: dict) -> list[str]:
  """The family section's lines of the table."""
  t = family["throughput"]
  single, fam = t["single"], t["family"]
  lines = [
    f"family ({', '.join(family['tasks'])}; {t['particles_per_task']} "
    f"particles each) vs one task ({single['num_particles']} particles), "
    f"W={t['unroll_length']}, {t['timed_dispatches']} timed dispatches of "
    f"{t['steps_per_dispatch']} outer step(s):",
    "| program | traj | compile s | inner steps/s (min-max) | "
    "MFLOP/step | state MB | XLA MB |",
    "|---|---|---|---|---|---|---|",
  ]
  for label, c in (("one task", single), ("family", fam)):
    xla = c["xla_memory"]
    lines.append(
      f"| {label} | {c['trajectories']} | {c['compile_seconds']:.1f} | "
      f"{c['inner_steps_per_sec']:.0f} ({c['inner_steps_per_sec_min']:.0f}-"
      f"{c['inner_steps_per_sec_max']:.0f}) | "
      f"{c['flops_per_inner_step'] / 1e6:.2f} | "
      f"{c['state_bytes']['total'] / 1e6:.2f} | "
      + (f"{xla['total_bytes'] / 1e6:.1f} |" if xla else "- |")
    )
  lines.append(
    f"family/one task: {t['ratio']:.3f} (per repeat {t['ratio_min']:.3f}-"
    f"{t['ratio_max']:.3f}; target >= {t['target_ratio']}: "
    f"{'met' if t['meets_target'] else 'NOT met'}), FLOPs per step "
    f"{t['flops_ratio']:.3f}"
  )
  memory = family["memory"]
  for key, what in (
    ("state_fit", "run state"),
    ("xla_total_fit", "XLA total"),
    ("xla_temp_fit", "XLA temp"),
  ):
    fit = memory[key]
    if fit:
      lines.append(
        f"family memory, {what}: {fit['intercept'] / 1e6:.3f} MB + "
        f"{fit['slope'] / 1e3:.2f} KB per particle "
        f"(particles {[p['total_particles'] for p in memory['points']]}), "
        f"largest residual {100 * fit['max_relative_residual']:.2f} %"
      )
  return lines


def format_table(report: dict) -> str:
  peak = report["matmul_peak_gflops"]
  bandwidth = report["memory_bandwidth_gbs"]
  lines = [
    f"{report['machine']['backend']} ({report['machine']['device_kind']}): "
    f"matmul peak {peak:.1f} GFLOP/s "
    f"({report['matmul_peak_gflops_highest']:.1f} at HIGHEST precision)"
    + (f", memory bandwidth {bandwidth:.1f} GB/s (triad)" if bandwidth else ""),
  ]
  timed = [c for c in report["cases"] if "inner_steps_per_sec" in c]
  if timed:
    lines += [
      "| case | traj | compile s | inner steps/s | outer it/s | "
      "MFLOP/step | GFLOP/s | % peak | min KB/step | GB/s | % BW | bound | "
      "% roofline | RSS MB |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
  for c in timed:
    memory = ["-"] * 5
    if "min_bytes_per_inner_step" in c:
      memory = [
        f"{c['min_bytes_per_inner_step'] / 1e3:.0f}",
        f"{c['achieved_gbs']:.1f}",
        f"{100 * c['memory_bandwidth_fraction']:.0f}",
        c["bound"],
        f"{100 * c['roofline_fraction']:.0f}",
      ]
    lines.append(
      f"| {c['name']} | {c['trajectories']} | {c['compile_seconds']:.1f} | "
      f"{c['inner_steps_per_sec']:.0f} | {c['outer_iters_per_sec']:.2f} | "
      f"{c['flops_per_inner_step'] / 1e6:.2f} | "
      f"{c['achieved_gflops']:.1f} | "
      f"{100 * c['achieved_gflops'] / peak:.1f} | {' | '.join(memory)} | "
      f"{c['peak_rss_mb']:.0f} |"
    )
  if report.get("kinds"):
    lines.extend(bench_kinds.table_lines(report["kinds"]))
  for c in report["cases"]:
    if c["name"] == "budget_60s":
      lines.append(
        f"budget {c['budget_seconds']:.0f}s: {c['outer_steps']} outer "
        f"steps, meta-objective {c['meta_objective_initial']:.4f} -> "
        f"{c['meta_objective']:.4f}"
      )
  memory = report.get("memory", {})
  scaling = memory.get("particles")
  if scaling:
    lines.append(
      f"memory: RSS {scaling['intercept_mb']:.0f} MB + "
      f"{scaling['mb_per_particle']:.2f} MB per particle, largest "
      "deviation from that line "
      f"{100 * scaling['max_relative_deviation']:.1f} %"
    )
  soak = memory.get("soak")
  if soak:
    lines.append(
      f"memory soak {soak['config']} {soak['seconds']:.0f}s "
      f"({soak['outer_steps']} outer "
      f"steps): RSS {soak['rss_mb_start']:.0f} -> {soak['rss_mb_end']:.0f} "
      f"MB, growth over the second half "
      f"{soak['rss_growth_mb_per_min']:+.2f} MB/min"
    )
  detail = report.get("checkpoint_detail")
  if detail:
    lines.append(
      f"checkpoint_overhead: {report['checkpoint_overhead']:+.3f} "
      "[{:+.3f}, {:+.3f}] ".format(*detail["checkpoint_overhead_interval"])
      + f"(every 10 steps; {detail['seconds_per_save'] * 1e3:.0f} ms per save, "
      f"{detail['cpu_seconds_per_save'] * 1e3:.0f} ms of CPU, CPU overhead "
      f"{detail['checkpoint_cpu_overhead']:+.3f})"
    )
    if detail.get("checkpoint_overhead_default_cadence") is not None:
      low, high = detail["checkpoint_overhead_default_cadence_interval"]
      lines.append(
        "checkpoint overhead at the default cadence (a save every "
        f"{detail['default_every_seconds']:.0f} s): "
        f"{detail['checkpoint_overhead_default_cadence']:+.4f} "
        f"[{low:+.4f}, {high:+.4f}]"
      )
  if "sharding_overhead_8dev" in report:
    lines.append(
      f"sharding_overhead_8dev: {report['sharding_overhead_8dev']:.3f}"
    )
  if report.get("family"):
    lines.extend(_family_lines(report["family"]))
  return "\n".join(lines)


def main(f: dict) -> None:
  if f["case"]:  # a subprocess running one case
    import jax  # pylint: disable=g-import-not-at-top

    # compile_seconds means compiling; a persistent cache that the
    # environment turns on (JAX_COMPILATION_CACHE_DIR) would hide it.
    jax.config.update("jax_enable_compilation_cache", False)
    spec = json.loads(f["case"])
    print(json.dumps(CASES[spec.pop("kind")](spec)))
    return
  unknown = sorted(set(f["sections"]) - set(SECTIONS))
  if unknown:
    raise app.UsageError(
      f"--sections: unknown {unknown}; valid: {list(SECTIONS)}"
    )
  sections = set(f["sections"])
  quick, config = f["quick"], os.path.abspath(f["config"])
  import jax  # pylint: disable=g-import-not-at-top

  report = {
    "machine": measure.machine_info(),
    "quick": quick,
    "config": config,
    "matmul_peak_gflops": measure.matmul_peak_gflops(),
    "matmul_peak_gflops_highest": measure.matmul_peak_gflops(
      precision=jax.lax.Precision.HIGHEST
    ),
    # Measured by each digits case in its own process; the median of them.
    "memory_bandwidth_gbs": None,
  }
  cases = []
  if "digits" in sections:
    digits = plan(
      quick,
      [int(n) for n in f["particles"] or []],
      [int(w) for w in f["unroll_lengths"] or []],
      config,
    )
    progress = console.Progress(len(digits), "digits cases")
    for spec in digits:
      progress.step(
        f"{spec['lopt']} {spec['estimator']} N={spec['num_particles']} "
        f"W={spec['unroll_length']}"
      )
      case = run_case(spec)
      measure.add_roofline(
        case, report["matmul_peak_gflops"], case["memory_bandwidth_gbs"]
      )
      cases.append(case)
    report["memory_bandwidth_gbs"] = statistics.median(
      c["memory_bandwidth_gbs"] for c in cases
    )
  if "lorenz" in sections and not quick:
    cases.append(
      run_case(dict(kind="lorenz", num_particles=200, unroll_length=100))
    )
  if "budget" in sections:
    seconds = 10.0 if quick else f["budget_seconds"]
    cases.append(run_case(dict(kind="budget", config=config, seconds=seconds)))
  report["cases"] = cases
  report["memory"] = {
    "particles": bench_cases.memory_scaling(cases),
    "soak": None,
  }
  if "soak" in sections:
    soak = (
      dict(kind="soak", config=bench_cases.repo_config("tiny"), seconds=15.0)
      if quick
      else dict(kind="soak", config=config, seconds=f["soak_seconds"])
    )
    if soak["seconds"] > 0:
      report["memory"]["soak"] = run_case(soak)
  if "checkpoint" in sections:
    detail = run_case(
      dict(
        kind="checkpoint",
        config=config,
        num_particles=16,
        unroll_length=10,
        blocks=2 if quick else 20,
      )
    )
    report["checkpoint_overhead"] = detail["checkpoint_overhead"]
    report["checkpoint_detail"] = detail
  if "sharding" in sections:
    spec = dict(
      kind="sharding",
      config=config,
      num_particles=16,
      unroll_length=10,
      reps=2 if quick else 6,
    )
    sharding = {d: run_case(spec, cpu_devices=d) for d in (1, 8)}
    report["sharding_overhead_8dev"] = (
      sharding[8]["seconds_per_10_steps"] / sharding[1]["seconds_per_10_steps"]
    )
    report["sharding_detail"] = sharding
  if "family" in sections:
    report["family"] = run_case(family_plan(quick, config, jax.device_count()))
  if "kinds" in sections:
    report["kinds"] = [run_case(s) for s in bench_kinds.plan(quick)]
    # Against the digits cases' bandwidth, or one measured here.
    bandwidth = report["memory_bandwidth_gbs"] or measure.memory_bandwidth_gbs()
    for case in report["kinds"]:
      measure.add_roofline(case, report["matmul_peak_gflops"], bandwidth)
  with open(f["output"], "w") as out:
    json.dump(report, out, indent=2)
  print(format_table(report))
  print(f"Wrote {f['output']}")
