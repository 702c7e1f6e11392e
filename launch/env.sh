# shellcheck shell=bash
# shellcheck disable=SC2034  # sourced: the scripts in launch/ use these names
#
# Settings for the Cloud TPU VM scripts in launch/, read from the environment.
# Every script sources this file (through common.sh); nothing here is secret,
# and no project id or credential is stored in the repository. Export what you
# need before calling a script, e.g.
#
#   export TPU_NAME=lopt-v4 ZONE=us-central2-b ACCELERATOR=v4-32
#   export PROJECT=my-project BUCKET=my-bucket      # both optional
#   launch/create.sh --queued --spot && launch/setup.sh
#   launch/run.sh configs/default.py gs://my-bucket/lopt/run1
#
# Required by the scripts that talk to a TPU:
#   TPU_NAME        TPU VM (node) name.
#   ZONE            e.g. us-central2-b (v4), us-east5-a (v5p), us-east1-d (v6e).
# Required by create.sh only:
#   ACCELERATOR     accelerator type: v4-8, v4-32, v5litepod-16 (v5e),
#                   v5p-32, v6e-16, ...
# Optional:
#   PROJECT         GCP project; when set every gcloud call gets --project=.
#                   When unset gcloud uses its configured core/project.
#   RUNTIME         TPU software version (tpu-vm create --version /
#                   queued-resources create --runtime-version). Default by
#                   ACCELERATOR: v2/v3/v4 -> tpu-ubuntu2204-base,
#                   v5litepod (v5e) -> v2-alpha-tpuv5-lite,
#                   v5p -> v2-alpha-tpuv5, v6e -> v2-alpha-tpuv6e.
#   QUEUED_RESOURCE queued-resource id for create.sh/delete.sh --queued
#                   (default: $TPU_NAME-qr).
#   REPO_URL        git URL to clone on the workers (setup.sh); when unset the
#                   local checkout is copied with tpu-vm scp instead.
#   REPO_REF        branch/tag/commit to check out after cloning (optional).
#   REMOTE_DIR      checkout directory on the workers, relative to the remote
#                   home (default: lopt).
#   PYTHON_VERSION  Python for the venv on the workers (default 3.11). The TPU
#                   Ubuntu 22.04 images ship 3.10; the stack needs >= 3.11.
#   PY_SETUP        how setup_host.sh gets that Python: auto (an installed
#                   python >= PYTHON_VERSION, else uv), uv, deadsnakes, system.
#   PIP_CONSTRAINTS pip constraints file in the repo (default constraints.txt,
#                   the CI pins); set it empty to resolve freely.
#   BUCKET          GCS bucket (name or gs://name) for data and workdirs.
#   TFDS_DATA_DIR   passed to the job; default gs://$BUCKET/tensorflow_datasets
#                   when BUCKET is set.
#   POLL_INTERVAL   seconds between queued-resource state checks (default 30).
#   CREATE_TIMEOUT  seconds to wait for a queued resource to become ACTIVE
#                   (default 7200).
#   STOP_GRACE      seconds stop.sh waits after SIGTERM (default 120), so the
#                   run can write its preemption checkpoint.
#   TPU_LOCKFILE    libtpu's lock file on the workers (/tmp/libtpu_lockfile).
#   TPU_DEVICE_PATTERN  sh case pattern of the TPU device files that mark a
#                   python process as holding the TPU
#                   (default /dev/accel*|/dev/vfio/*).
#   DRY_RUN         1: print the commands, run none (same as --dry-run).

TPU_NAME="${TPU_NAME:-}"
ZONE="${ZONE:-}"
PROJECT="${PROJECT:-}"
ACCELERATOR="${ACCELERATOR:-}"
RUNTIME="${RUNTIME:-}"
QUEUED_RESOURCE="${QUEUED_RESOURCE:-${TPU_NAME:+${TPU_NAME}-qr}}"

REPO_URL="${REPO_URL:-}"
REPO_REF="${REPO_REF:-}"
REMOTE_DIR="${REMOTE_DIR:-lopt}"
PYTHON_VERSION="${PYTHON_VERSION:-3.11}"
PY_SETUP="${PY_SETUP:-auto}"
PIP_CONSTRAINTS="${PIP_CONSTRAINTS-constraints.txt}"

BUCKET="${BUCKET:-}"
BUCKET="${BUCKET#gs://}"
BUCKET="${BUCKET%/}"
TFDS_DATA_DIR="${TFDS_DATA_DIR:-${BUCKET:+gs://${BUCKET}/tensorflow_datasets}}"

POLL_INTERVAL="${POLL_INTERVAL:-30}"
CREATE_TIMEOUT="${CREATE_TIMEOUT:-7200}"
STOP_GRACE="${STOP_GRACE:-120}"
TPU_LOCKFILE="${TPU_LOCKFILE:-/tmp/libtpu_lockfile}"
TPU_DEVICE_PATTERN="${TPU_DEVICE_PATTERN:-/dev/accel*|/dev/vfio/*}"
DRY_RUN="${DRY_RUN:-0}"

# Runtime (software) version for an accelerator type, when RUNTIME is unset.
default_runtime() {
  case "$1" in
    v2-* | v3-* | v4-*) echo "tpu-ubuntu2204-base" ;;
    v5litepod-* | v5e-*) echo "v2-alpha-tpuv5-lite" ;;
    v5p-*) echo "v2-alpha-tpuv5" ;;
    v6e-*) echo "v2-alpha-tpuv6e" ;;
    *) return 1 ;;
  esac
}
