#!/usr/bin/env bash
# Stops the lopt job on every worker of $TPU_NAME (the TPU VM keeps running;
# launch/delete.sh deletes it).
#
#   launch/stop.sh [--dry-run]
#
# On --worker=all: sends SIGTERM to the PID in ~/lopt_worker.pid (written by
# run.sh). With jax.distributed initialised, orbax's preemption check makes
# every host save a checkpoint at the same step and exit, so run.sh can resume
# later. Waits up to $STOP_GRACE s (120) for that, then kills the python
# processes that still hold the TPU and removes $TPU_LOCKFILE.
#
# Settings (launch/env.sh): TPU_NAME, ZONE required; STOP_GRACE, PROJECT.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_dry_run "$@"
if [[ ${#ARGS[@]} -gt 0 ]]; then
  case "${ARGS[0]}" in
    -h | --help) usage 0 ;;
    *) echo "${SCRIPT_NAME}: unknown argument: ${ARGS[0]}" >&2; usage ;;
  esac
fi
require TPU_NAME ZONE
[[ "${STOP_GRACE}" =~ ^[0-9]+$ ]] || die "STOP_GRACE must be a number of seconds"

# shellcheck disable=SC2088  # expanded by the remote shell
pidfile='~/lopt_worker.pid'
remote="if [ -f ${pidfile} ]; then pid=\$(cat ${pidfile}); "
remote+="if kill -0 \"\$pid\" 2>/dev/null; then echo \"\$(hostname): SIGTERM to \$pid\"; kill -TERM \"\$pid\"; "
remote+="i=0; while kill -0 \"\$pid\" 2>/dev/null && [ \$i -lt ${STOP_GRACE} ]; do sleep 1; i=\$((i + 1)); done; fi; "
remote+="rm -f ${pidfile}; fi; "
remote+="$(remote_free_tpu)"
tpu_ssh all "${remote}"
