#!/usr/bin/env bash
# Train AggPose on a Cloud TPU pod slice: the same command runs on every worker (one JAX process per host).
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b WORKDIR=/mnt/shared/runs/l ./launch/tpu_pod.sh \
#       --config configs/coco_aggpose_l_256x192.py --config.data.root=/mnt/shared/coco
#
# Every worker needs the repository at REPO_DIR and the data and WORKDIR at the same paths on a
# filesystem all workers share (Filestore/NFS, or a gcsfuse mount of a bucket): checkpoints, metrics
# and the synthetic data are written with ordinary file operations.
# jax.distributed.initialize() is called by aggpose_jax.main because AGGPOSE_DISTRIBUTED=1; on TPU VMs
# it discovers the coordinator and the process ids by itself.
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
PROJECT_FLAG=${PROJECT:+--project=${PROJECT}}
REPO_DIR=${REPO_DIR:-~/aggpose-jax}
WORKDIR=${WORKDIR:?set WORKDIR (a directory shared by all workers)}
ARGS=$(printf ' %q' "$@")

# One-time setup on every worker (idempotent): install the package with TPU jax.
if [[ "${SETUP:-0}" == "1" ]]; then
  gcloud compute tpus tpu-vm ssh "${TPU_NAME}" --zone="${ZONE}" ${PROJECT_FLAG} --worker=all --command="
    cd ${REPO_DIR} && python3 -m pip install -U 'jax[tpu]' -f https://storage.googleapis.com/jax-releases/libtpu_releases.html \
      && python3 -m pip install ."
fi

gcloud compute tpus tpu-vm ssh "${TPU_NAME}" --zone="${ZONE}" ${PROJECT_FLAG} --worker=all --command="
  cd ${REPO_DIR} && AGGPOSE_DISTRIBUTED=1 python3 -m aggpose_jax.main --workdir=${WORKDIR} ${ARGS}"
