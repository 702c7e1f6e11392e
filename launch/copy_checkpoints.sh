#!/usr/bin/env bash
# Copies a run's workdir (checkpoints, metrics.jsonl, config) to DEST here.
#
#   launch/copy_checkpoints.sh WORKDIR DEST [--dry-run]
#
# WORKDIR gs://...  gcloud storage cp --recursive WORKDIR DEST
# otherwise         gcloud compute tpus tpu-vm scp --recurse from worker 0
#                   (a relative WORKDIR is taken inside $REMOTE_DIR, where
#                   run.sh starts the job). On a multi-host slice a local
#                   workdir holds only worker 0's shards; use gs://.
# DEST is created if missing; the copy lands in DEST/$(basename WORKDIR).
# Load it with lopt.load_optimizer(DEST/...) or python -m lopt.evaluate.
#
# Settings (launch/env.sh): TPU_NAME, ZONE (for the scp form); PROJECT.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_dry_run "$@"
case "${ARGS[0]:-}" in
  -h | --help) usage 0 ;;
esac
if [[ ${#ARGS[@]} -ne 2 ]]; then
  echo "${SCRIPT_NAME}: needs WORKDIR and DEST" >&2
  usage
fi
workdir="${ARGS[0]%/}"
dest="${ARGS[1]}"

run mkdir -p "${dest}"
if [[ "${workdir}" == gs://* ]]; then
  gcloud_run storage cp --recursive "${workdir}" "${dest}"
else
  require TPU_NAME ZONE
  if [[ "${workdir}" != /* && "${workdir}" != \~* ]]; then
    workdir="${REMOTE_DIR%/}/${workdir}"
  fi
  gcloud_run compute tpus tpu-vm scp --recurse "${TPU_NAME}:${workdir}" \
    "${dest}" "--zone=${ZONE}" --worker=0
fi
