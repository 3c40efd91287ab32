#!/usr/bin/env bash
# Multi-GPU / multi-node training with SLURM: one JAX process per GPU (srun task i drives GPU
# SLURM_LOCALID of its node; jax.distributed.initialize() reads the SLURM environment). See
# launch/README.md. Run it outside a job to submit it (it calls sbatch on itself), or submit it
# directly: sbatch launch/slurm_multigpu.sh -- --config ... (the #SBATCH defaults below apply).
#SBATCH --job-name=aggpose
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --time=48:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/slurm_multigpu.sh [--nodes N] [--gpus-per-node G] [--cpus-per-gpu C] [--time T]
                                [--partition P] [--account A] [--job-name NAME] [--signal-secs S]
                                [--sbatch-arg ARG]... [--dry-run] [-h] -- MAIN_ARGS...

Outside a SLURM job: submit this script with sbatch (N nodes x G GPUs, one task per GPU).
Inside the job (SLURM_JOB_ID set, also under salloc): run
  srun python3 -m aggpose_jax.main MAIN_ARGS...  (task t logs to WORKDIR/logs/process_<t>.log).

  --nodes N          nodes (default 1)
  --gpus-per-node G  GPUs per node = tasks per node (default 4)
  --cpus-per-gpu C   CPUs per task, for data loading (default 8)
  --time T           time limit (default 48:00:00)
  --partition P, --account A, --job-name NAME (default aggpose)
  --signal-secs S    SIGUSR1 S seconds before the time limit (default 300): the job saves a
                     checkpoint and requeues itself; the requeued job resumes from WORKDIR
  --sbatch-arg ARG   pass ARG to sbatch (repeatable)
  --dry-run          print the sbatch (outside) or srun (inside) command and exit
  -h, --help         this text

WORKDIR: --workdir in MAIN_ARGS, else env WORKDIR, else runs/aggpose-<job id>; put it (and the
data) on a filesystem all nodes share. config.train.batch_size is the global batch.
Stopping: SIGUSR1 to this script (SLURM sends it S seconds before the time limit) or SIGTERM/SIGINT:
`scancel --signal=TERM <job id>` delivers SIGTERM to every task through slurmd (not through srun,
which answers its own SIGTERM by killing the tasks with SIGKILL); they save a checkpoint and exit 0;
after SIGUSR1 the job then requeues itself. Preemption and scancel signal the tasks directly; a
preempted job is requeued by SLURM (--requeue) and resumes. PYTHON selects the interpreter.
EOF
}

die() { echo "slurm_multigpu.sh: $*" >&2; exit 2; }
say() { echo "slurm_multigpu.sh: $*" >&2; }

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
NODES=1
GPUS=4
CPUS=8
TIME=48:00:00
PARTITION=""
ACCOUNT=""
JOB_NAME=aggpose
SIGNAL_SECS=300
SBATCH_EXTRA=()
DRY_RUN=0

while (($#)); do
  case "$1" in
    --nodes) NODES=${2:?"$1 needs a value"}; shift 2 ;;
    --gpus-per-node) GPUS=${2:?"$1 needs a value"}; shift 2 ;;
    --cpus-per-gpu) CPUS=${2:?"$1 needs a value"}; shift 2 ;;
    --time) TIME=${2:?"$1 needs a value"}; shift 2 ;;
    --partition) PARTITION=${2:?"$1 needs a value"}; shift 2 ;;
    --account) ACCOUNT=${2:?"$1 needs a value"}; shift 2 ;;
    --job-name) JOB_NAME=${2:?"$1 needs a value"}; shift 2 ;;
    --signal-secs) SIGNAL_SECS=${2:?"$1 needs a value"}; shift 2 ;;
    --sbatch-arg) SBATCH_EXTRA+=("${2:?"$1 needs a value"}"); shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown option '$1' (the job's arguments go after --; -h for help)" ;;
  esac
done
MAIN_ARGS=("$@")

for value in "${NODES}" "${GPUS}" "${CPUS}"; do
  [[ "${value}" =~ ^[1-9][0-9]*$ ]] || die "expected a positive integer, got '${value}'"
done
[[ "${SIGNAL_SECS}" =~ ^[0-9]+$ ]] || die "--signal-secs: expected whole seconds, got '${SIGNAL_SECS}'"

HAS_WORKDIR=0
for arg in "${MAIN_ARGS[@]}"; do
  case "${arg}" in
    --workdir | --workdir=*) HAS_WORKDIR=1 ;;
    *) ;;
  esac
done
if ((!HAS_WORKDIR)) && [[ -n "${WORKDIR:-}" ]]; then
  MAIN_ARGS+=("--workdir=${WORKDIR}")
  HAS_WORKDIR=1
fi

# ---- outside a job: submit this script -------------------------------------------------------------
if [[ -z "${SLURM_JOB_ID:-}" ]]; then
  SCRIPT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
  SBATCH=(sbatch "--job-name=${JOB_NAME}" "--nodes=${NODES}" "--ntasks-per-node=${GPUS}"
    "--gpus-per-node=${GPUS}" "--cpus-per-task=${CPUS}" "--time=${TIME}"
    "--signal=B:USR1@${SIGNAL_SECS}" --requeue --open-mode=append "--output=%x-%j.out")
  [[ -z "${PARTITION}" ]] || SBATCH+=("--partition=${PARTITION}")
  [[ -z "${ACCOUNT}" ]] || SBATCH+=("--account=${ACCOUNT}")
  SBATCH+=("${SBATCH_EXTRA[@]}" "${SCRIPT}" -- "${MAIN_ARGS[@]}")
  if ((DRY_RUN)); then
    printf '%s\n' "$(quote "${SBATCH[@]}")"
    echo "# then in the job ($((NODES * GPUS)) tasks): AGGPOSE_DISTRIBUTED=1 srun --kill-on-bad-exit=1" \
      "--gpu-bind=none --cpus-per-task=${CPUS} ... $(quote "${PYTHON}") -m aggpose_jax.main $(quote "${MAIN_ARGS[@]}")"
    echo "# SIGUSR1 ${SIGNAL_SECS} s before the time limit -> scancel --signal=TERM <job id> (the tasks save)," \
      "then scontrol requeue <job id>"
    exit 0
  fi
  command -v sbatch >/dev/null 2>&1 || die "sbatch not found (run on a SLURM login node, or use --dry-run)"
  exec "${SBATCH[@]}"
fi

# ---- inside the job: one task per GPU ---------------------------------------------------------------
if ((!HAS_WORKDIR)); then
  MAIN_ARGS+=("--workdir=runs/aggpose-${SLURM_JOB_ID}")
fi
WORKDIR_ARG=""
for ((a = 0; a < ${#MAIN_ARGS[@]}; a++)); do
  case "${MAIN_ARGS[a]}" in
    --workdir=*) WORKDIR_ARG=${MAIN_ARGS[a]#--workdir=} ;;
    --workdir) WORKDIR_ARG=${MAIN_ARGS[a + 1]:-} ;;
    *) ;;
  esac
done
LOG_DIR=${WORKDIR_ARG%/}/logs
# Every task sees all GPUs of its node (--gpu-bind=none); jax.distributed.initialize() then gives
# task SLURM_LOCALID the GPU of that index. Since SLURM 22.05 srun does not inherit --cpus-per-task
# from sbatch/salloc: without passing it again each task (and its data loaders) gets one core.
SRUN=(srun --kill-on-bad-exit=1 --gpu-bind=none)
if [[ -n "${SLURM_CPUS_PER_TASK:-}" ]]; then SRUN+=("--cpus-per-task=${SLURM_CPUS_PER_TASK}"); fi
SRUN+=(--open-mode=append "--output=${LOG_DIR}/process_%t.log" "${PYTHON}" -m aggpose_jax.main "${MAIN_ARGS[@]}")
TASKS=${SLURM_NTASKS:-1}
ENV_WORDS=()
if ((TASKS > 1)); then ENV_WORDS=(AGGPOSE_DISTRIBUTED=1); fi

if ((DRY_RUN)); then
  printf '%s\n' "$(quote "${ENV_WORDS[@]}" "${SRUN[@]}")"
  exit 0
fi

mkdir -p "${LOG_DIR}"
if ((TASKS > 1)); then export AGGPOSE_DISTRIBUTED=1; fi
say "job ${SLURM_JOB_ID}: ${TASKS} tasks; logs in ${LOG_DIR}/process_<task>.log"

REQUEUE=0
INTERRUPTED=0
SRUN_PID=""
# SIGTERM to the tasks themselves, delivered by slurmd to every job step (without --batch/--full the
# batch step, i.e. this script and srun, is left out). Never `kill -TERM` srun: srun answers SIGTERM
# with "forcing job termination", SIGKILL to every task, and nothing would be saved.
# shellcheck disable=SC2317,SC2329 # (invoked by the traps below)
stop_tasks() {
  scancel --signal=TERM "${SLURM_JOB_ID}" \
    || say "scancel --signal=TERM ${SLURM_JOB_ID} failed: the tasks go on until SLURM itself stops them"
}
# shellcheck disable=SC2317,SC2329 # (invoked by the traps below)
on_time_limit() {
  INTERRUPTED=1
  REQUEUE=1
  say "time limit near: SIGTERM to the tasks (they save a checkpoint and exit), then requeueing the job"
  stop_tasks
}
# shellcheck disable=SC2317,SC2329
on_term() {
  INTERRUPTED=1
  say "SIGTERM/SIGINT: SIGTERM to the tasks (they save a checkpoint and exit)"
  stop_tasks
}
trap 'on_time_limit' USR1
trap 'on_term' TERM INT

# srun runs in the background so that the traps run at once.
"${SRUN[@]}" &
SRUN_PID=$!
while :; do
  INTERRUPTED=0
  rc=0
  wait "${SRUN_PID}" || rc=$?
  if ((rc > 128 && INTERRUPTED)); then continue; fi # wait was interrupted by a trap: wait again
  break
done
if ((REQUEUE)); then
  say "tasks exited with status ${rc}; requeueing job ${SLURM_JOB_ID}"
  scontrol requeue "${SLURM_JOB_ID}"
fi
exit "${rc}"
