"""TFDS builder: a COCO-layout keypoint dataset -> ArrayRecord shards, one example per person.

Build (no TensorFlow needed)::

    python -m aggpose_jax.data.tfds_builder ROOT --keypoints coco --data-dir OUT

writes OUT/aggpose_keypoints/<keypoints>/1.0.0/aggpose_keypoints-{train,validation}.array_record-*
with the records of ``CocoKeypointSource`` (GT boxes) for ROOT's train and val splits, in the same
order (shuffling disabled), images stored as their encoded file bytes. Read back with
``aggpose_jax.data.sources.TfdsKeypointSource`` (re-exported here).

The dataset folder records its source fingerprint (``aggpose_source.json``: annotation sha256s,
image folders, root, keypoint set, builder version). Building the same source again is a no-op;
a folder built from another source is refused (exit 2) unless ``--overwrite``, which replaces it
only once the new build is complete. The console is quiet unless ``--verbose``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from aggpose_jax.data.cli_errors import Parser, require_dir, require_file, require_writable_dir, run_cli
from aggpose_jax.data.sources import CocoKeypointSource, TfdsKeypointSource, resolve_tfds_dir
from aggpose_jax.pose.keypoints import KEYPOINT_SETS, get_keypoint_set

__all__ = [
    "AggposeKeypoints",
    "BuildResult",
    "KeypointsBuilderConfig",
    "TfdsKeypointSource",
    "build",
    "main",
    "read_fingerprint",
    "resolve_tfds_dir",
    "source_fingerprint",
]

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

    # TFDS prints its download/preparing banners; send them to the log (shown with --verbose).
    def _log_download_bytes(self) -> None:
        log.info("preparing %s in %s", self.name, self.data_dir)

    def _log_download_done(self) -> None:
        log.info("prepared %s in %s", self.name, self.data_dir)

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


FINGERPRINT_FILE = "aggpose_source.json"
_FINGERPRINT_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class BuildResult:
    """What :func:`build` did: ``status`` is 'built', 'rebuilt' or 'unchanged'."""

    path: str
    status: str
    counts: dict[str, int]
    replaced: tuple[str, ...] = ()


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _image_dir_summary(image_dir: str) -> dict[str, int]:
    """File count, total bytes and newest modification time (ns) of the files in ``image_dir``."""
    files = size = newest = 0
    if os.path.isdir(image_dir):
        with os.scandir(image_dir) as it:
            for entry in it:
                if entry.is_file():
                    st = entry.stat()
                    files, size, newest = files + 1, size + st.st_size, max(newest, st.st_mtime_ns)
    return {"files": files, "bytes": size, "newest_mtime_ns": newest}


def annotation_files(root: str) -> dict[str, str]:
    """{'train': ..., 'val': ...} annotation files of a COCO-layout root."""
    return {s: os.path.join(root, "annotations", f"person_keypoints_{s}2017.json") for s in ("train", "val")}


def source_fingerprint(root: str, keypoints: str = "coco") -> dict[str, Any]:
    """What the shards' content depends on: builder version and format, keypoint set, the root, each
    split's annotation file (sha256) and image folder (file count, bytes, newest mtime).

    Images are summarised by ``stat`` rather than hashed, so checking a COCO-sized root stays cheap.
    """
    kset = get_keypoint_set(keypoints)
    splits = {}
    for split, ann_file in annotation_files(root).items():
        splits[split] = {
            "annotation_sha256": _sha256(ann_file),
            "images": _image_dir_summary(os.path.join(root, f"{split}2017")),
        }
    return {
        "format": _FINGERPRINT_FORMAT,
        "builder": f"{AggposeKeypoints.name}/{AggposeKeypoints.VERSION}",
        "file_format": "array_record",
        "keypoints": kset.name,
        "num_joints": kset.num_joints,
        "root": os.path.abspath(root),
        "splits": splits,
    }


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


_SHOWN = {"root": "root", "keypoints": "keypoint set", "builder": "builder", "file_format": "file format"}


def fingerprint_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two fingerprints, readably: 'root (was A, now B)', 'train annotations',
    'val images', ..."""
    a, b = _flatten(old), _flatten(new)
    out: list[str] = []
    for key in sorted(set(a) | set(b), key=lambda k: (k.count("."), k)):
        if a.get(key) == b.get(key):
            continue
        parts = key.split(".")
        if key in _SHOWN:
            item = f"{_SHOWN[key]} (was {a.get(key)}, now {b.get(key)})"
        elif parts[0] == "splits" and len(parts) >= 3:
            item = f"{parts[1]} {'annotations' if parts[2].startswith('annotation') else parts[2]}"
        else:
            item = parts[0]
        if item not in out:
            out.append(item)
    return out


def read_fingerprint(version_dir: str) -> dict[str, Any] | None:
    """The source fingerprint recorded in a built dataset folder (None when there is none)."""
    path = os.path.join(version_dir, FINGERPRINT_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        return {"unreadable": path}


def _split_counts(version_dir: str) -> dict[str, int]:
    info = tfds.builder_from_directory(version_dir).info
    return {name: int(split.num_examples) for name, split in sorted(info.splits.items())}


def _configure_console(verbose: bool) -> None:
    """Quiet: no TFDS banners, progress bars or info logs; verbose: all of them."""
    tfds.display_progress_bar(verbose)
    level = logging.INFO if verbose else logging.WARNING
    for name in ("absl", "tensorflow_datasets", __name__):
        logging.getLogger(name).setLevel(level)


def build(
    root: str, *, keypoints: str = "coco", data_dir: str, overwrite: bool = False, verbose: bool = False
) -> BuildResult:
    """Prepare the shards of ``root`` under ``data_dir``, recording the source fingerprint with them.

    The build goes to a staging folder in ``data_dir`` and replaces the dataset folder only once
    complete. A folder built from the same source is left as it is ('unchanged'); one built from
    another source (or without a fingerprint) raises FileExistsError unless ``overwrite``.
    """
    require_dir(root, "dataset root")
    for ann_file in annotation_files(root).values():
        require_file(ann_file, "annotation file")
    kset = get_keypoint_set(keypoints)
    _configure_console(verbose)
    fingerprint = source_fingerprint(root, kset.name)
    final = os.path.join(data_dir, AggposeKeypoints.name, kset.name, str(AggposeKeypoints.VERSION))
    replaced: tuple[str, ...] = ()
    if os.path.lexists(final):
        old = read_fingerprint(final)
        built = os.path.isfile(os.path.join(final, "dataset_info.json"))
        if old == fingerprint and built:
            return BuildResult(final, "unchanged", _split_counts(final))
        if old is None:
            replaced = ("no source fingerprint (built before fingerprints were recorded)",)
        elif "unreadable" in old:
            replaced = (f"unreadable fingerprint {old['unreadable']}",)
        else:
            replaced = tuple(fingerprint_differences(old, fingerprint)) or ("incomplete build",)
        if not built and os.path.isdir(final) and not os.listdir(final):
            replaced = ()  # an empty folder: nothing to lose
        elif not overwrite:
            raise FileExistsError(
                f"{final} holds a build of another source (differs: {'; '.join(replaced)}); "
                "pass --overwrite to rebuild it"
            )
    require_writable_dir(data_dir, "--data-dir")
    os.makedirs(data_dir, exist_ok=True)
    staging = os.path.join(data_dir, f".{AggposeKeypoints.name}-{kset.name}.building-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        builder = AggposeKeypoints(root=root, config=kset.name, data_dir=staging, file_format="array_record")
        builder.download_and_prepare(
            download_dir=os.path.join(staging, "downloads"),
            download_config=tfds.download.DownloadConfig(try_download_gcs=False),
        )
        new = os.fspath(builder.data_dir)
        with open(os.path.join(new, FINGERPRINT_FILE), "w", encoding="utf-8") as f:
            json.dump({"fingerprint": fingerprint}, f, indent=1)
        counts = {name: int(split.num_examples) for name, split in sorted(builder.info.splits.items())}
        os.makedirs(os.path.dirname(final), exist_ok=True)
        aside = os.path.join(staging, "replaced")
        had_old = os.path.lexists(final) and not (os.path.isdir(final) and not os.listdir(final))
        if os.path.lexists(final):
            os.rename(final, aside)
        try:
            os.rename(new, final)
        except BaseException:
            if os.path.lexists(aside):
                os.rename(aside, final)  # put the old build back
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return BuildResult(final, "rebuilt" if had_old else "built", counts, replaced)


def main(argv: Sequence[str] | None = None) -> int:
    prog = "python -m aggpose_jax.data.tfds_builder"
    parser = Parser(prog=prog, description="Build ArrayRecord (TFDS) shards of a COCO-layout keypoint dataset.")
    parser.add_argument("root", help="dataset root with annotations/person_keypoints_{train,val}2017.json")
    parser.add_argument("--keypoints", default="coco", help="keypoint set: " + ", ".join(sorted(KEYPOINT_SETS)))
    parser.add_argument("--data-dir", required=True, help="TFDS data directory to write into")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="rebuild when the data dir holds a build of another source (replaced only once the new one is complete)",
    )
    parser.add_argument("--verbose", action="store_true", help="show TFDS logs and progress bars")
    args = parser.parse_args(argv)

    def body() -> int:
        if args.verbose:
            logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        res = build(
            args.root, keypoints=args.keypoints, data_dir=args.data_dir, overwrite=args.overwrite, verbose=args.verbose
        )
        for split, n in res.counts.items():
            print(f"{split}: {n} person records")
        if res.status == "unchanged":
            print(f"{res.path} is up to date (same source fingerprint): nothing written")
        elif res.status == "rebuilt":
            print(f"wrote {res.path} (replaced a build of another source: {'; '.join(res.replaced)})")
        else:
            print(f"wrote {res.path}")
        return 0

    return run_cli(prog, body)


if __name__ == "__main__":
    sys.exit(main())
