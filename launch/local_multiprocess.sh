#!/usr/bin/env bash
# Runs N processes of `python -m lopt.main` on this machine as one
# jax.distributed job (multi-host behaviour without a pod: CPU or GPUs).
#
#   launch/local_multiprocess.sh N CONFIG WORKDIR [--config.a.b=v ...] [--dry-run]
#
# Process i (0 <= i < N) runs, with its output in WORKDIR/logs/process_i.log:
#   env JAX_PLATFORMS=cpu PYTHONPATH=<repo> $PYTHON -m lopt.main \
#     --config=CONFIG --workdir=WORKDIR --distributed \
#     --coordinator_address=localhost:PORT --num_processes=N --process_id=i \
#     --alsologtostderr [overrides]
# (jax.distributed.initialize() reads only the coordinator address from the
# environment, not the process count or id, so they go as flags.) The script
# waits for all of them; when one fails it stops the others, prints the end of
# the failing log and exits 1. When they stop preempted (exit 75, lopt.main's
# EXIT_PREEMPTED: SIGTERM or a preemption notice, checkpoint saved), it exits
# 75 too; SIGTERM or SIGINT to the script is passed on to every process, which
# saves and stops. Run it under launch/supervise.sh to restart it on 75.
#
# Environment:
#   PYTHON               interpreter (default: the repo's .venv/bin/python,
#                        else python3)
#   JAX_PLATFORMS        default cpu; set it to cuda for GPUs, or to '' to let
#                        JAX choose
#   JAX_NUM_CPU_DEVICES  CPU devices per process (JAX's own variable)
#   GPUS_PER_PROCESS     on cuda/rocm/gpu: process i gets GPUs i*G..i*G+G-1
#                        through JAX_LOCAL_DEVICE_IDS (default 1; 0: no split)
#   COORDINATOR_PORT     default: a free port
#   LOG_DIR              default WORKDIR/logs (required for a gs:// WORKDIR)
#   LOPT_MODULE          default lopt.main
#   DRY_RUN=1            same as --dry-run: print the N commands, run none
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_dry_run "$@"
case "${ARGS[0]:-}" in
  -h | --help) usage 0 ;;
esac
if [[ ${#ARGS[@]} -lt 3 ]]; then
  echo "${SCRIPT_NAME}: needs N, CONFIG and WORKDIR" >&2
  usage
fi
num="${ARGS[0]}"
config="${ARGS[1]}"
workdir="${ARGS[2]}"
overrides=("${ARGS[@]:3}")
[[ "${num}" =~ ^[1-9][0-9]*$ ]] ||
  die "N must be a positive number of processes, got '${num}'"

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "${REPO_ROOT}/.venv/bin/python" ]]; then
    PYTHON="${REPO_ROOT}/.venv/bin/python"
  else
    PYTHON=python3
  fi
fi
module="${LOPT_MODULE:-lopt.main}"
platforms="${JAX_PLATFORMS-cpu}"
gpus_per_process="${GPUS_PER_PROCESS:-1}"
[[ "${gpus_per_process}" =~ ^[0-9]+$ ]] ||
  die "GPUS_PER_PROCESS must be a number, got '${gpus_per_process}'"

if [[ -n "${LOG_DIR:-}" ]]; then
  log_dir="${LOG_DIR}"
elif [[ "${workdir}" == *://* ]]; then
  die "WORKDIR ${workdir} is remote; set LOG_DIR to a local directory for the process logs"
else
  log_dir="${workdir%/}/logs"
fi

# A free port, from the OS (python3, or $PYTHON where there is none).
free_port() {
  local py
  for py in python3 "${PYTHON}"; do
    if command -v "${py}" >/dev/null; then
      "${py}" -c 'import socket
s = socket.socket()
s.bind(("localhost", 0))
print(s.getsockname()[1])' && return 0
    fi
  done
  return 1
}
port="${COORDINATOR_PORT:-}"
if [[ -z "${port}" ]]; then
  port="$(free_port)" || die "could not pick a free port; set COORDINATOR_PORT"
fi
[[ "${port}" =~ ^[0-9]+$ ]] || die "COORDINATOR_PORT must be a port number"

run mkdir -p "${log_dir}"

pids=()
logs=()
stop_all() {
  local pid
  for pid in "${pids[@]}"; do
    kill -TERM "${pid}" 2>/dev/null || true
  done
}
stopping=0
trap 'stopping=1; stop_all' INT TERM

for ((i = 0; i < num && !stopping; i++)); do
  env_vars=("JAX_PLATFORMS=${platforms}"
    "PYTHONPATH=${REPO_ROOT}${PYTHONPATH:+:${PYTHONPATH}}")
  case "${platforms}" in
    cuda* | gpu* | rocm*)
      if [[ "${gpus_per_process}" -gt 0 && -z "${JAX_LOCAL_DEVICE_IDS:-}" ]]; then
        ids=""
        for ((g = i * gpus_per_process; g < (i + 1) * gpus_per_process; g++)); do
          ids+="${ids:+,}${g}"
        done
        env_vars+=("JAX_LOCAL_DEVICE_IDS=${ids}")
      fi
      ;;
  esac
  cmd=(env "${env_vars[@]}" "${PYTHON}" -m "${module}"
    "--config=${config}" "--workdir=${workdir}" --distributed
    "--coordinator_address=localhost:${port}" "--num_processes=${num}"
    "--process_id=${i}" --alsologtostderr "${overrides[@]}")
  log="${log_dir}/process_${i}.log"
  logs+=("${log}")
  echo "+ $(quote_args "${cmd[@]}") > $(q "${log}") 2>&1 &" >&2
  if [[ "${DRY_RUN}" != 1 ]]; then
    "${cmd[@]}" >"${log}" 2>&1 </dev/null &
    pids+=("$!")
  fi
done

if [[ "${DRY_RUN}" == 1 ]]; then
  exit 0
fi
echo "${SCRIPT_NAME}: ${num} processes (PIDs ${pids[*]}), coordinator localhost:${port}, logs in ${log_dir}" >&2

# Wait for all; on the first failure stop the rest (they would otherwise hang
# in a collective until the distributed heartbeat times out).
declare -A status=()
failed=()
preempted=()
started=${#pids[@]}  # fewer than N if a signal came while starting them
while [[ ${#status[@]} -lt ${started} ]]; do
  for ((i = 0; i < started; i++)); do
    if [[ -n "${status[${i}]:-}" ]] || kill -0 "${pids[i]}" 2>/dev/null; then
      continue
    fi
    rc=0
    wait "${pids[i]}" || rc=$?
    status[${i}]="${rc}"
    if [[ "${rc}" == "${EXIT_PREEMPTED}" ]]; then
      # Every process reaches the same preemption step: no one to stop.
      preempted+=("${i}")
    elif [[ "${rc}" != 0 && ${#failed[@]} -eq 0 ]]; then
      failed+=("${i}")
      echo "${SCRIPT_NAME}: process ${i} failed (exit ${rc}); stopping the others" >&2
      stop_all
    elif [[ "${rc}" != 0 ]]; then
      failed+=("${i}")
    fi
  done
  sleep 0.2
done

if [[ ${#failed[@]} -gt 0 ]]; then
  first="${failed[0]}"
  echo "${SCRIPT_NAME}: last lines of ${logs[first]}:" >&2
  tail -n 30 "${logs[first]}" >&2 || true
  summary=""
  for i in "${failed[@]}"; do
    summary+=" ${i}:${status[${i}]}"
  done
  die "failed processes (id:exit):${summary}; first failure: process ${first}, see ${logs[first]}"
fi
if [[ ${#preempted[@]} -gt 0 ]]; then
  echo "${SCRIPT_NAME}: preempted: processes ${preempted[*]} saved a checkpoint and stopped (exit ${EXIT_PREEMPTED}); the same command resumes" >&2
  exit "${EXIT_PREEMPTED}"
fi
echo "${SCRIPT_NAME}: all ${num} processes finished" >&2
