"""TFDS builder: a COCO-layout keypoint dataset -> ArrayRecord shards, one example per person.

Build (no TensorFlow needed)::

    python -m aggpose_jax.data.tfds_builder ROOT --keypoints coco --data-dir OUT

writes OUT/aggpose_keypoints/<keypoints>/1.0.0/aggpose_keypoints-{train,validation}.array_record-*
with the records of ``CocoKeypointSource`` (GT boxes) for ROOT's train and val splits, in the same
order (shuffling disabled), images stored as their encoded file bytes. Read back with
``aggpose_jax.data.sources.TfdsKeypointSource`` (re-exported here).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from aggpose_jax.data.sources import CocoKeypointSource, TfdsKeypointSource, resolve_tfds_dir
from aggpose_jax.pose.keypoints import KEYPOINT_SETS, get_keypoint_set

__all__ = ["AggposeKeypoints", "KeypointsBuilderConfig", "TfdsKeypointSource", "build", "main", "resolve_tfds_dir"]

log = logging.getLogger(__name__)


# Match the base's frozen-ness (it differs between TFDS releases).
@dataclasses.dataclass(frozen=tfds.core.BuilderConfig.__dataclass_params__.frozen)
class KeypointsBuilderConfig(tfds.core.BuilderConfig):
    """One config per keypoint set; the config's ``name`` is the keypoint-set name."""

    keypoints: str = "coco"


class AggposeKeypoints(tfds.core.GeneratorBasedBuilder):
    """Person records of a COCO-layout dataset (ROOT/annotations, ROOT/{train,val}2017).

    Constructor: ``AggposeKeypoints(root=ROOT, config='coco'|'infant', data_dir=OUT,
    file_format='array_record')``. ``root`` is only needed to generate.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Person records (GT boxes, HRNet cleaning), encoded image bytes."}
    BUILDER_CONFIGS = [
        KeypointsBuilderConfig(name=k, keypoints=k, description=f"{KEYPOINT_SETS[k].num_joints} '{k}' keypoints")
        for k in sorted(KEYPOINT_SETS)
    ]

    # TFDS derives this from the package via `importlib_resources` (not installed on Python >= 3.9,
    # where TFDS does not require it); it only serves to find a checksums file, which we have none of.
    code_path = None

    def __init__(self, *, root: str | None = None, **kwargs: Any):
        self._root = os.fspath(root) if root else None
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        num_joints = get_keypoint_set(self.builder_config.keypoints).num_joints
        features = tfds.features.FeaturesDict(
            {
                "image_id": tfds.features.Scalar(np.int64),
                "image_file": tfds.features.Text(),
                "image_bytes": tfds.features.Tensor(shape=(), dtype=np.object_),
                "bbox": tfds.features.Tensor(shape=(4,), dtype=np.float32),
                "keypoints": tfds.features.Tensor(shape=(num_joints, 3), dtype=np.float32),
                "score": tfds.features.Scalar(np.float32),
                "area": tfds.features.Scalar(np.float32),
            }
        )
        return tfds.core.DatasetInfo(
            builder=self,
            description="Top-down person records for AggPose (one example per person).",
            features=features,
            disable_shuffling=True,
            homepage="https://github.com/SZAR-LAB/AggPose",
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[tuple[int, dict[str, Any]]]]:
        if not self._root:
            raise ValueError("AggposeKeypoints: pass root=<COCO-layout dataset directory> to build")
        keypoints = self.builder_config.keypoints
        return {
            "train": self._generate_examples(CocoKeypointSource.from_root(self._root, "train", keypoints=keypoints)),
            "validation": self._generate_examples(CocoKeypointSource.from_root(self._root, "val", keypoints=keypoints)),
        }

    def _generate_examples(self, source: CocoKeypointSource) -> Iterator[tuple[int, dict[str, Any]]]:
        missing = 0
        for i in range(len(source)):
            rec = source[i]
            missing += not rec["image_bytes"]
            yield i, rec
        if missing:
            log.warning(
                "%s: %d of %d person records have a missing image file (stored with empty bytes)",
                source.ann_file,
                missing,
                len(source),
            )


def build(root: str, *, keypoints: str = "coco", data_dir: str) -> str:
    """Prepare the shards of ``root`` under ``data_dir``; returns the version directory."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"dataset root {root} is not a directory")
    kset = get_keypoint_set(keypoints)
    builder = AggposeKeypoints(root=root, config=kset.name, data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return os.fspath(builder.data_dir)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aggpose_jax.data.tfds_builder",
        description="Build ArrayRecord (TFDS) shards of a COCO-layout keypoint dataset.",
    )
    parser.add_argument("root", help="dataset root with annotations/person_keypoints_{train,val}2017.json")
    parser.add_argument("--keypoints", default="coco", help="keypoint set: " + ", ".join(sorted(KEYPOINT_SETS)))
    parser.add_argument("--data-dir", required=True, help="TFDS data directory to write into")
    args = parser.parse_args(argv)
    try:
        out = build(args.root, keypoints=args.keypoints, data_dir=args.data_dir)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for split in ("train", "validation"):
        print(f"{split}: {len(TfdsKeypointSource(out, split, keypoints=args.keypoints))} person records")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
