#!/usr/bin/env bash
# Kill and resume configs/wide_generalist.py itself.
#
#   docs/wide/kill_and_resume.sh RUN WORKDIR [STEP] [END]
#
# RUN is the workdir of a `python -m lopt.main --config=configs/
# wide_generalist.py` run with a checkpoint at STEP (10): the run that
# shipped the generalist. WORKDIR starts as that run was left by a kill
# right after its save of STEP: only that checkpoint. The script resumes it
# with the same command (to outer.num_steps = END, 100), SIGKILLs it once it
# has committed a checkpoint past STEP (the clock saves every 60 s), resumes
# again to END; the reference, WORKDIR_straight, goes from the same
# checkpoint to END without a kill (RUN's own END checkpoint cannot serve:
# the code changed since, e.g. networks.conv). Then it compares the END
# checkpoints' per-array digests (lopt.checkpoint.digests: dtype and
# checksum of every array of theta, the outer state, the keys and every
# group's particles). Equal digests: the interrupted run is bit-identical.
set -euo pipefail
run="${1:?RUN}"
workdir="${2:?WORKDIR}"
step="${3:-10}"
end="${4:-100}"
cd "$(dirname "$0")/../.."
py="${PYTHON:-.venv/bin/python}"
rm -rf "${workdir}"
mkdir -p "${workdir}/checkpoints"
cp -r "${run}/checkpoints/${step}" "${workdir}/checkpoints/"
command=("${py}" -m lopt.main --config=configs/wide_generalist.py
  "--workdir=${workdir}" "--config.outer.num_steps=${end}")

start=${SECONDS}
"${command[@]}" > "${workdir}.1.log" 2>&1 &
pid=$!
newest() {
  find "${workdir}/checkpoints" -name commit_success.txt -path '*/[0-9]*/commit_success.txt' \
    -printf '%h\n' 2>/dev/null | xargs -rn1 basename | sort -n | tail -1
}
while [[ "$(newest)" -le "${step}" ]]; do
  kill -0 "${pid}" || { echo "the first resume ended early" >&2; exit 1; }
  sleep 2
done
sleep 5  # a few steps past that save
echo "$(date +%T) SIGKILL at $((SECONDS - start)) s; newest checkpoint $(newest)"
kill -KILL "${pid}"
wait "${pid}" || true
"${command[@]}" > "${workdir}.2.log" 2>&1
echo "$(date +%T) resumed run finished in $((SECONDS - start)) s in all"
grep -h "Resum" "${workdir}.2.log" || true
straight="${workdir}_straight"
rm -rf "${straight}"
mkdir -p "${straight}/checkpoints"
cp -r "${run}/checkpoints/${step}" "${straight}/checkpoints/"
"${py}" -m lopt.main --config=configs/wide_generalist.py \
  "--workdir=${straight}" "--config.outer.num_steps=${end}" > "${straight}.log" 2>&1
"${py}" - "${straight}/checkpoints/${end}/digest/metadata" \
  "${workdir}/checkpoints/${end}/digest/metadata" <<'EOF'
import json, sys
a, b = (json.load(open(p))["arrays"] for p in sys.argv[1:])
differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
print(f"{len(a)} arrays; {len(differ)} differ from the uninterrupted run")
print("\n".join(differ[:20]))
sys.exit(1 if differ else 0)
EOF
