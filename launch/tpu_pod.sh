#!/usr/bin/env bash
# Train on a Cloud TPU VM slice (one JAX process per worker host): create the slice (directly or as a
# queued resource), install jax[tpu] and this package on every worker, run the same command on all
# workers (a log per worker in WORKDIR/logs), recreate and rerun after a preemption. See launch/README.md.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu_pod.sh [options] STEP... [-- MAIN_ARGS...]

STEP: create | setup | run | delete | all (= create setup run); steps run in the order given.

  --name NAME              TPU VM (and queued resource) name          [env TPU_NAME]
  --zone ZONE              e.g. us-central2-b                         [env ZONE]
  --project PROJECT        default: gcloud's configured project       [env PROJECT]
  --accelerator-type TYPE  default v4-32                              [env ACCELERATOR_TYPE]
  --runtime-version V      default tpu-ubuntu2204-base                [env RUNTIME_VERSION]
  --queued                 create through a queued resource (waits until ACTIVE)   [env QUEUED=1]
  --spot                   spot capacity (can be preempted: use with --resume)     [env SPOT=1]
  --resume                 run: when the job fails and the slice is no longer READY/ACTIVE
                           (preempted), delete and recreate it, set it up and rerun the same
                           command; the job resumes from WORKDIR's latest checkpoint
  --max-restarts N         recreations allowed with --resume (default 20)
  --repo-dir DIR           the repository on each worker, relative to the home directory or
                           absolute (default aggpose-jax)             [env REPO_DIR]
  --no-copy                setup: REPO_DIR already holds the repository on every worker (e.g. on
                           the shared mount); default: copy this checkout there (tar + scp)
  --nfs SERVER:/EXPORT     setup: mount this NFS export (Filestore) at --mount on every worker
  --bucket BUCKET          setup: mount this GCS bucket with gcsfuse at --mount on every worker
  --mount DIR              mount point of --nfs/--bucket (default /mnt/shared)   [env MOUNT]
  --env NAME=VALUE         extra environment for the job (repeatable), e.g. LIBTPU_INIT_ARGS=...
  --dry-run                print every command (gcloud, tar) instead of running it; needs no gcloud
  -h, --help               this text

WORKDIR: --workdir in MAIN_ARGS, else env WORKDIR (added as --workdir); an absolute path on the
filesystem every worker shares, like the data (--config.data.root / --config.data.tfds_data_dir).
Worker logs: WORKDIR/logs/worker_<hostname>.log (appended).
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

NAME=${TPU_NAME:-}
ZONE=${ZONE:-}
PROJECT=${PROJECT:-}
ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-v4-32}
RUNTIME_VERSION=${RUNTIME_VERSION:-tpu-ubuntu2204-base}
QUEUED=${QUEUED:-0}
SPOT=${SPOT:-0}
RESUME=0
MAX_RESTARTS=20
REPO_DIR=${REPO_DIR:-aggpose-jax}
COPY=1
NFS=""
BUCKET=""
MOUNT=${MOUNT:-/mnt/shared}
JOB_ENV=()
DRY_RUN=0
PYTHON=${PYTHON:-python3}
POLL_SECS=${POLL_SECS:-30}
STEPS=()

while (($#)); do
  case "$1" in
    --name) NAME=${2:?"$1 needs a value"}; shift 2 ;;
    --zone) ZONE=${2:?"$1 needs a value"}; shift 2 ;;
    --project) PROJECT=${2:?"$1 needs a value"}; shift 2 ;;
    --accelerator-type) ACCELERATOR_TYPE=${2:?"$1 needs a value"}; shift 2 ;;
    --runtime-version) RUNTIME_VERSION=${2:?"$1 needs a value"}; shift 2 ;;
    --queued) QUEUED=1; shift ;;
    --spot) SPOT=1; shift ;;
    --resume) RESUME=1; shift ;;
    --max-restarts) MAX_RESTARTS=${2:?"$1 needs a value"}; shift 2 ;;
    --repo-dir) REPO_DIR=${2:?"$1 needs a value"}; shift 2 ;;
    --no-copy) COPY=0; shift ;;
    --nfs) NFS=${2:?"$1 needs a value"}; shift 2 ;;
    --bucket) BUCKET=${2:?"$1 needs a value"}; shift 2 ;;
    --mount) MOUNT=${2:?"$1 needs a value"}; shift 2 ;;
    --env) JOB_ENV+=("${2:?"$1 needs a value"}"); shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    create | setup | run | delete) STEPS+=("$1"); shift ;;
    all) STEPS+=(create setup run); shift ;;
    --) shift; break ;;
    *) die "unknown option or step '$1' (the job's arguments go after --; -h for help)" ;;
  esac
done
MAIN_ARGS=("$@")

((${#STEPS[@]})) || die "no step given (create, setup, run, delete, all; -h for help)"
[[ -n "${NAME}" ]] || die "set TPU_NAME or --name"
[[ -n "${ZONE}" ]] || die "set ZONE or --zone"
[[ "${MAX_RESTARTS}" =~ ^[0-9]+$ ]] || die "--max-restarts: expected a whole number, got '${MAX_RESTARTS}'"
[[ -z "${NFS}" || -z "${BUCKET}" ]] || die "give --nfs or --bucket, not both"
for kv in "${JOB_ENV[@]}"; do
  [[ "${kv}" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env: expected NAME=VALUE, got '${kv}'"
done

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
# A path on the worker: relative ones are relative to the home directory (the ssh session's cwd).
REPO_REMOTE=$(quote "${REPO_DIR}")
[[ "${REPO_DIR}" == /* ]] || REPO_REMOTE="./${REPO_REMOTE}"

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

step_create() {
  local spot=()
  ((!SPOT)) || spot=(--spot)
  if ((QUEUED)); then
    x gcloud compute tpus queued-resources create "${NAME}" "--node-id=${NAME}" "${COMMON[@]}" \
      "--accelerator-type=${ACCELERATOR_TYPE}" "--runtime-version=${RUNTIME_VERSION}" "${spot[@]}"
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
      "--accelerator-type=${ACCELERATOR_TYPE}" "--version=${RUNTIME_VERSION}" "${spot[@]}"
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
ssh_all() {
  x gcloud compute tpus tpu-vm ssh "${NAME}" "${COMMON[@]}" --worker=all \
    --ssh-flag=-oServerAliveInterval=60 --ssh-flag=-oServerAliveCountMax=5 "--command=$1"
}

step_setup() {
  local remote="set -e; " mount_q
  mount_q=$(quote "${MOUNT}")
  if [[ -n "${NFS}" ]]; then
    remote+="sudo apt-get -qq update && sudo apt-get -qq install -y nfs-common; sudo mkdir -p ${mount_q}; "
    remote+="mountpoint -q ${mount_q} || sudo mount -t nfs -o hard,timeo=600 $(quote "${NFS}") ${mount_q}; "
  elif [[ -n "${BUCKET}" ]]; then
    remote+='if ! command -v gcsfuse >/dev/null; then '
    remote+='echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt'
    # shellcheck disable=SC2016 # $(...) is expanded on the worker
    remote+=' gcsfuse-$(lsb_release -cs) main" | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null; '
    remote+='curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg'
    remote+=' | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null; '
    remote+='sudo apt-get -qq update && sudo apt-get -qq install -y gcsfuse; fi; '
    remote+="sudo mkdir -p ${mount_q}; sudo chown \"\$(id -u):\$(id -g)\" ${mount_q}; "
    remote+="mountpoint -q ${mount_q} || gcsfuse --implicit-dirs $(quote "${BUCKET}") ${mount_q}; "
  fi
  if ((COPY)); then
    local repo_root tmp tarball
    repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    if ((DRY_RUN)); then tmp=${TMPDIR:-/tmp}/aggpose-jax-XXXXXX; else tmp=$(mktemp -d); fi
    tarball=${tmp}/aggpose-jax-src.tar.gz
    x tar -czf "${tarball}" -C "${repo_root}" --exclude=./.git --exclude=./runs --exclude=./data --exclude=./workdir \
      --exclude=./.venv --exclude=./build --exclude='*.egg-info' --exclude=__pycache__ .
    x gcloud compute tpus tpu-vm scp "${tarball}" "${NAME}:aggpose-jax-src.tar.gz" "${COMMON[@]}" --worker=all
    ((DRY_RUN)) || rm -rf "${tmp}"
    remote+="mkdir -p ${REPO_REMOTE} && tar -xzf aggpose-jax-src.tar.gz -C ${REPO_REMOTE}; src=${REPO_REMOTE}; "
  else
    # Build from a private copy: REPO_DIR may be shared, and pip builds in the source tree.
    remote+="src=\$(mktemp -d); "
    remote+="tar -C ${REPO_REMOTE} --exclude=./.git --exclude=./runs -cf - . | tar -C \"\$src\" -xf -; "
  fi
  local py
  py=$(quote "${PYTHON}")
  remote+="${py} -m pip install -q -U 'jax[tpu]' -f https://storage.googleapis.com/jax-releases/libtpu_releases.html; "
  remote+="${py} -m pip install -q \"\$src\""
  ssh_all "${remote}"
}

# One run of the job on all workers; returns gcloud's status (non-zero if any worker failed).
run_once() {
  [[ -n "${WORKDIR_ARG}" ]] || die "run: set WORKDIR or pass --workdir (a path all workers share)"
  [[ "${WORKDIR_ARG}" == /* ]] || die "run: WORKDIR must be absolute (a shared mount), got '${WORKDIR_ARG}'"
  local wd remote
  wd=$(quote "${WORKDIR_ARG%/}")
  remote="set -o pipefail; mkdir -p ${wd}/logs && cd ${REPO_REMOTE} && "
  remote+="$(quote env AGGPOSE_DISTRIBUTED=1 "${JOB_ENV[@]}" "${PYTHON}" -m aggpose_jax.main "${MAIN_ARGS[@]}")"
  remote+=" 2>&1 | tee -a ${wd}/logs/worker_\$(hostname).log"
  if ((DRY_RUN)); then
    ssh_all "${remote}"
    if ((DRY_RUN_PREEMPTIONS > 0)); then
      DRY_RUN_PREEMPTIONS=$((DRY_RUN_PREEMPTIONS - 1))
      return 255
    fi
    return 0
  fi
  ssh_all "${remote}"
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
    step_create
    step_setup
  done
}

if ((!DRY_RUN)); then
  command -v gcloud >/dev/null 2>&1 || die "gcloud not found (install the Google Cloud CLI, or use --dry-run)"
fi
for step in "${STEPS[@]}"; do
  "step_${step}"
done
