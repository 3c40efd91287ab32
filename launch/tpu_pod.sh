#!/usr/bin/env bash
# Train on a Cloud TPU VM slice (one JAX process per worker host): check that the run's batch fits the
# slice (ahead-of-time compile, no TPU needed), create the slice (directly or as a queued resource),
# set up every worker (mounts, a Python 3.11 environment, jax[tpu] and this package), run the same
# command on all workers (a log per worker in WORKDIR/logs), recreate and rerun after a preemption.
# The worker side is launch/tpu_worker.sh. See launch/README.md.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu_pod.sh [options] STEP... [-- MAIN_ARGS...]

STEP: check | create | setup | run | delete | all (= create setup run); steps run in the order given.
create runs check first unless --no-check.

  --name NAME              TPU VM (and queued resource) name          [env TPU_NAME]
  --zone ZONE              e.g. us-central2-b                         [env ZONE]
  --project PROJECT        default: gcloud's configured project       [env PROJECT]
  --accelerator-type TYPE  default v4-32                              [env ACCELERATOR_TYPE]
  --runtime-version V      default: derived from the type (v2/v3/v4: tpu-ubuntu2204-base,
                           v5litepod/v5e: v2-alpha-tpuv5-lite, v5p: v2-alpha-tpuv5,
                           v6e: v2-alpha-tpuv6e)                      [env RUNTIME_VERSION]
  --topology T             check: the slice's topology, default derived from the type
                           (v4-32 -> v4:2x2x4, v5litepod-16 -> v5e:4x4, v5p-128 -> v5p:4x4x4,
                           v6e-64 -> v6e:8x8)                         [env TOPOLOGY]
  --no-check               create: skip the check (benchmarks/tpu_compile.py --check compiles the
                           run's train step for the topology here; needs pip install '.[tpu-aot]')
  --queued                 create through a queued resource (waits until ACTIVE)   [env QUEUED=1]
  --spot                   spot capacity (can be preempted: use with --resume)     [env SPOT=1]
  --resume                 run: when the job fails and the slice is no longer READY/ACTIVE
                           (preempted), delete and recreate it, set it up and rerun the same
                           command; the job resumes from WORKDIR's latest checkpoint
  --max-restarts N         recreations allowed with --resume (default 20)
  --repo-dir DIR           the repository on each worker, relative to the home directory or
                           absolute (default aggpose-jax)             [env REPO_DIR]
  --venv DIR               the Python environment on each worker, made with uv (default
                           aggpose-venv in the home directory; the images' Python 3.10 is too old)
  --python-version V       its Python (default 3.11)                  [env PYTHON_VERSION]
  --no-copy                setup: REPO_DIR already holds the repository on every worker (e.g. on
                           the shared mount); default: copy this checkout there (tar + scp)
  --nfs SERVER:/EXPORT     setup: mount this NFS export (Filestore) read-write at --mount on every
                           worker: the place for WORKDIR
  --mount DIR              mount point of --nfs (default /mnt/shared)             [env MOUNT]
  --bucket BUCKET          setup: mount this GCS bucket read-only with gcsfuse at --bucket-mount
                           on every worker: for the data (gcsfuse cannot rename directories)
  --bucket-mount DIR       mount point of --bucket (default /mnt/gcs)             [env BUCKET_MOUNT]
  --env NAME=VALUE         extra environment for the job (repeatable), e.g. LIBTPU_INIT_ARGS=...
  --dry-run                print every command (the check, tar, gcloud) instead of running it
  -h, --help               this text

WORKDIR: --workdir in MAIN_ARGS, else env WORKDIR (added as --workdir): a gs://BUCKET/PATH URL
(checkpoints, records and the lock written to Cloud Storage directly, as the TPU VM's service account;
the package is installed with its 'gcs' extra), or an absolute path every worker sees and may rename
in: on the NFS share (a local disk only for a one-host slice), never on the gcsfuse mount.
Worker logs: WORKDIR/logs/worker_<hostname>.log (appended); for a gs:// WORKDIR on each worker's disk,
~/aggpose-logs/worker_<hostname>.log.
Exit status: 0 done; 2 bad usage or input; 3 the check found that the batch does not fit (nothing
was created) or a worker's TPU is held by another program; else the failed command's status.
EOF
}

die() { echo "tpu_pod.sh: $*" >&2; exit 2; }
say() { echo "tpu_pod.sh: $*" >&2; }

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

# The software version ("runtime") for accelerator type $1, from Cloud TPU's table; empty if unknown.
runtime_for() {
  case "$1" in
    v2-* | v3-* | v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-* | v5e-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) echo "" ;;
  esac
}

# The topology name (jax.experimental.topologies) of accelerator type $1; empty if unknown.
# v4/v5p types count TensorCores (2 per chip), v5e/v6e types count chips.
topology_for() {
  local family=${1%-*} count=${1##*-}
  [[ "${count}" =~ ^[0-9]+$ ]] || { echo ""; return 0; }
  case "${family}" in
    v4 | v5p)
      case $((count / 2)) in
        4) echo "${family}:2x2x1" ;;
        8) echo "${family}:2x2x2" ;;
        16) echo "${family}:2x2x4" ;;
        32) echo "${family}:2x4x4" ;;
        64) echo "${family}:4x4x4" ;;
        128) echo "${family}:4x4x8" ;;
        256) echo "${family}:4x8x8" ;;
        512) echo "${family}:8x8x8" ;;
        1024) echo "${family}:8x8x16" ;;
        2048) echo "${family}:8x16x16" ;;
        4096) echo "${family}:16x16x16" ;;
        *) echo "" ;;
      esac
      ;;
    v5litepod | v5e | v6e)
      local name=v5e
      [[ "${family}" != v6e ]] || name=v6e
      case "${count}" in
        1) echo "${name}:1x1" ;;
        4) echo "${name}:2x2" ;;
        8) echo "${name}:2x4" ;;
        16) echo "${name}:4x4" ;;
        32) echo "${name}:4x8" ;;
        64) echo "${name}:8x8" ;;
        128) echo "${name}:8x16" ;;
        256) echo "${name}:16x16" ;;
        *) echo "" ;;
      esac
      ;;
    *) echo "" ;;
  esac
}

NAME=${TPU_NAME:-}
ZONE=${ZONE:-}
PROJECT=${PROJECT:-}
ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-v4-32}
RUNTIME_VERSION=${RUNTIME_VERSION:-}
TOPOLOGY=${TOPOLOGY:-}
CHECK=1
QUEUED=${QUEUED:-0}
SPOT=${SPOT:-0}
RESUME=0
MAX_RESTARTS=20
REPO_DIR=${REPO_DIR:-aggpose-jax}
VENV_DIR=${VENV_DIR:-aggpose-venv}
PYTHON_VERSION=${PYTHON_VERSION:-3.11}
COPY=1
NFS=""
BUCKET=""
MOUNT=${MOUNT:-/mnt/shared}
BUCKET_MOUNT=${BUCKET_MOUNT:-/mnt/gcs}
JOB_ENV=()
DRY_RUN=0
PYTHON=${PYTHON:-python3} # local: runs the check
POLL_SECS=${POLL_SECS:-30}
STEPS=()

while (($#)); do
  case "$1" in
    --name) NAME=${2:?"$1 needs a value"}; shift 2 ;;
    --zone) ZONE=${2:?"$1 needs a value"}; shift 2 ;;
    --project) PROJECT=${2:?"$1 needs a value"}; shift 2 ;;
    --accelerator-type) ACCELERATOR_TYPE=${2:?"$1 needs a value"}; shift 2 ;;
    --runtime-version) RUNTIME_VERSION=${2:?"$1 needs a value"}; shift 2 ;;
    --topology) TOPOLOGY=${2:?"$1 needs a value"}; shift 2 ;;
    --no-check) CHECK=0; shift ;;
    --queued) QUEUED=1; shift ;;
    --spot) SPOT=1; shift ;;
    --resume) RESUME=1; shift ;;
    --max-restarts) MAX_RESTARTS=${2:?"$1 needs a value"}; shift 2 ;;
    --repo-dir) REPO_DIR=${2:?"$1 needs a value"}; shift 2 ;;
    --venv) VENV_DIR=${2:?"$1 needs a value"}; shift 2 ;;
    --python-version) PYTHON_VERSION=${2:?"$1 needs a value"}; shift 2 ;;
    --no-copy) COPY=0; shift ;;
    --nfs) NFS=${2:?"$1 needs a value"}; shift 2 ;;
    --bucket) BUCKET=${2:?"$1 needs a value"}; shift 2 ;;
    --mount) MOUNT=${2:?"$1 needs a value"}; shift 2 ;;
    --bucket-mount) BUCKET_MOUNT=${2:?"$1 needs a value"}; shift 2 ;;
    --env) JOB_ENV+=("${2:?"$1 needs a value"}"); shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    check | create | setup | run | delete) STEPS+=("$1"); shift ;;
    all) STEPS+=(create setup run); shift ;;
    --) shift; break ;;
    *) die "unknown option or step '$1' (the job's arguments go after --; -h for help)" ;;
  esac
done
MAIN_ARGS=("$@")

((${#STEPS[@]})) || die "no step given (check, create, setup, run, delete, all; -h for help)"
[[ -n "${NAME}" ]] || die "set TPU_NAME or --name"
[[ -n "${ZONE}" ]] || die "set ZONE or --zone"
[[ "${MAX_RESTARTS}" =~ ^[0-9]+$ ]] || die "--max-restarts: expected a whole number, got '${MAX_RESTARTS}'"
for kv in "${JOB_ENV[@]}"; do
  [[ "${kv}" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env: expected NAME=VALUE, got '${kv}'"
done
[[ "${MOUNT}" == /* && "${BUCKET_MOUNT}" == /* ]] || die "--mount/--bucket-mount: expected absolute paths"
[[ -z "${NFS}" || -z "${BUCKET}" || "${MOUNT%/}" != "${BUCKET_MOUNT%/}" ]] \
  || die "--nfs and --bucket need different mount points (--mount, --bucket-mount)"

WORKDIR_ARG=""
for ((a = 0; a < ${#MAIN_ARGS[@]}; a++)); do
  case "${MAIN_ARGS[a]}" in
    --workdir=*) WORKDIR_ARG=${MAIN_ARGS[a]#--workdir=} ;;
    --workdir) WORKDIR_ARG=${MAIN_ARGS[a + 1]:-} ;;
    *) ;;
  esac
done
if [[ -z "${WORKDIR_ARG}" && -n "${WORKDIR:-}" ]]; then
  WORKDIR_ARG=${WORKDIR}
  MAIN_ARGS+=("--workdir=${WORKDIR}")
fi

COMMON=("--zone=${ZONE}")
[[ -z "${PROJECT}" ]] || COMMON+=("--project=${PROJECT}")
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORKER_SCRIPT=aggpose_tpu_worker.sh # launch/tpu_worker.sh's name in each worker's home directory
# One id per launch: a command that gcloud re-runs on a worker (dropped connection) finds its own run.
LAUNCH_ID=${LAUNCH_ID:-$(date -u +%Y%m%dT%H%M%SZ)-$$}

DRY_RUN_PREEMPTIONS=${DRY_RUN_PREEMPTIONS:-0} # dry-run only: pretend the first N runs were preempted

# Run (or with --dry-run print) a command.
x() {
  if ((DRY_RUN)); then
    printf '+ %s\n' "$(quote "$@")"
    return 0
  fi
  "$@"
}

# STATE <- the slice's state (READY/PREEMPTED/... for a VM, ACTIVE/SUSPENDED/... for a queued
# resource, NOT_FOUND). $1: the state to pretend with --dry-run.
STATE=""
query_state() {
  local cmd
  if ((QUEUED)); then
    cmd=(gcloud compute tpus queued-resources describe "${NAME}" "${COMMON[@]}" "--format=value(state.state)")
  else
    cmd=(gcloud compute tpus tpu-vm describe "${NAME}" "${COMMON[@]}" "--format=value(state)")
  fi
  if ((DRY_RUN)); then
    x "${cmd[@]}"
    STATE=$1
    return 0
  fi
  STATE=$("${cmd[@]}" 2>/dev/null) || STATE=NOT_FOUND
  STATE=${STATE:-NOT_FOUND}
}

healthy_state() { if ((QUEUED)); then echo ACTIVE; else echo READY; fi; }

# Compile the run's train step for the slice's topology (benchmarks/tpu_compile.py --check): one line,
# and no slice is created when the batch does not fit (exit 3).
CHECKED=0
step_check() {
  local topology=${TOPOLOGY:-$(topology_for "${ACCELERATOR_TYPE}")}
  [[ -n "${topology}" ]] || die "check: no topology known for accelerator type '${ACCELERATOR_TYPE}':" \
    "give --topology (e.g. v5e:4x4), or --no-check"
  local args=() a
  for ((a = 0; a < ${#MAIN_ARGS[@]}; a++)); do
    case "${MAIN_ARGS[a]}" in
      --config=* | --config.*=*) args+=("${MAIN_ARGS[a]}") ;;
      --config | --config.*) args+=("${MAIN_ARGS[a]}" "${MAIN_ARGS[a + 1]:-}"); a=$((a + 1)) ;;
      *) ;;
    esac
  done
  ((${#args[@]})) || die "check: no --config in the job's arguments (after --); give one, or --no-check"
  local tool=${REPO_ROOT}/benchmarks/tpu_compile.py
  local cmd=("${PYTHON}" "${tool}" --check --topology "${topology}" "${args[@]}")
  CHECKED=1
  if ((DRY_RUN)); then
    printf '+ %s  # in %s\n' "$(quote "${cmd[@]}")" "${REPO_ROOT}"
    return 0
  fi
  local out rc=0
  out=$(cd "${REPO_ROOT}" && "${cmd[@]}" 2>&1) || rc=$?
  local line
  line=$(printf '%s\n' "${out}" | grep -v '^[[:space:]]*$' | tail -n 1)
  case "${rc}" in
    0) say "check (${topology}): ${line}" ;;
    3)
      echo "tpu_pod.sh: check (${topology}): ${line}; not creating ${NAME} (--no-check skips the check)" >&2
      exit 3
      ;;
    *)
      echo "tpu_pod.sh: check (${topology}) failed (status ${rc}): ${line}; --no-check skips the check" >&2
      exit "${rc}"
      ;;
  esac
}

step_create() {
  if ((CHECK && !CHECKED)); then step_check; fi
  local runtime=${RUNTIME_VERSION:-$(runtime_for "${ACCELERATOR_TYPE}")}
  [[ -n "${runtime}" ]] || die "create: no runtime version known for accelerator type '${ACCELERATOR_TYPE}':" \
    "give --runtime-version"
  local spot=()
  ((!SPOT)) || spot=(--spot)
  if ((QUEUED)); then
    x gcloud compute tpus queued-resources create "${NAME}" "--node-id=${NAME}" "${COMMON[@]}" \
      "--accelerator-type=${ACCELERATOR_TYPE}" "--runtime-version=${runtime}" "${spot[@]}"
    while :; do
      query_state ACTIVE
      case "${STATE}" in
        ACTIVE) break ;;
        FAILED | SUSPENDED | NOT_FOUND) die "queued resource ${NAME} is ${STATE}" ;;
        *) say "queued resource ${NAME}: ${STATE}; checking again in ${POLL_SECS} s"; sleep "${POLL_SECS}" ;;
      esac
    done
  else
    x gcloud compute tpus tpu-vm create "${NAME}" "${COMMON[@]}" \
      "--accelerator-type=${ACCELERATOR_TYPE}" "--version=${runtime}" "${spot[@]}"
  fi
}

step_delete() {
  if ((QUEUED)); then
    x gcloud compute tpus queued-resources delete "${NAME}" "${COMMON[@]}" --force --quiet
  else
    x gcloud compute tpus tpu-vm delete "${NAME}" "${COMMON[@]}" --quiet
  fi
}

# $1 on every worker; ssh gives up on a worker that stops answering (a preempted one) after ~5 minutes.
# gcloud may run it again on a worker whose connection dropped: the worker script is safe to repeat.
ssh_all() {
  x gcloud compute tpus tpu-vm ssh "${NAME}" "${COMMON[@]}" --worker=all \
    --ssh-flag=-oServerAliveInterval=60 --ssh-flag=-oServerAliveCountMax=5 "--command=$1"
}

step_setup() {
  local tmp files
  if ((DRY_RUN)); then tmp=${TMPDIR:-/tmp}/aggpose-jax-XXXXXX; else tmp=$(mktemp -d); fi
  x cp "${REPO_ROOT}/launch/tpu_worker.sh" "${tmp}/${WORKER_SCRIPT}"
  files=("${tmp}/${WORKER_SCRIPT}")
  local remote=(bash "${WORKER_SCRIPT}" setup "--venv=${VENV_DIR}" "--python-version=${PYTHON_VERSION}"
    "--repo=${REPO_DIR}")
  if ((COPY)); then
    x tar -czf "${tmp}/aggpose-jax-src.tar.gz" -C "${REPO_ROOT}" --exclude=./.git --exclude=./runs \
      --exclude=./data --exclude=./workdir --exclude=./.venv --exclude=./build --exclude='*.egg-info' \
      --exclude=__pycache__ .
    files+=("${tmp}/aggpose-jax-src.tar.gz")
    remote+=(--archive=aggpose-jax-src.tar.gz)
  fi
  [[ -z "${NFS}" ]] || remote+=("--nfs=${NFS}" "--mount=${MOUNT}")
  [[ -z "${BUCKET}" ]] || remote+=("--bucket=${BUCKET}" "--bucket-mount=${BUCKET_MOUNT}")
  x gcloud compute tpus tpu-vm scp "${files[@]}" "${NAME}:./" "${COMMON[@]}" --worker=all
  ((DRY_RUN)) || rm -rf "${tmp}"
  ssh_all "$(quote "${remote[@]}")"
}

# One run of the job on all workers; returns gcloud's status (non-zero if any worker failed).
run_once() {
  [[ -n "${WORKDIR_ARG}" ]] || die "run: set WORKDIR or pass --workdir (a path all workers share)"
  [[ "${WORKDIR_ARG}" == /* || "${WORKDIR_ARG}" == gs://?* ]] \
    || die "run: WORKDIR must be a gs:// URL or absolute (on the NFS share), got '${WORKDIR_ARG}'"
  local wd=${WORKDIR_ARG%/}
  if [[ -n "${BUCKET}" && ("${wd}" == "${BUCKET_MOUNT%/}" || "${wd}" == "${BUCKET_MOUNT%/}"/*) ]]; then
    die "run: WORKDIR ${wd} is on the gcsfuse mount ${BUCKET_MOUNT}, which cannot rename directories" \
      "(checkpoints, synthetic data); use gs://${BUCKET}/... or the NFS share (--nfs, --mount)"
  fi
  local remote=(bash "${WORKER_SCRIPT}" run "--id=${LAUNCH_ID}" "--venv=${VENV_DIR}" "--repo=${REPO_DIR}"
    "--workdir=${wd}")
  local kv
  for kv in "${JOB_ENV[@]}"; do remote+=("--env=${kv}"); done
  remote+=(-- "${MAIN_ARGS[@]}")
  ssh_all "$(quote "${remote[@]}")" || return $?
  if ((DRY_RUN && DRY_RUN_PREEMPTIONS > 0)); then
    DRY_RUN_PREEMPTIONS=$((DRY_RUN_PREEMPTIONS - 1))
    return 255
  fi
  return 0
}

step_run() {
  local restarts=0 rc healthy
  healthy=$(healthy_state)
  while :; do
    rc=0
    run_once || rc=$?
    if ((rc == 0)); then
      say "run finished"
      return 0
    fi
    if ((!RESUME)); then
      say "run failed (status ${rc})"
      exit "${rc}"
    fi
    if ((DRY_RUN)); then query_state PREEMPTED; else query_state "${healthy}"; fi
    if [[ "${STATE}" == "${healthy}" ]]; then
      say "run failed (status ${rc}) while ${NAME} is ${STATE}: not a preemption, not retrying"
      exit "${rc}"
    fi
    if ((restarts >= MAX_RESTARTS)); then
      say "run failed (status ${rc}), ${NAME} is ${STATE}, and ${MAX_RESTARTS} restarts are used up"
      exit "${rc}"
    fi
    restarts=$((restarts + 1))
    say "${NAME} is ${STATE}: recreating it (restart ${restarts} of ${MAX_RESTARTS}), then rerunning"
    step_delete || true
    CHECKED=1 # the same type and config as before: no new check
    step_create
    step_setup
  done
}

if ((!DRY_RUN)); then
  for step in "${STEPS[@]}"; do
    if [[ "${step}" != check ]]; then
      command -v gcloud >/dev/null 2>&1 || die "gcloud not found (install the Google Cloud CLI, or use --dry-run)"
      break
    fi
  done
fi
for step in "${STEPS[@]}"; do
  "step_${step}"
done
