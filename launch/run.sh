#!/usr/bin/env bash
# Starts meta-training on every worker of $TPU_NAME, in the background.
#
#   launch/run.sh CONFIG WORKDIR [--config.a.b=v ...] [--dry-run]
#
# e.g. launch/run.sh configs/fashion_mnist8_nres.py gs://$BUCKET/lopt/fm8 \
#          --config.estimator.num_particles=256
#
# On --worker=all, in $REMOTE_DIR: stops the job of an earlier run.sh if it
# is still there, kills stale python processes that hold the TPU and removes
# $TPU_LOCKFILE (a crashed run leaves it behind and the next one fails with
# "TPU in use"), then
#   nohup env TFDS_DATA_DIR=... bash launch/supervise.sh \
#     .venv/bin/python -m lopt.main --config=CONFIG --workdir=WORKDIR \
#     --distributed --alsologtostderr [overrides] > ~/lopt_worker.log 2>&1 &
# and writes the PID to ~/lopt_worker.pid (stop.sh uses it). supervise.sh
# restarts the job each time it exits with status 75 (preempted: SIGTERM or
# a maintenance notice made every host save and stop), so it resumes by
# itself; stop.sh's SIGTERM goes through it and ends it for good. The previous log
# is kept as ~/lopt_worker.log.prev. CONFIG is relative to the repository.
# WORKDIR must be storage every host shares (gs://...): all hosts write their
# checkpoint shards there. Running the same command again resumes from the
# newest checkpoint. Follow worker 0 with launch/tail.sh.
#
# Settings (launch/env.sh): TPU_NAME, ZONE required; TFDS_DATA_DIR (default
# gs://$BUCKET/tensorflow_datasets), REMOTE_DIR, PROJECT optional.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_dry_run "$@"
case "${ARGS[0]:-}" in
  -h | --help) usage 0 ;;
esac
if [[ ${#ARGS[@]} -lt 2 ]]; then
  echo "${SCRIPT_NAME}: needs CONFIG and WORKDIR" >&2
  usage
fi
config="${ARGS[0]}"
workdir="${ARGS[1]}"
overrides=("${ARGS[@]:2}")
require TPU_NAME ZONE REMOTE_DIR

if [[ "${workdir}" != gs://* ]]; then
  warn "WORKDIR ${workdir} is not on GCS; on a multi-host slice every host must see the same workdir (use gs://...)"
fi
if [[ -z "${TFDS_DATA_DIR}" ]]; then
  warn "TFDS_DATA_DIR (or BUCKET) is not set; tfds datasets must then be on each worker's disk (the digits dataset needs none)"
fi

job_env=()
if [[ -n "${TFDS_DATA_DIR}" ]]; then
  job_env+=("TFDS_DATA_DIR=${TFDS_DATA_DIR}")
fi
job=(bash launch/supervise.sh
  .venv/bin/python -m lopt.main "--config=${config}" "--workdir=${workdir}"
  --distributed --alsologtostderr "${overrides[@]}")

# Expanded by the remote shell, not here.
# shellcheck disable=SC2088
log='~/lopt_worker.log'
remote="cd $(q "${REMOTE_DIR}") || exit 1; "
remote+="[ -x .venv/bin/python ] || { echo 'no .venv: run launch/setup.sh first' >&2; exit 1; }; "
# An earlier run.sh's supervisor must not restart the job killed below.
remote+="if [ -f ~/lopt_worker.pid ]; then kill -TERM \"\$(cat ~/lopt_worker.pid)\" 2>/dev/null; fi; "
remote+="$(remote_free_tpu); "
remote+="if [ -f ${log} ]; then mv -f ${log} ${log}.prev; fi; "
remote+="nohup env $(quote_args "${job_env[@]}" "${job[@]}") > ${log} 2>&1 < /dev/null & "
remote+="echo \$! > ~/lopt_worker.pid; echo \"\$(hostname): started lopt.main, PID \$!, log ${log}\""
tpu_ssh all "${remote}"

if [[ "${DRY_RUN}" != 1 ]]; then
  echo "${SCRIPT_NAME}: started on all workers of ${TPU_NAME}; follow with launch/tail.sh, stop with launch/stop.sh" >&2
fi
