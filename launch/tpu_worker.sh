#!/usr/bin/env bash
# The part of launch/tpu_pod.sh that runs on each TPU VM worker (copied there as ~/aggpose_tpu_worker.sh).
# Every step is safe to repeat: `gcloud compute tpus tpu-vm ssh --worker=all` re-runs a command when a
# connection drops, and a rerun on the same slice meets what the previous run left behind.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: tpu_worker.sh setup --venv DIR [--python-version V] [--nfs SERVER:/EXPORT --mount DIR]
                           [--bucket BUCKET --bucket-mount DIR] [--archive FILE] --repo DIR [--jax SPEC]
       tpu_worker.sh run --id ID --venv DIR --repo DIR --workdir DIR [--env NAME=VALUE]... -- MAIN_ARGS...

setup: wait for apt's lock (a fresh VM runs unattended upgrades), mount the NFS export read-write
  and the bucket read-only (gcsfuse), unpack --archive into --repo, create a Python V (default 3.11)
  environment with uv in --venv (the images' system Python is 3.10), install jax[tpu] and the package.
run: start `VENV/bin/python -m aggpose_jax.main MAIN_ARGS` in its own session, its output appended to
  WORKDIR/logs/worker_<hostname>.log (for a gs:// WORKDIR: ~/aggpose-logs/worker_<hostname>.log) and
  shown here; exit with its status.
  - the same --id again (a re-run ssh command): no second job; wait for the first and return its status;
  - another id: the previous run of this launcher still running is stopped (SIGTERM, SIGKILL after
    STOP_GRACE s, default 120); another process of this user holding the TPU that runs aggpose_jax is
    stopped the same way; any other holder -> refused (exit 3); then a stale /tmp/libtpu_lockfile
    (no process has it open) is removed;
  - WORKDIR is created (with sudo and handed to this user when the share is root-owned, as a fresh
    Filestore/NFS share is); a WORKDIR on a gcsfuse mount is refused (exit 2): gcsfuse cannot rename
    directories on ordinary buckets, and checkpoints and the synthetic data are written by renaming
    (a gs:// WORKDIR is written by the package directly: nothing to create here).
Environment: AGGPOSE_STATE_DIR (default ~/.aggpose-launch), AGGPOSE_LOG_DIR (default ~/aggpose-logs, the logs
  of a gs:// WORKDIR), LIBTPU_LOCKFILE (default /tmp/libtpu_lockfile),
  STOP_GRACE, APT_RETRIES (default 30) and APT_RETRY_SECS (default 10), AGGPOSE_SUDO (replaces `sudo -n`).
EOF
}

die() { echo "tpu_worker.sh ($(hostname)): $*" >&2; exit 2; }
say() { echo "tpu_worker.sh ($(hostname)): $*" >&2; }

# sudo without a password prompt, or nothing where that is not available (a root shell).
# AGGPOSE_SUDO replaces it (tests use a stand-in).
SUDO=()
if [[ -n "${AGGPOSE_SUDO:-}" ]]; then
  SUDO=("${AGGPOSE_SUDO}")
elif [[ $(id -u) != 0 ]] && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO=(sudo -n)
fi

# A path relative to the home directory (the ssh session's cwd) made absolute.
absolute() { if [[ "$1" == /* ]]; then printf '%s' "$1"; else printf '%s/%s' "${HOME}" "$1"; fi; }

# Run apt-get, waiting for the dpkg lock (up to 10 min) and retrying (e.g. `update` meets the lists lock).
apt_get() {
  local try
  for ((try = 1; ; try++)); do
    if "${SUDO[@]}" apt-get -o DPkg::Lock::Timeout=600 -qq "$@"; then return 0; fi
    ((try < ${APT_RETRIES:-30})) || return 1
    say "apt-get $1 failed (apt lock held?), retrying in ${APT_RETRY_SECS:-10} s (${try}/${APT_RETRIES:-30})"
    sleep "${APT_RETRY_SECS:-10}"
  done
}

step_setup() {
  local venv="" pyver=3.11 nfs="" mount=/mnt/shared bucket="" bucket_mount=/mnt/gcs archive="" repo="" jax_spec="jax[tpu]"
  while (($#)); do
    case "$1" in
      --venv) venv=$(absolute "$2"); shift 2 ;;
      --python-version) pyver=$2; shift 2 ;;
      --nfs) nfs=$2; shift 2 ;;
      --mount) mount=$2; shift 2 ;;
      --bucket) bucket=$2; shift 2 ;;
      --bucket-mount) bucket_mount=$2; shift 2 ;;
      --archive) archive=$(absolute "$2"); shift 2 ;;
      --repo) repo=$(absolute "$2"); shift 2 ;;
      --jax) jax_spec=$2; shift 2 ;;
      *) die "setup: unknown option '$1'" ;;
    esac
  done
  [[ -n "${venv}" && -n "${repo}" ]] || die "setup: --venv and --repo are needed"
  if [[ -n "${nfs}" ]]; then
    command -v mount.nfs >/dev/null 2>&1 || { apt_get update && apt_get install -y nfs-common; }
    "${SUDO[@]}" mkdir -p "${mount}"
    mountpoint -q "${mount}" || "${SUDO[@]}" mount -t nfs -o hard,timeo=600 "${nfs}" "${mount}"
  fi
  if [[ -n "${bucket}" ]]; then
    if ! command -v gcsfuse >/dev/null 2>&1; then
      echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -cs) main" \
        | "${SUDO[@]}" tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
      curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg \
        | "${SUDO[@]}" tee /usr/share/keyrings/cloud.google.asc >/dev/null
      apt_get update && apt_get install -y gcsfuse
    fi
    # Read-only: the data. Checkpoints and the rest of the workdir need directory renames.
    if ! mountpoint -q "${bucket_mount}"; then
      "${SUDO[@]}" mkdir -p "${bucket_mount}"
      "${SUDO[@]}" chown "$(id -u):$(id -g)" "${bucket_mount}"
      gcsfuse -o ro --implicit-dirs "${bucket}" "${bucket_mount}"
    fi
  fi
  local src=${repo}
  if [[ -n "${archive}" ]]; then
    mkdir -p "${repo}" && tar -xzf "${archive}" -C "${repo}"
  else
    # Build from a private copy: REPO may be shared, and the build writes into the source tree.
    src=$(mktemp -d)
    tar -C "${repo}" --exclude=./.git --exclude=./runs -cf - . | tar -C "${src}" -xf -
  fi
  export PATH="${HOME}/.local/bin:${PATH}"
  if ! command -v uv >/dev/null 2>&1; then
    python3 -m pip install -q --user uv || curl -LsSf https://astral.sh/uv/install.sh | sh
  fi
  [[ -x "${venv}/bin/python" ]] || uv venv -q --python "${pyver}" "${venv}"
  uv pip install -q --python "${venv}/bin/python" -U "${jax_spec}" "${src}[gcs]" \
    -f https://storage.googleapis.com/jax-releases/libtpu_releases.html
  "${venv}/bin/python" -c 'import aggpose_jax, jax, sys; print(sys.version.split()[0], "jax", jax.__version__)'
}

# Whether $1 is the pid of a job this script started (its wrapper shell carries the marker).
is_our_job() { [[ -n "$1" ]] && kill -0 "$1" 2>/dev/null && ps -ww -o args= -p "$1" 2>/dev/null | grep -q 'aggpose-run:'; }

# Whether process group $1 has a member that has not exited (zombies waiting for their parent do not count).
group_alive() { ps -e -o pgid=,stat= | awk -v g="$1" '$1 == g && $2 !~ /^Z/ { found = 1 } END { exit !found }'; }

# SIGTERM to process group $1 (the job saves a checkpoint), SIGKILL after STOP_GRACE seconds.
stop_group() {
  local pgid=$1 waited=0
  kill -TERM -- "-${pgid}" 2>/dev/null || kill -TERM "${pgid}" 2>/dev/null || return 0
  while group_alive "${pgid}" && ((waited < ${STOP_GRACE:-120} * 10)); do
    sleep 0.1
    waited=$((waited + 1))
  done
  if group_alive "${pgid}"; then
    say "process group ${pgid} still running after ${STOP_GRACE:-120} s: SIGKILL"
    kill -KILL -- "-${pgid}" 2>/dev/null || true
  fi
}

# SIGTERM to process $1, SIGKILL after STOP_GRACE seconds.
stop_pid() {
  local pid=$1 waited=0
  kill -TERM "${pid}" 2>/dev/null || return 0
  while ps -o stat= -p "${pid}" 2>/dev/null | grep -qv '^Z' && ((waited < ${STOP_GRACE:-120} * 10)); do
    sleep 0.1
    waited=$((waited + 1))
  done
  kill -KILL "${pid}" 2>/dev/null || true
}

# Pids that have the libtpu lock file or a TPU device open.
tpu_holders() {
  local files=("${LOCKFILE}") f
  for f in /dev/accel* /dev/vfio/[0-9]*; do [[ -e "${f}" ]] && files+=("${f}"); done
  { "${SUDO[@]}" lsof -t -w -- "${files[@]}" 2>/dev/null || true; } | sort -u
}

# Stop what a previous run left holding the TPU; refuse (exit 3) when someone else holds it.
free_the_tpu() {
  local pid
  pid=$(cat "${STATE}/run.pid" 2>/dev/null || true)
  if is_our_job "${pid}"; then
    say "stopping the previous run still running (pid ${pid}, launch $(cat "${STATE}/run.id" 2>/dev/null))"
    stop_group "${pid}"
  fi
  if ! command -v lsof >/dev/null 2>&1; then
    say "lsof not found: cannot see what holds the TPU; ${LOCKFILE} left as it is"
    return 0
  fi
  for pid in $(tpu_holders); do
    [[ "${pid}" != "$$" ]] || continue
    local owner args
    owner=$(ps -o uid= -p "${pid}" 2>/dev/null | tr -d ' ') || continue
    args=$(ps -ww -o args= -p "${pid}" 2>/dev/null) || continue
    if [[ "${owner}" == "$(id -u)" && "${args}" == *aggpose_jax* ]]; then
      say "stopping a leftover aggpose_jax process holding the TPU: pid ${pid} (${args:0:120})"
      local pgid
      pgid=$(ps -o pgid= -p "${pid}" | tr -d ' ')
      # its own process group, unless that is ours: then the process alone
      if [[ -n "${pgid}" && "${pgid}" != "$(ps -o pgid= -p $$ | tr -d ' ')" ]]; then stop_group "${pgid}"; else stop_pid "${pid}"; fi
    else
      echo "tpu_worker.sh ($(hostname)): the TPU is in use by pid ${pid} (uid ${owner}: ${args:0:120});" \
        "stop it first, or run on another slice" >&2
      exit 3
    fi
  done
  if [[ -e "${LOCKFILE}" && -z "$(tpu_holders)" ]]; then
    say "removing the stale ${LOCKFILE} (no process has it open)"
    rm -f "${LOCKFILE}" 2>/dev/null || { ((${#SUDO[@]})) && "${SUDO[@]}" rm -f "${LOCKFILE}"; } \
      || say "could not remove ${LOCKFILE} (another user's?): libtpu may refuse to start"
  fi
}

# Create WORKDIR/logs (with sudo on a root-owned share, then hand WORKDIR to this user); refuse gcsfuse.
make_workdir() {
  local wd=$1 probe=$1
  while [[ ! -e "${probe}" ]]; do probe=$(dirname "${probe}"); done
  if [[ "$(findmnt -n -o FSTYPE --target "${probe}" 2>/dev/null)" == fuse.gcsfuse ]]; then
    die "WORKDIR ${wd} is on a gcsfuse mount, which cannot rename directories (checkpoints, synthetic data" \
      "need that): put it on the NFS share or a local disk"
  fi
  if ! mkdir -p "${wd}/logs" 2>/dev/null; then
    ((${#SUDO[@]})) || die "cannot create ${wd}/logs (permission denied) and sudo is not available"
    say "${wd} is not writable for $(id -un): creating it with sudo and handing it over"
    "${SUDO[@]}" mkdir -p "${wd}/logs"
    "${SUDO[@]}" chown "$(id -u):$(id -g)" "${wd}" "${wd}/logs"
  fi
  [[ -w "${wd}" && -w "${wd}/logs" ]] || die "${wd} or ${wd}/logs is not writable for $(id -un)"
}

step_run() {
  local id="" venv="" repo="" wd=""
  local job_env=()
  while (($#)); do
    case "$1" in
      --id) id=$2; shift 2 ;;
      --venv) venv=$(absolute "$2"); shift 2 ;;
      --repo) repo=$(absolute "$2"); shift 2 ;;
      --workdir) wd=${2%/}; shift 2 ;;
      --env) job_env+=("$2"); shift 2 ;;
      --) shift; break ;;
      *) die "run: unknown option '$1'" ;;
    esac
  done
  [[ -n "${id}" && -n "${venv}" && -n "${repo}" && -n "${wd}" ]] || die "run: --id, --venv, --repo and --workdir are needed"
  [[ "${id}" =~ ^[A-Za-z0-9_.-]+$ ]] || die "run: bad --id '${id}'"
  [[ -x "${venv}/bin/python" ]] || die "run: ${venv}/bin/python not found: run the setup step first"
  [[ -d "${repo}" ]] || die "run: ${repo} not found: run the setup step first"
  STATE=${AGGPOSE_STATE_DIR:-${HOME}/.aggpose-launch}
  LOCKFILE=${LIBTPU_LOCKFILE:-/tmp/libtpu_lockfile}
  mkdir -p "${STATE}"
  # One run step at a time on this worker (a re-run ssh command may overlap the first).
  exec 9>"${STATE}/launch.lock"
  flock 9

  local pid rc
  if [[ "$(cat "${STATE}/run.id" 2>/dev/null)" == "${id}" ]]; then
    pid=$(cat "${STATE}/run.pid" 2>/dev/null || true)
    if is_our_job "${pid}"; then
      say "launch ${id} is already running here (pid ${pid}; the ssh command was re-run): waiting for it"
      flock -u 9
      while is_our_job "${pid}"; do sleep 1; done
    fi
    rc=$(cat "${STATE}/run.rc" 2>/dev/null || echo 1)
    say "launch ${id} already ran here: status ${rc} (not started again)"
    exit "${rc}"
  fi

  free_the_tpu
  local logs=${wd}/logs
  if [[ "${wd}" == gs://* ]]; then
    logs=${AGGPOSE_LOG_DIR:-${HOME}/aggpose-logs}  # the job writes to Cloud Storage itself
    mkdir -p "${logs}"
  else
    make_workdir "${wd}"
  fi
  local log
  log=${logs}/worker_$(hostname).log
  touch "${log}"
  printf '%s\n' "${id}" >"${STATE}/run.id"
  rm -f "${STATE}/run.rc" "${STATE}/run.pid"
  local start
  start=$(stat -c %s "${log}")
  cd "${repo}"
  # The job leads its own session (setsid): it outlives a dropped ssh connection (a re-run command then
  # waits for it) and its whole process group can be stopped. The wrapper shell records the status.
  # shellcheck disable=SC2016 # expanded by the wrapper shell
  setsid bash -c 'trap : TERM INT HUP; rcfile=$1; shift; "$@"; rc=$?; echo "${rc}" >"${rcfile}.tmp" && mv "${rcfile}.tmp" "${rcfile}"; exit "${rc}"' \
    "aggpose-run:${id}" "${STATE}/run.rc" env AGGPOSE_DISTRIBUTED=1 "${job_env[@]}" "${venv}/bin/python" -m aggpose_jax.main "$@" \
    >>"${log}" 2>&1 </dev/null &
  pid=$!
  printf '%s\n' "${pid}" >"${STATE}/run.pid"
  flock -u 9
  say "launch ${id}: started pid ${pid}; log ${log}"
  trap '' HUP PIPE # a dropped connection must not stop the bookkeeping below
  tail -c "+$((start + 1))" -f --pid="${pid}" "${log}" 2>/dev/null &
  rc=0
  wait "${pid}" || rc=$?
  wait 2>/dev/null || true
  exit "${rc}"
}

# ARGS <- the arguments with each --name=value before `--` split into --name value.
split_options() {
  ARGS=()
  while (($#)); do
    case "$1" in
      --) ARGS+=("$@"); return 0 ;;
      --*=*) ARGS+=("${1%%=*}" "${1#*=}") ;;
      *) ARGS+=("$1") ;;
    esac
    shift
  done
}

(($#)) || { usage >&2; exit 2; }
ARGS=()
case "$1" in
  setup) shift; split_options "$@"; step_setup "${ARGS[@]}" ;;
  run) shift; split_options "$@"; step_run "${ARGS[@]}" ;;
  -h | --help) usage ;;
  *) die "unknown step '$1' (setup, run; -h for help)" ;;
esac
