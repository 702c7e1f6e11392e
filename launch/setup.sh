#!/usr/bin/env bash
# Puts the code on every worker of $TPU_NAME, installs it, and checks that JAX
# sees the whole slice.
#
#   launch/setup.sh [--dry-run]
#
# 1. Code: with REPO_URL set, `git clone $REPO_URL $REMOTE_DIR` on every
#    worker (or fetch/pull when it is already there; REPO_REF picks a ref).
#    Otherwise this checkout (tracked and untracked files that git does not
#    ignore, so no .venv or workdirs) is packed into a tarball, copied with
#    `gcloud compute tpus tpu-vm scp --worker=all` and unpacked into
#    $REMOTE_DIR (existing files are overwritten; the remote .venv is kept).
# 2. Install: runs launch/setup_host.sh on --worker=all: a venv with Python >=
#    $PYTHON_VERSION (3.11; the images ship 3.10) and `pip install -e '.[tpu]'`.
# 3. Smoke check on --worker=all: jax.distributed.initialize(), then every
#    host prints its process index, local and global device counts; fails if
#    the platform is not tpu.
#
# Settings (launch/env.sh): TPU_NAME, ZONE required; PROJECT, REPO_URL,
# REPO_REF, REMOTE_DIR, PYTHON_VERSION, PY_SETUP, PIP_CONSTRAINTS optional.
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
require TPU_NAME ZONE REMOTE_DIR

dir="$(q "${REMOTE_DIR}")"
tarball="lopt-src.tar.gz"

# Writes a gzipped tarball of the checkout's files to $1: what git tracks or
# would track (so .venv, workdirs and caches stay behind), or, outside a git
# checkout, everything but those.
make_source_tarball() {
  local out="$1" list
  if git -C "${REPO_ROOT}" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    list="$(mktemp)"
    while IFS= read -r -d '' f; do
      if [[ -e "${REPO_ROOT}/${f}" ]]; then
        printf '%s\0' "${f}"
      fi
    done < <(git -C "${REPO_ROOT}" ls-files -z --cached --others \
      --exclude-standard) >"${list}"
    tar -C "${REPO_ROOT}" --null -T "${list}" -czf "${out}"
    rm -f "${list}"
  else
    tar -C "${REPO_ROOT}" --exclude=./.venv --exclude=./.git \
      --exclude=./workdirs --exclude='*/__pycache__' -czf "${out}" .
  fi
}

# 1. Code.
if [[ -n "${REPO_URL}" ]]; then
  url="$(q "${REPO_URL}")"
  if [[ -n "${REPO_REF}" ]]; then
    ref="$(q "${REPO_REF}")"
    update="git -C ${dir} fetch --tags origin && git -C ${dir} checkout --detach ${ref}"
    clone="git clone ${url} ${dir} && git -C ${dir} checkout --detach ${ref}"
  else
    update="git -C ${dir} pull --ff-only"
    clone="git clone ${url} ${dir}"
  fi
  get_code="if [ -d ${dir}/.git ]; then ${update}; else ${clone}; fi"
else
  tmp="$(mktemp -d)"
  trap 'rm -rf "${tmp}"' EXIT
  run make_source_tarball "${tmp}/${tarball}"
  gcloud_run compute tpus tpu-vm scp "${tmp}/${tarball}" \
    "${TPU_NAME}:${tarball}" "--zone=${ZONE}" --worker=all
  get_code="mkdir -p ${dir} && tar -xzf ${tarball} -C ${dir} && rm -f ${tarball}"
fi

# 2. Install (setup_host.sh reads these settings from its environment).
host_env="$(quote_args "PYTHON_VERSION=${PYTHON_VERSION}" \
  "PY_SETUP=${PY_SETUP}" "PIP_CONSTRAINTS=${PIP_CONSTRAINTS}")"
tpu_ssh all "set -e; ${get_code}; cd ${dir}; env ${host_env} bash launch/setup_host.sh"

# 3. Smoke check, all workers at once (jax.distributed needs every host).
smoke='import jax; jax.distributed.initialize(); d = jax.devices(); '
smoke+='print(f"host {jax.process_index()}/{jax.process_count()}: '
smoke+='jax {jax.__version__}, {jax.local_device_count()} local / '
smoke+='{jax.device_count()} global devices ({d[0].platform}, '
smoke+='{d[0].device_kind})", flush=True); '
smoke+='assert d[0].platform == "tpu", "JAX does not see the TPU"'
free_tpu="$(remote_free_tpu)"
tpu_ssh all "cd ${dir} && { ${free_tpu}; } && .venv/bin/python -c $(q "${smoke}")"

if [[ "${DRY_RUN}" != 1 ]]; then
  echo "${SCRIPT_NAME}: ${TPU_NAME} is set up; next: launch/run.sh CONFIG gs://BUCKET/WORKDIR" >&2
fi
