#!/usr/bin/env bash
# Multi-GPU / multi-node training with SLURM: one JAX process per node, each driving all its GPUs.
#
#   sbatch launch/slurm_multigpu.sh --config configs/coco_aggpose_l_256x192.py \
#       --config.data.root=/data/coco --config.init.mit_checkpoint=/data/mit_b5.pth
#
# config.train.batch_size is the global batch (the release: 32 per GPU x 4 GPUs = 128). The run resumes
# from WORKDIR's latest checkpoint when requeued; SIGTERM (preemption, scancel, time limit) saves a
# checkpoint and exits cleanly, so `--requeue` jobs continue where they stopped.
#SBATCH --job-name=aggpose
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=16
#SBATCH --time=48:00:00
#SBATCH --signal=B:TERM@300
#SBATCH --requeue
#SBATCH --output=%x-%j.out
set -euo pipefail

WORKDIR=${WORKDIR:-runs/aggpose-${SLURM_JOB_ID}}
# With several nodes, jax.distributed.initialize() reads the SLURM environment (coordinator = first node).
if [[ "${SLURM_JOB_NUM_NODES:-1}" -gt 1 ]]; then
  export AGGPOSE_DISTRIBUTED=1
fi
# srun forwards SIGTERM to the tasks; `exec` keeps the batch shell from swallowing it on one node.
exec srun --kill-on-bad-exit=1 python -m aggpose_jax.main --workdir="${WORKDIR}" "$@"
