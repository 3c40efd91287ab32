"""Shared session fixtures: small synthetic COCO-layout datasets (generated once per session/worker).

Treat the generated directories as read-only; copy them (``shutil.copytree``) before modifying.
Layout: ROOT/annotations/person_keypoints_{train,val}2017.json, ROOT/{train,val}2017/*.jpg,
ROOT/person_detections_val2017.json. 24 train + 8 val images of 240x320 (H x W).
"""

from __future__ import annotations

import pytest

SYNTHETIC_KW = dict(num_images=32, seed=0, image_size=(240, 320), val_fraction=0.25)


@pytest.fixture(scope="session")
def synthetic_coco_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Root of a synthetic COCO-17 dataset (24 train + 8 val images, 240x320)."""
    from aggpose_jax.data.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("synthetic_coco")
    generate_synthetic(str(root), keypoints="coco", **SYNTHETIC_KW)
    return str(root)


@pytest.fixture(scope="session")
def synthetic_infant_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Root of a synthetic Infant-21 dataset (24 train + 8 val images, 240x320)."""
    from aggpose_jax.data.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("synthetic_infant")
    generate_synthetic(str(root), keypoints="infant", **SYNTHETIC_KW)
    return str(root)
