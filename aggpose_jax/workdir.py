"""The run's folder: proven writable, the synthetic data it may hold, the record of the config that made it."""

from __future__ import annotations

import os
import uuid

from ml_collections import ConfigDict

from aggpose_jax.logs import log, write_json


def check_writable(workdir: str) -> str:
    """Create ``workdir`` and prove it writable; raises ``ValueError`` naming it otherwise."""
    workdir = os.path.abspath(workdir)
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write_test_{uuid.uuid4().hex}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as err:
        raise ValueError(f"--workdir: {workdir} is not writable ({err.strerror or err})") from None
    return workdir


def prepare_data(config: ConfigDict, workdir: str) -> None:
    """``data.root=''``: generate the synthetic set into <workdir>/synthetic once (process 0), then use it."""
    if config.data.root:
        return
    import jax

    root = os.path.join(workdir, "synthetic")
    ann = os.path.join(root, "annotations", "person_keypoints_val2017.json")
    if jax.process_index() == 0 and not os.path.isfile(ann):
        from aggpose_jax.data.synthetic import generate_synthetic

        syn = config.data.synthetic
        log.info("generating a synthetic %s dataset (%d images) in %s", config.data.keypoints, syn.num_images, root)
        tmp = f"{root}.tmp{os.getpid()}"
        generate_synthetic(
            tmp,
            keypoints=config.data.keypoints,
            num_images=int(syn.num_images),
            seed=int(syn.seed),
            image_size=tuple(syn.image_size),
            val_fraction=float(syn.val_fraction),
        )
        os.replace(tmp, root)  # complete or absent: an interrupted run regenerates
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("aggpose_synthetic_data")
    config.data.root = root
    if not config.data.use_gt_bbox and not config.data.detections_file:
        config.data.detections_file = os.path.join(root, "person_detections_val2017.json")


def record_config(config: ConfigDict, workdir: str) -> None:
    """Write the run's config to ``workdir/config.json`` (process 0)."""
    write_json(os.path.join(workdir, "config.json"), config.to_dict())
