#!/usr/bin/env bash
# Runs a command, and runs it again each time it exits with status 75:
# lopt.main's EXIT_PREEMPTED, a run that SIGTERM or a preemption notice
# stopped after saving its checkpoint, so that the same command resumes it.
# Any other status (0 = finished, 1 = failed, a signal) ends the loop and is
# this script's own.
#
#   launch/supervise.sh CMD [ARG ...]
#
# e.g. launch/supervise.sh .venv/bin/python -m lopt.main \
#          --config=configs/generalist.py --workdir=/tmp/generalist
#      launch/supervise.sh launch/local_multiprocess.sh 2 CONFIG WORKDIR
#
# SIGTERM or SIGINT to this script is passed on to CMD and ends the loop:
# the run saves its checkpoint and stops, and the script exits with its
# status (75), for a scheduler to requeue. run.sh starts every TPU worker's
# job through it; stop.sh's SIGTERM reaches the job this way.
#
# Environment:
#   MAX_RESTARTS   restarts before giving up and exiting 75 (default 100)
#   RESTART_DELAY  seconds between a preemption and the restart (default 10)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

max_restarts="${MAX_RESTARTS:-100}"
delay="${RESTART_DELAY:-10}"
if [[ $# -eq 0 ]]; then
  echo "usage: ${SCRIPT_NAME} CMD [ARG ...]" >&2
  exit 2
fi
[[ "${max_restarts}" =~ ^[0-9]+$ ]] || {
  echo "${SCRIPT_NAME}: MAX_RESTARTS must be a number, got '${max_restarts}'" >&2
  exit 2
}
[[ "${delay}" =~ ^[0-9]+$ ]] || {
  echo "${SCRIPT_NAME}: RESTART_DELAY must be a number of seconds, got '${delay}'" >&2
  exit 2
}

stopping=0
interrupted=0
child=""
forward() {
  stopping=1
  interrupted=1
  if [[ -n "${child}" ]]; then
    kill -TERM "${child}" 2>/dev/null || true
  fi
}
trap forward TERM INT

restarts=0
while :; do
  "$@" &
  child=$!
  status=0
  wait "${child}" || status=$?
  # A trapped signal makes `wait` return early (> 128): wait again for the
  # child's own status (127: it was already collected).
  while ((interrupted)); do
    interrupted=0
    again=0
    wait "${child}" || again=$?
    ((again == 127)) || status=${again}
  done
  child=""
  if ((status != EXIT_PREEMPTED || stopping)); then
    exit "${status}"
  fi
  if ((restarts >= max_restarts)); then
    echo "${SCRIPT_NAME}: preempted again after ${restarts} restarts; giving up" >&2
    exit "${status}"
  fi
  restarts=$((restarts + 1))
  echo "${SCRIPT_NAME}: preempted (exit ${status}); restart ${restarts} of at most ${max_restarts} in ${delay} s" >&2
  sleep "${delay}" &
  child=$!
  wait "${child}" || true
  child=""
  if ((stopping)); then
    exit "${EXIT_PREEMPTED}"
  fi
done
