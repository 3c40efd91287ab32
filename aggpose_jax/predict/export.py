"""``aggpose-export MODEL OUT``: the model as a portable ``jax.export`` artifact (crops -> heatmaps).

Writes the folder ``OUT``:

* ``heatmaps.jax_exported``: the serialized ``jax.export.Exported`` of ``f(crops) -> heatmaps``: float32
  ImageNet-normalised RGB crops (b, H, W, 3), any batch size b (symbolic), to float32 heatmaps
  (b, H/4, W/4, J). The weights are constants inside it. Optionally the flip test is inside too.
* ``model.json``: input and heatmap sizes, the normalisation, joint names, skeleton, flip index,
  platforms, versions and the model's provenance (checkpoint SHA-256).
* ``run_exported.py``: the few lines that load and call it with jax alone (no aggpose_jax, no model code).

The consumer needs ``jax``/``jaxlib`` of a compatible version and the ``flatbuffers`` package, which jax
reads the artifact with but does not install (artifacts stay loadable by jax releases up to about 6 months
newer; a jax more than ~3 weeks older than the exporter may refuse them).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from aggpose_jax.data.cli_errors import EXIT_BAD_INPUT, Parser, add_model_flags, model_flags
from aggpose_jax.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from aggpose_jax.errors import one_line
from aggpose_jax.heatmaps import heatmap_function
from aggpose_jax.predict.model import load_model
from aggpose_jax.predict.outputs import check_out_dir
from aggpose_jax.predict.provenance import now, software

ARTIFACT = "heatmaps.jax_exported"
META = "model.json"
SCRIPT = "run_exported.py"
PROG = "aggpose-export"

RUN_SNIPPET = '''"""Call the exported AggPose heatmap function with jax alone.

python run_exported.py [CROPS.npy [HEATMAPS.npy]]
"""

import json
import pathlib
import sys

import jax
import numpy as np

here = pathlib.Path(__file__).resolve().parent
exported = jax.export.deserialize(bytearray((here / "heatmaps.jax_exported").read_bytes()))
meta = json.loads((here / "model.json").read_text())
h, w = meta["input_size"]

# Crops: RGB, (pixel / 255 - mean) / std with meta["mean"], meta["std"]; shape (batch, h, w, 3), float32.
crops = np.load(sys.argv[1]) if len(sys.argv) > 1 else np.zeros((2, h, w, 3), np.float32)
heatmaps = np.asarray(exported.call(crops))  # (batch, h / 4, w / 4, joints); peak of each map = the joint
if len(sys.argv) > 2:
    np.save(sys.argv[2], heatmaps)
print(heatmaps.shape, meta["joint_names"][:3])
'''


def export_model(
    model_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    which: str = "latest",
    bf16: bool = False,
    image_size: tuple[int, int] | None = None,
    keypoints: str | None = None,
    flip: bool = False,
    platforms: Sequence[str] = ("cpu", "cuda", "tpu"),
    kernels: str | None = None,
) -> dict[str, Any]:
    """Export a checkpoint's crop -> heatmap function to ``out_dir`` (see the module docstring); returns the
    metadata written to ``model.json``. ``kernels``: the layers' forms; default 'auto' (the faster CPU
    forms) for a CPU-only artifact, else 'xla' (the plain layers, right for every platform)."""
    platforms = tuple(platforms)
    if kernels is None:
        kernels = "auto" if platforms == ("cpu",) else "xla"
    loaded = load_model(model_path, which=which, bf16=bf16, image_size=image_size, keypoints=keypoints, kernels=kernels)
    out = check_out_dir(out_dir)
    config, kset = loaded.model.config, loaded.keypoint_set
    graphdef, state = nnx.split(loaded.model.model)
    forward = heatmap_function(graphdef, kset.flip_index if flip else None)
    h, w = config.image_size
    (batch,) = jax.export.symbolic_shape("b")
    spec = jax.ShapeDtypeStruct((batch, h, w, 3), np.float32)
    exported = jax.export.export(jax.jit(lambda crops: forward(state, crops)), platforms=platforms)(spec)
    try:
        blob = exported.serialize()
    except ImportError as err:  # jax serialises with the 'flatbuffers' package
        raise RuntimeError(f"cannot serialise the export: {err}") from None
    with open(os.path.join(out, ARTIFACT), "wb") as f:
        f.write(blob)
    meta = {
        "format": "aggpose-jax-exported",
        "version": 1,
        "created": now(),
        "function": "crops (b, H, W, 3) float32 -> heatmaps (b, H/4, W/4, J) float32",
        "input_size": [h, w],
        "heatmap_size": [h // 4, w // 4],
        "channels": "RGB",
        "mean": [float(v) for v in IMAGENET_MEAN],
        "std": [float(v) for v in IMAGENET_STD],
        "scale": "pixel / 255, then (x - mean) / std",
        "flip_test_inside": bool(flip),
        "joint_names": list(kset.names),
        "skeleton": [list(e) for e in kset.skeleton],
        "flip_index": [int(v) for v in kset.flip_index],
        "platforms": list(exported.platforms),
        "kernels": kernels,
        "calling_convention_version": exported.calling_convention_version,
        "software": software(),
        "model": loaded.description,
    }
    with open(os.path.join(out, META), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
    with open(os.path.join(out, SCRIPT), "w", encoding="utf-8") as f:
        f.write(RUN_SNIPPET)
    return meta


def main(argv: Sequence[str] | None = None) -> int:
    p = Parser(prog=PROG, description="Export an AggPose checkpoint's crop -> heatmap function with jax.export.")
    p.add_argument("model", help=".pth/safetensors file, converted model folder or training workdir")
    p.add_argument("out", help="output folder (created)")
    add_model_flags(p)
    p.add_argument("--flip", action="store_true", help="put the flip test inside the function")
    p.add_argument(
        "--platforms", default="cpu,cuda,tpu", help="comma-separated: cpu, cuda, rocm, tpu (default all but rocm)"
    )
    p.add_argument(
        "--kernels", choices=("xla", "cpu", "auto"), help="layer forms (default: auto for --platforms cpu, else xla)"
    )
    try:
        args = p.parse_args(argv)
    except SystemExit as done:  # --help, or a usage error already printed as one line
        return int(done.code or 0)
    for name in ("absl", "orbax"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        meta = export_model(
            args.model,
            args.out,
            **model_flags(args),
            flip=args.flip,
            platforms=[s.strip() for s in args.platforms.split(",") if s.strip()],
            kernels=args.kernels,
        )
    except (ValueError, OSError, RuntimeError) as err:
        print(f"{PROG}: error: {one_line(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    h, w = meta["input_size"]
    print(f"exported {args.model} -> {os.path.join(args.out, ARTIFACT)} (crops (b, {h}, {w}, 3) -> heatmaps)")
    print(f"call it without aggpose_jax: python {os.path.join(args.out, SCRIPT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
