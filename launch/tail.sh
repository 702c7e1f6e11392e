#!/usr/bin/env bash
# Shows the job's log (~/lopt_worker.log, written by run.sh) on one worker.
#
#   launch/tail.sh [--worker=N] [-n LINES] [--no-follow] [--dry-run]
#
# Default: worker 0 (the one that writes metrics), last 100 lines, following
# (tail -F; Ctrl-C ends it, the job keeps running).
#
# Settings (launch/env.sh): TPU_NAME, ZONE required; PROJECT optional.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_dry_run "$@"
worker=0
lines=100
follow=(-F)
while [[ ${#ARGS[@]} -gt 0 ]]; do
  case "${ARGS[0]}" in
    --worker=*) worker="${ARGS[0]#--worker=}" ;;
    -n) [[ ${#ARGS[@]} -ge 2 ]] || usage; lines="${ARGS[1]}"; ARGS=("${ARGS[@]:1}") ;;
    --no-follow) follow=() ;;
    -h | --help) usage 0 ;;
    *) echo "${SCRIPT_NAME}: unknown argument: ${ARGS[0]}" >&2; usage ;;
  esac
  ARGS=("${ARGS[@]:1}")
done
[[ "${worker}" =~ ^[0-9]+$ ]] || die "--worker must be a worker number"
[[ "${lines}" =~ ^[0-9]+$ ]] || die "-n must be a number of lines"
require TPU_NAME ZONE

tpu_ssh "${worker}" "tail -n ${lines} ${follow[*]} ~/lopt_worker.log"
