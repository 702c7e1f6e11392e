#!/usr/bin/env bash
# Runs ON each TPU VM worker (launch/setup.sh calls it with --worker=all):
# creates the venv $VENV (default .venv in the repo) with Python >=
# $PYTHON_VERSION and installs lopt with the TPU extra into it.
#
#   bash launch/setup_host.sh [--dry-run]
#
# The TPU Ubuntu 22.04 images ship Python 3.10, but jax, flax, orbax, numpy
# and scikit-learn need >= 3.11. PY_SETUP picks how to get it:
#   auto        (default) an installed python3.N >= PYTHON_VERSION if there is
#               one, else uv
#   uv          `uv venv --python $PYTHON_VERSION` (uv fetches a standalone
#               CPython; uv itself comes from pip --user or astral's installer)
#   deadsnakes  apt: ppa:deadsnakes/ppa, python$PYTHON_VERSION-venv
#   system      python3 as it is (must already be new enough)
# Installs `pip install -c $PIP_CONSTRAINTS -e '.[tpu]'` when pyproject.toml
# has the tpu extra, else `-e . 'jax[tpu]' gcsfs`; PIP_EXTRA_PACKAGES (space
# separated) are added. An existing venv with a new enough Python is reused.
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

cd "${REPO_ROOT}"
VENV="${VENV:-.venv}"
[[ "${PYTHON_VERSION}" =~ ^3\.[0-9]+$ ]] ||
  die "PYTHON_VERSION must look like 3.11, got '${PYTHON_VERSION}'"
minor="${PYTHON_VERSION#3.}"

# True if $1 runs and is Python >= PYTHON_VERSION.
new_enough() {
  "$1" -c "import sys; sys.exit(sys.version_info < (3, ${minor}))" \
    >/dev/null 2>&1
}

find_python() {
  local cand
  for cand in python3 python3.14 python3.13 python3.12 "python3.${minor}"; do
    if command -v "${cand}" >/dev/null && new_enough "${cand}"; then
      command -v "${cand}"
      return 0
    fi
  done
  return 1
}

uv_bin() {
  if command -v uv >/dev/null; then
    command -v uv
  else
    echo "${HOME}/.local/bin/uv"
  fi
}

install_uv() {
  if [[ -x "$(uv_bin)" ]]; then
    return 0
  fi
  if python3 -m pip --version >/dev/null 2>&1; then
    run python3 -m pip install --user --upgrade uv
  else
    log_cmd sh -c 'curl -LsSf https://astral.sh/uv/install.sh | sh'
    if [[ "${DRY_RUN}" != 1 ]]; then
      curl -LsSf https://astral.sh/uv/install.sh | sh
    fi
  fi
}

make_venv() {
  local setup="${PY_SETUP}" py=""
  if [[ "${setup}" == auto ]]; then
    if py="$(find_python)"; then
      setup=system
    else
      setup=uv
    fi
  fi
  echo "${SCRIPT_NAME}: creating ${VENV} with Python >= ${PYTHON_VERSION} (${setup})" >&2
  case "${setup}" in
    uv)
      install_uv
      run "$(uv_bin)" venv --seed --python "${PYTHON_VERSION}" "${VENV}"
      ;;
    deadsnakes)
      run sudo add-apt-repository -y ppa:deadsnakes/ppa
      run sudo apt-get update
      run sudo apt-get install -y "python${PYTHON_VERSION}" \
        "python${PYTHON_VERSION}-venv" "python${PYTHON_VERSION}-dev"
      run "python${PYTHON_VERSION}" -m venv "${VENV}"
      ;;
    system)
      if [[ -z "${py}" ]]; then
        py="$(find_python)" ||
          die "no python >= ${PYTHON_VERSION} on this host; use PY_SETUP=uv or deadsnakes"
      fi
      run "${py}" -m venv "${VENV}"
      ;;
    *) die "PY_SETUP must be auto, uv, deadsnakes or system, got '${PY_SETUP}'" ;;
  esac
}

if new_enough "${VENV}/bin/python"; then
  echo "${SCRIPT_NAME}: reusing ${VENV} ($("${VENV}/bin/python" -V 2>&1))" >&2
else
  make_venv
fi

pip_args=(install)
if [[ -n "${PIP_CONSTRAINTS}" ]]; then
  if [[ -f "${PIP_CONSTRAINTS}" ]]; then
    pip_args+=(-c "${PIP_CONSTRAINTS}")
  else
    warn "no constraints file ${PIP_CONSTRAINTS}; resolving without pins"
  fi
fi
if grep -Eq '^[[:space:]]*"?tpu"?[[:space:]]*=' pyproject.toml; then
  pip_args+=(-e '.[tpu]')
else
  pip_args+=(-e . 'jax[tpu]' gcsfs)
fi
if [[ -n "${PIP_EXTRA_PACKAGES:-}" ]]; then
  read -r -a more <<<"${PIP_EXTRA_PACKAGES}"
  pip_args+=("${more[@]}")
fi
run "${VENV}/bin/python" -m pip install --upgrade pip
run "${VENV}/bin/python" -m pip "${pip_args[@]}"
echo "${SCRIPT_NAME}: done on $(hostname)" >&2
