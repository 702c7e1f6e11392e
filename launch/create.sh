#!/usr/bin/env bash
# Creates the Cloud TPU VM $TPU_NAME ($ACCELERATOR in $ZONE).
#
#   launch/create.sh [--spot] [--queued] [--dry-run] [-- EXTRA_GCLOUD_FLAGS...]
#
#   (default)  gcloud compute tpus tpu-vm create: on-demand; fails at once
#              when the zone has no capacity.
#   --spot     spot (preemptible) capacity, with either form.
#   --queued   gcloud compute tpus queued-resources create $QUEUED_RESOURCE
#              --node-id=$TPU_NAME (the documented way to get capacity), then
#              polls `queued-resources describe` every $POLL_INTERVAL s until
#              the state is ACTIVE; fails on FAILED/SUSPENDING/SUSPENDED or
#              after $CREATE_TIMEOUT s. Delete it with delete.sh --queued.
#   --dry-run  print the gcloud commands, run none.
#   -- ...     extra flags for gcloud, e.g. -- --reserved or
#              -- --valid-until-duration=6h (queued only).
#
# Settings come from the environment (launch/env.sh): TPU_NAME, ZONE,
# ACCELERATOR required; RUNTIME defaults from ACCELERATOR; PROJECT optional.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_dry_run "$@"
spot=0
queued=0
extra=()
while [[ ${#ARGS[@]} -gt 0 ]]; do
  case "${ARGS[0]}" in
    --spot) spot=1 ;;
    --queued) queued=1 ;;
    -h | --help) usage 0 ;;
    --) extra=("${ARGS[@]:1}"); break ;;
    *) echo "${SCRIPT_NAME}: unknown argument: ${ARGS[0]}" >&2; usage ;;
  esac
  ARGS=("${ARGS[@]:1}")
done

require TPU_NAME ZONE ACCELERATOR
if [[ -z "${RUNTIME}" ]]; then
  RUNTIME="$(default_runtime "${ACCELERATOR}")" ||
    die "no default RUNTIME for ACCELERATOR=${ACCELERATOR}; export RUNTIME=... (the TPU software version)"
fi

spot_flag=()
if [[ "${spot}" == 1 ]]; then
  spot_flag=(--spot)
fi

if [[ "${queued}" == 0 ]]; then
  gcloud_run compute tpus tpu-vm create "${TPU_NAME}" "--zone=${ZONE}" \
    "--accelerator-type=${ACCELERATOR}" "--version=${RUNTIME}" \
    "${spot_flag[@]}" "${extra[@]}"
  exit 0
fi

require QUEUED_RESOURCE
gcloud_run compute tpus queued-resources create "${QUEUED_RESOURCE}" \
  "--zone=${ZONE}" "--node-id=${TPU_NAME}" \
  "--accelerator-type=${ACCELERATOR}" "--runtime-version=${RUNTIME}" \
  "${spot_flag[@]}" "${extra[@]}"

if [[ "${DRY_RUN}" == 1 ]]; then
  echo "${SCRIPT_NAME}: (dry run) would poll queued-resources describe" \
    "${QUEUED_RESOURCE} until ACTIVE" >&2
  exit 0
fi

# Poll until ACTIVE. States: ACCEPTED / WAITING_FOR_RESOURCES / PROVISIONING
# -> ACTIVE, or FAILED / SUSPENDING / SUSPENDED.
start=${SECONDS}
errors=0
last=""
while true; do
  if out="$(gcloud_run compute tpus queued-resources describe \
    "${QUEUED_RESOURCE}" "--zone=${ZONE}" '--format=value(state.state)')"; then
    errors=0
    # The last word of the output (the format gives just the state).
    state="$(printf '%s\n' "${out}" | awk 'NF { w = $NF } END { print w }')"
  else
    errors=$((errors + 1))
    state="(describe failed)"
    if [[ ${errors} -ge 5 ]]; then
      die "queued-resources describe failed ${errors} times in a row"
    fi
  fi
  if [[ "${state}" != "${last}" ]]; then
    echo "${SCRIPT_NAME}: ${QUEUED_RESOURCE}: ${state} after $((SECONDS - start)) s" >&2
    last="${state}"
  fi
  case "${state}" in
    ACTIVE)
      echo "${SCRIPT_NAME}: TPU ${TPU_NAME} is ready; next: launch/setup.sh" >&2
      exit 0
      ;;
    FAILED | SUSPENDING | SUSPENDED)
      gcloud_run compute tpus queued-resources describe "${QUEUED_RESOURCE}" \
        "--zone=${ZONE}" >&2 || true
      die "queued resource ${QUEUED_RESOURCE} is ${state}; delete it with launch/delete.sh --queued"
      ;;
  esac
  if (( SECONDS - start >= CREATE_TIMEOUT )); then
    die "queued resource ${QUEUED_RESOURCE} not ACTIVE after ${CREATE_TIMEOUT} s (state ${state}); it is still queued: check again with gcloud compute tpus queued-resources describe ${QUEUED_RESOURCE} --zone=${ZONE}, or delete it with launch/delete.sh --queued"
  fi
  sleep "${POLL_INTERVAL}"
done
