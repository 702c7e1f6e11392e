#!/usr/bin/env bash
# Regenerates every figure in docs/figures/ (PNG + the JSON behind it).
#
#   bash docs/figures/make_figures.sh            # all, ~45 min on 2 cores
#   bash docs/figures/make_figures.sh lorenz     # or: lorenz_paper,
#                                   # lorenz_grid, lopt, influence, variance
#
# Wall-clock curves depend on the machine and on whatever else runs on it:
# run this on an otherwise idle machine. Run from anywhere; it cds to the
# repository root and uses .venv/bin/python if it exists.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
OUT=docs/figures
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
what=${1:-all}

# (a) Lorenz parameter learning, paper settings (T = 2000, W = 100,
# N = 200 pairs, sigma = 0.04, per-estimator SGD rates) but each run gets
# 8e7 inner steps (the paper's FullES budget: 2000 updates x 40,000 steps),
# 3 seeds, 1000 test starts. About 5 min.
if [[ $what == all || $what == lorenz ]]; then
  "$PY" -m lopt.compare --config=configs/lorenz.py \
    --estimators=nres,pes,tes,full_es,tbptt --budget_steps=8e7 \
    --seeds=0,1,2 --output_dir=$OUT --name=lorenz
fi

# (a2) Lorenz, the paper's protocol (configs/lorenz.py:paper): per-method
# iteration budgets (NRES and TES 5,000, PES and TBPTT 10,000, FullES 2,000),
# PES's rate dropped once to 1e-6 at step 1,000, 5 seeds, 10,000 test
# starts; steps- and time-to-target tables (loss 60 and 1.1 x the best
# final loss) with 95 % intervals in lorenz_paper.md. SCALE < 1 runs a
# scaled-down version (every budget times SCALE). About 8 min at SCALE=1
# (wall_seconds in the JSON).
if [[ $what == all || $what == lorenz_paper ]]; then
  "$PY" -m lopt.compare --config=configs/lorenz.py:paper \
    --budget_scale="${SCALE:-1}" --output_dir=$OUT --name=lorenz_paper \
    --table=$OUT/lorenz_paper.md
fi

# (a3) Lorenz learning-rate grid (configs/lorenz.py:grid): each method at
# 4 half-decade rates around the paper's, the paper's budgets, 3 seeds,
# 1,000 test starts. About 15 min at SCALE=1.
if [[ $what == all || $what == lorenz_grid ]]; then
  "$PY" -m lopt.compare --config=configs/lorenz.py:grid \
    --budget_scale="${SCALE:-1}" --output_dir=$OUT --name=lorenz_grid \
    --table=$OUT/lorenz_grid.md
fi

# (b) Learned-optimizer meta-training on digits 8x8 (configs/default.py:
# T = 1000, 16 pairs, W = 10, Adam 3e-4), 200 outer steps per estimator,
# one seed, theta scored every 20 steps. About 10 min.
if [[ $what == all || $what == lopt ]]; then
  "$PY" -m lopt.compare --config=configs/default.py \
    --estimators=nres,pes,tes --budget_outer_steps=200 --seeds=0 \
    --num_points=10 \
    --workdir=/tmp/lopt_figures/digits --output_dir=$OUT --name=digits_lopt
fi

# (c) Influence balancing (the PES paper's settings: 3000 SGD steps at lr
# 1e-4 from theta = 0.5, 500 lockstep pairs, sigma 0.1). Under a minute.
if [[ $what == all || $what == influence ]]; then
  "$PY" -m lopt.compare --config=configs/influence_balancing.py \
    --seeds=3,4,5 --output_dir=$OUT --name=influence_balancing
fi

# (d) NRES vs PES per-estimate variance against W at T = 100 on the
# linear-quadratic system, Monte Carlo (50,000 estimates per point) and
# exact. About 1 min.
if [[ $what == all || $what == variance ]]; then
  "$PY" -m lopt.analysis --num_samples=50000 --output_dir=$OUT
fi

# (e) The learned-optimizer study (docs/figures/lopt_study.py: MLPLOpt on
# digits, NRES/PES/TES/FullES at tuned outer rates with equal time budgets
# per run, against tuned Adam, and GPES-K). Not part of `all`: run it by
# name. Extra flags go to the script. The README's run,
#   bash docs/figures/make_figures.sh lopt_study --run_seconds=120 \
#     --sweep_seconds=40
# took about 1 h 40 min on 2 cores: the pilot 5 min, the sweep 30 min
# (19 runs: FullES's grid grew by three rates), the main runs and the Adam
# sweep 40 min, GPES-K 25 min. It was stopped and restarted twice on the
# way; a restart reuses every finished run (and its scores) in --workdir
# and resumes an interrupted one, so the JSONs' wall_seconds count only
# the last start. A bigger machine: --run_seconds=300 --sweep_seconds=100
# --seeds=0,1,2,3,4. Redraw the PNGs from the JSON alone (seconds) with
# --plot_only.
if [[ $what == lopt_study ]]; then
  "$PY" docs/figures/lopt_study.py --output_dir=$OUT "${@:2}"
fi
