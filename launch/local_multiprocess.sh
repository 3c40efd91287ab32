#!/usr/bin/env bash
# Run the training job as N JAX processes on this machine: N x K CPU devices (a one-host rehearsal of
# a multi-host run), or with --gpus one process per GPU. See launch/README.md.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/local_multiprocess.sh [-n N] [-k K] [--port P] [--gpus] [--grace S] [--log-dir DIR]
                                    [--cmd COMMAND] [--dry-run] [-h] -- MAIN_ARGS...

Start N processes of `python3 -m aggpose_jax.main MAIN_ARGS...` that form one JAX job
(coordinator 127.0.0.1:P). MAIN_ARGS must contain --workdir DIR (or set --log-dir).

  -n, --num-processes N  processes (default 2; with --gpus: the number of visible GPUs)
  -k, --local-devices K  CPU devices per process (default 1; ignored with --gpus)
  --port P               coordinator port (default: a free port)
  --gpus                 one process per GPU: CUDA_VISIBLE_DEVICES=i for process i (the i-th entry of
                         an already set CUDA_VISIBLE_DEVICES)
  --grace S              when a process fails, SIGTERM the others, SIGKILL them S s later (default 10)
  --log-dir DIR          per-process logs (default WORKDIR/logs): DIR/process_<i>.log, appended;
                         process 0 is also shown on the console
  --cmd COMMAND          shell command replacing `python3 -m aggpose_jax.main` (tests, debugging);
                         also env AGGPOSE_LAUNCH_CMD
  --dry-run              print the commands (with their environment) and exit
  -h, --help             this text

Environment of process i:
  AGGPOSE_DISTRIBUTED=1 AGGPOSE_COORDINATOR=127.0.0.1:P AGGPOSE_NUM_PROCESSES=N AGGPOSE_PROCESS_ID=i
  CPU:  AGGPOSE_LOCAL_DEVICES=K JAX_PLATFORMS=cpu      GPU: CUDA_VISIBLE_DEVICES=<gpu of i>

Exit status: 0 when every process exits 0; otherwise the status of the first process that failed.
SIGTERM/SIGINT/SIGHUP to this script are sent on to every process as SIGTERM (the job saves a
checkpoint and exits; rerun the same command to resume); a second signal kills them.
EOF
}

die() { echo "local_multiprocess.sh: $*" >&2; exit 2; }
say() { echo "local_multiprocess.sh: $*" >&2; }

# Shell-quote each argument (single quotes unless it is plain), joined by spaces.
quote() {
  local out="" arg q="'\\''"
  for arg in "$@"; do
    if [[ "${arg}" =~ ^[A-Za-z0-9_./:=,+@%-]+$ ]]; then
      out+=" ${arg}"
    else
      out+=" '${arg//\'/${q}}'"
    fi
  done
  printf '%s' "${out# }"
}

PYTHON=${PYTHON:-python3}
NUM=""
LOCAL_DEVICES=1
PORT=""
GPUS=0
GRACE=10
LOG_DIR=""
CMD=${AGGPOSE_LAUNCH_CMD:-}
DRY_RUN=0

while (($#)); do
  case "$1" in
    -n | --num-processes) NUM=${2:?"$1 needs a value"}; shift 2 ;;
    -k | --local-devices) LOCAL_DEVICES=${2:?"$1 needs a value"}; shift 2 ;;
    --port) PORT=${2:?"$1 needs a value"}; shift 2 ;;
    --gpus) GPUS=1; shift ;;
    --grace) GRACE=${2:?"$1 needs a value"}; shift 2 ;;
    --log-dir) LOG_DIR=${2:?"$1 needs a value"}; shift 2 ;;
    --cmd) CMD=${2:?"$1 needs a value"}; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown option '$1' (the job's arguments go after --; -h for help)" ;;
  esac
done
MAIN_ARGS=("$@")

is_count() { [[ "$1" =~ ^[1-9][0-9]*$ ]]; }
if [[ -n "${NUM}" ]] && ! is_count "${NUM}"; then die "-n: expected a positive integer, got '${NUM}'"; fi

# GPU ids: the entries of CUDA_VISIBLE_DEVICES, else 0..(number of GPUs - 1).
GPU_IDS=()
if ((GPUS)); then
  if [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
    IFS=, read -r -a GPU_IDS <<<"${CUDA_VISIBLE_DEVICES}"
  elif command -v nvidia-smi >/dev/null 2>&1; then
    count=$(nvidia-smi -L | grep -c '^GPU ' || true)
    for ((g = 0; g < count; g++)); do GPU_IDS+=("${g}"); done
  fi
  if [[ -z "${NUM}" ]]; then
    ((${#GPU_IDS[@]})) || die "--gpus: no GPU found (nvidia-smi, CUDA_VISIBLE_DEVICES); give -n"
    NUM=${#GPU_IDS[@]}
  fi
  if ((${#GPU_IDS[@]} == 0)); then
    for ((g = 0; g < NUM; g++)); do GPU_IDS+=("${g}"); done
  elif ((NUM > ${#GPU_IDS[@]})); then
    die "--gpus: -n ${NUM} but only ${#GPU_IDS[@]} GPUs (${GPU_IDS[*]}) are visible"
  fi
fi
NUM=${NUM:-2}
is_count "${LOCAL_DEVICES}" || die "-k: expected a positive integer, got '${LOCAL_DEVICES}'"
[[ "${GRACE}" =~ ^[0-9]+$ ]] || die "--grace: expected whole seconds, got '${GRACE}'"

if [[ -z "${LOG_DIR}" ]]; then
  workdir=""
  for ((a = 0; a < ${#MAIN_ARGS[@]}; a++)); do
    case "${MAIN_ARGS[a]}" in
      --workdir=*) workdir=${MAIN_ARGS[a]#--workdir=} ;;
      --workdir) workdir=${MAIN_ARGS[a + 1]:-} ;;
    esac
  done
  [[ -n "${workdir}" ]] || die "no --workdir in the job's arguments (after --), and no --log-dir"
  LOG_DIR=${workdir%/}/logs
fi

if [[ -z "${PORT}" ]]; then
  PORT=$("${PYTHON}" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])') \
    || die "could not find a free port (${PYTHON}); give --port"
fi
if ! [[ "${PORT}" =~ ^[0-9]+$ ]] || ((PORT < 1 || PORT > 65535)); then
  die "--port: expected 1-65535, got '${PORT}'"
fi

if [[ -z "${CMD}" ]]; then
  CMD="$(quote "${PYTHON}") -m aggpose_jax.main"
fi
LINE=${CMD}
if ((${#MAIN_ARGS[@]})); then
  LINE+=" $(quote "${MAIN_ARGS[@]}")"
fi

# The environment of process $1, as NAME=VALUE words.
process_env() {
  ENV=(AGGPOSE_DISTRIBUTED=1 "AGGPOSE_COORDINATOR=127.0.0.1:${PORT}" "AGGPOSE_NUM_PROCESSES=${NUM}"
    "AGGPOSE_PROCESS_ID=$1")
  if ((GPUS)); then
    ENV+=("CUDA_VISIBLE_DEVICES=${GPU_IDS[$1]}")
  else
    ENV+=("AGGPOSE_LOCAL_DEVICES=${LOCAL_DEVICES}" JAX_PLATFORMS=cpu)
  fi
}

if ((DRY_RUN)); then
  for ((i = 0; i < NUM; i++)); do
    process_env "${i}"
    extra=""
    if ((i == 0)); then extra=", also on the console"; fi
    echo "# process ${i} of ${NUM}; log: ${LOG_DIR}/process_${i}.log${extra}"
    echo "$(quote "${ENV[@]}") ${LINE}"
  done
  exit 0
fi

mkdir -p "${LOG_DIR}"
# Each process leads its own process group (setsid), so a final SIGKILL also reaches its children
# (data-loader workers); SIGTERM goes to the process itself, which stops them cleanly.
SETSID=()
if command -v setsid >/dev/null 2>&1; then SETSID=(setsid); fi

PIDS=()
STATUS=()
for ((i = 0; i < NUM; i++)); do
  process_env "${i}"
  log=${LOG_DIR}/process_${i}.log
  echo "=== $(date '+%F %T') process ${i} of ${NUM}: $(quote "${ENV[@]}") ${LINE}" >>"${log}"
  if ((i == 0)); then
    "${SETSID[@]}" env "${ENV[@]}" bash -c "exec ${LINE}" > >(tee -i -a "${log}") 2>&1 &
  else
    "${SETSID[@]}" env "${ENV[@]}" bash -c "exec ${LINE}" >>"${log}" 2>&1 &
  fi
  PIDS+=("$!")
  STATUS+=("")
done
say "started ${NUM} processes (coordinator 127.0.0.1:${PORT}); logs in ${LOG_DIR}/process_<i>.log"

# Send signal $1 to every process still running; KILL goes to the whole process group.
signal_all() {
  local i
  for ((i = 0; i < NUM; i++)); do
    [[ -z "${STATUS[i]}" ]] || continue
    if [[ "$1" == KILL && ${#SETSID[@]} -gt 0 ]]; then
      kill -KILL -- "-${PIDS[i]}" 2>/dev/null || kill -KILL "${PIDS[i]}" 2>/dev/null || true
    else
      kill "-$1" "${PIDS[i]}" 2>/dev/null || true
    fi
  done
}

SIGNALLED=0
# shellcheck disable=SC2317,SC2329 # (invoked by the trap below)
on_signal() {
  if ((SIGNALLED)); then
    say "second signal: killing all processes"
    signal_all KILL
  else
    SIGNALLED=1
    say "signal received: sending SIGTERM to all processes (they save a checkpoint and exit)"
    signal_all TERM
  fi
}
trap 'on_signal' TERM INT HUP

now_us() { local t=${EPOCHREALTIME//[!0-9]/}; echo "${t:-$((SECONDS * 1000000))}"; }

FIRST_FAILED=""
DEADLINE=""
KILLED=0
running=${NUM}
while ((running > 0)); do
  for ((i = 0; i < NUM; i++)); do
    [[ -z "${STATUS[i]}" ]] || continue
    kill -0 "${PIDS[i]}" 2>/dev/null && continue
    rc=0
    wait "${PIDS[i]}" || rc=$?
    STATUS[i]=${rc}
    running=$((running - 1))
    if ((rc != 0)) && [[ -z "${FIRST_FAILED}" ]]; then
      FIRST_FAILED=${i}
      if ((running > 0)); then
        say "process ${i} exited with status ${rc} (log: ${LOG_DIR}/process_${i}.log); stopping the others" \
          "(SIGTERM, SIGKILL after ${GRACE} s)"
        signal_all TERM
        DEADLINE=$(($(now_us) + GRACE * 1000000))
      fi
    fi
  done
  if [[ -n "${DEADLINE}" ]] && ((!KILLED && running > 0 && $(now_us) >= DEADLINE)); then
    say "grace period over: SIGKILL to the ${running} remaining processes"
    signal_all KILL
    KILLED=1
  fi
  if ((running > 0)); then sleep 0.1; fi
done
# Processes a job left behind in its process group (e.g. data-loader workers of a crashed process).
if ((${#SETSID[@]})); then
  for ((i = 0; i < NUM; i++)); do
    if kill -0 -- "-${PIDS[i]}" 2>/dev/null; then
      say "killing what process ${i} left running"
      kill -KILL -- "-${PIDS[i]}" 2>/dev/null || true
    fi
  done
fi

if [[ -n "${FIRST_FAILED}" ]]; then
  say "failed: process ${FIRST_FAILED} exited with status ${STATUS[FIRST_FAILED]}"
  rc=${STATUS[FIRST_FAILED]}
  exit $((rc > 255 ? 1 : rc))
fi
exit 0
