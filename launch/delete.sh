#!/usr/bin/env bash
# Deletes the TPU VM $TPU_NAME, or with --queued its queued resource
# $QUEUED_RESOURCE (which deletes the node too).
#
#   launch/delete.sh [--queued] [--yes] [--dry-run]
#
#   --queued  gcloud compute tpus queued-resources delete $QUEUED_RESOURCE
#             --force (needed for anything made with create.sh --queued)
#   (default) gcloud compute tpus tpu-vm delete $TPU_NAME
#   --yes     no confirmation prompt (gcloud --quiet)
#
# Checkpoints on gs:// stay; copy local ones first (copy_checkpoints.sh).
# Settings (launch/env.sh): TPU_NAME, ZONE required; QUEUED_RESOURCE, PROJECT.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_dry_run "$@"
queued=0
quiet=()
for arg in "${ARGS[@]}"; do
  case "${arg}" in
    --queued) queued=1 ;;
    --yes | -y) quiet=(--quiet) ;;
    -h | --help) usage 0 ;;
    *) echo "${SCRIPT_NAME}: unknown argument: ${arg}" >&2; usage ;;
  esac
done
require TPU_NAME ZONE

if [[ "${queued}" == 1 ]]; then
  require QUEUED_RESOURCE
  gcloud_run compute tpus queued-resources delete "${QUEUED_RESOURCE}" \
    "--zone=${ZONE}" --force "${quiet[@]}"
else
  gcloud_run compute tpus tpu-vm delete "${TPU_NAME}" "--zone=${ZONE}" \
    "${quiet[@]}"
fi
