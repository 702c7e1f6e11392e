# shellcheck shell=bash
# shellcheck source-path=SCRIPTDIR
#
# Helpers shared by the scripts in launch/; source it, do not run it:
#   source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
#
# It sources env.sh (the settings) and provides:
#   parse_dry_run ARGS...  drops --dry-run from ARGS (sets DRY_RUN=1) and
#                          leaves the rest in the array ARGS
#   run CMD...             prints "+ CMD..." on stderr, then runs CMD unless
#                          DRY_RUN=1
#   gcloud_run ARGS...     run gcloud ARGS... [--project=$PROJECT]
#   require NAME...        fails with a clear message if a setting is empty
#   q ARG / quote_args ... shell-quote for printing and remote commands
#   die MSG / warn MSG / usage [STATUS]

if ((BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 4))); then
  echo "launch/: needs bash >= 4.4 (on macOS: brew install bash)" >&2
  exit 1
fi

LAUNCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck disable=SC2034  # used by the scripts that source this file
REPO_ROOT="$(cd "${LAUNCH_DIR}/.." && pwd)"
SCRIPT_NAME="launch/$(basename "$0")"
# lopt.main's exit status after SIGTERM or a preemption notice, once its
# checkpoint is saved (lopt.main.EXIT_PREEMPTED): run the same command again.
# shellcheck disable=SC2034  # used by the scripts that source this file
readonly EXIT_PREEMPTED=75

source "${LAUNCH_DIR}/env.sh"

die() {
  echo "${SCRIPT_NAME}: error: $*" >&2
  exit 1
}

# Prints the script's header comment (its usage) and exits with $1 (2).
usage() {
  awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' \
    "$0" >&2
  exit "${1:-2}"
}

warn() {
  echo "${SCRIPT_NAME}: warning: $*" >&2
}

# Quotes one word so that a POSIX shell reads it back unchanged; plain words
# stay as they are, so the printed commands are easy to read and to paste.
q() {
  local s="$1"
  if [[ -n "$s" && "$s" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$s"
  else
    printf "'%s'" "${s//\'/\'\\\'\'}"
  fi
}

quote_args() {
  local out="" arg
  for arg in "$@"; do
    out+="${out:+ }$(q "$arg")"
  done
  printf '%s' "$out"
}

log_cmd() {
  echo "+ $(quote_args "$@")" >&2
}

run() {
  log_cmd "$@"
  if [[ "${DRY_RUN}" == 1 ]]; then
    return 0
  fi
  "$@"
}

gcloud_run() {
  if [[ -n "${PROJECT}" ]]; then
    run gcloud "$@" "--project=${PROJECT}"
  else
    run gcloud "$@"
  fi
}

# Sets ARGS to the arguments without --dry-run; --dry-run sets DRY_RUN=1.
parse_dry_run() {
  ARGS=()
  local arg
  for arg in "$@"; do
    if [[ "$arg" == --dry-run ]]; then
      DRY_RUN=1
    else
      ARGS+=("$arg")
    fi
  done
  if [[ "${DRY_RUN}" == 1 ]]; then
    echo "${SCRIPT_NAME}: dry run: printing the commands, running none" >&2
  fi
}

require() {
  local name
  for name in "$@"; do
    if [[ -z "${!name:-}" ]]; then
      die "${name} is not set; export ${name}=... (see launch/env.sh)"
    fi
  done
}

# `gcloud compute tpus tpu-vm ssh` on the given workers with a command.
tpu_ssh() {
  local worker="$1" command="$2"
  gcloud_run compute tpus tpu-vm ssh "${TPU_NAME}" "--zone=${ZONE}" \
    "--worker=${worker}" "--command=${command}"
}

# A remote shell snippet (POSIX sh, one line) for a TPU worker: kills python
# processes that hold the TPU (/dev/accel* on v2-v4, /dev/vfio/* on v5e, v5p
# and v6e) and removes libtpu's lock file, which otherwise makes the next run
# fail with "TPU in use" after a crash or kill (style.md E.2). Only those PIDs
# are killed, never processes by name.
# shellcheck disable=SC2016  # the $ are for the remote shell
remote_free_tpu() {
  local lock
  lock="$(q "${TPU_LOCKFILE}")"
  [[ "${TPU_DEVICE_PATTERN}" =~ ^[A-Za-z0-9_./*|-]+$ ]] ||
    die "TPU_DEVICE_PATTERN may hold only letters, digits, _ . / * | -"
  printf '%s' 'pids=""; for d in /proc/[0-9]*; do case "$(cat "$d/comm" 2>/dev/null)" in python*) for f in "$d"/fd/*; do case "$(readlink "$f" 2>/dev/null)" in '"${TPU_DEVICE_PATTERN}"') pids="$pids ${d#/proc/}"; break;; esac; done;; esac; done; '
  printf '%s' 'if [ -n "$pids" ]; then echo "killing stale TPU processes:$pids"; kill $pids 2>/dev/null; sleep 5; kill -9 $pids 2>/dev/null; fi; '
  printf '%s' "rm -f ${lock} 2>/dev/null || sudo rm -f ${lock}"
}
