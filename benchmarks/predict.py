"""Prediction benchmark: frames/s of ``aggpose-predict``'s pipeline on CPU, batched against one frame at a
time, and where the wall time goes (model, decoding, reading and cropping).

A generated video (one stick figure, ``--size`` frames, mp4v) is predicted with flip test and DARK decoding
in boxes mode (one box per frame from the figure's true joints), by

* ``one frame at a time``: a plain loop, read -> crop -> model (batch 1, waited for) -> decode;
* ``pipeline, batch 1``: the pipeline (reading and cropping in a reader thread, decoding while the model
  runs) with one crop per model call;
* ``pipeline, batch N``: the same with N crops per call (``--batch``, default 4 and 8);
* ``single subject, batch N``: the pipeline without boxes (seeds from the whole frame, then follows).

Models: the tiny test model (``tests/fixtures/synthetic_tiny17``, 128x96) and AggPose-L (256x192, random
weights: speed does not depend on them). Compilation is excluded (one warm-up run per engine). The split:
``model alone`` is the same number of model calls on ready crops; its share of the pipeline's wall time is
the share spent in the model; ``decode`` and ``write`` run on the main thread, ``read + crop`` on the reader
thread, overlapping the model (``waiting`` = the main thread blocked on the model).

    python benchmarks/predict.py            # tiny (48 frames) and AggPose-L (16), 480x640, batches 1, 4, 8
    python benchmarks/predict.py --quick    # smoke run: tiny model, 12 frames, batches 1 and 4, one round
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import platform
import sys
import tempfile
import time
from typing import Any

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
TINY = ROOT / "tests" / "fixtures" / "synthetic_tiny17"


def make_video(folder: str, frames: int, size: tuple[int, int]) -> tuple[str, str, np.ndarray]:
    """A generated clip (mp4v) and its boxes CSV; returns (video, boxes, true joints)."""
    from aggpose_jax.data.synthetic import animate_figure
    from aggpose_jax.predict.video import VideoWriter

    images, joints = animate_figure(frames, seed=0, image_size=size)
    video = os.path.join(folder, "bench.mp4")
    with VideoWriter(video, 25.0, (size[1], size[0])) as writer:
        for img in images:
            writer.write(img)
    lo, hi = joints.min(axis=1) - 15, joints.max(axis=1) + 15
    boxes = os.path.join(folder, "bench.csv")
    with open(boxes, "w") as f:
        f.write("frame,x,y,w,h,score\n")
        for i, (a, b) in enumerate(zip(lo, hi)):
            f.write(f"{i},{a[0]:.2f},{a[1]:.2f},{b[0] - a[0]:.2f},{b[1] - a[1]:.2f},1\n")
    return video, boxes, joints


def load(name: str) -> Any:
    """(label, LoadedModel): the tiny test model, or AggPose-L with random weights."""
    from aggpose_jax.inference import PoseModel
    from aggpose_jax.models.aggpose import get_model_config
    from aggpose_jax.params import bind, init_params
    from aggpose_jax.pose.keypoints import get_keypoint_set
    from aggpose_jax.predict.model import LoadedModel, load_model

    if name == "tiny":
        return "aggpose_tiny 128x96 (test model)", load_model(TINY, hash_checkpoint=False)
    config = get_model_config("aggpose_l", drop_path_rate=0.0)
    params = init_params(config, 0)
    model = PoseModel(config, bind(config, params))
    return "AggPose-L 256x192 (random weights)", LoadedModel(model, get_keypoint_set("coco"), {})


def one_at_a_time(predictor: Any, video: str, boxes_csv: str) -> tuple[float, int]:
    """A plain loop: read, crop, run (batch 1, waited for), decode. Returns (seconds, frames)."""
    from aggpose_jax.predict.boxes import BoxesFile
    from aggpose_jax.predict.video import VideoReader

    engine, boxes = predictor.engine, BoxesFile.read(boxes_csv)
    start, n = time.perf_counter(), 0
    for index, _t, frame in VideoReader(video):
        crops = engine.crop_boxes(frame, boxes.for_frame(index)[0].array()[None])
        heatmaps = engine.dispatch(crops.images).result()
        engine.decode_heatmaps(heatmaps, crops.centers, crops.scales)
        n += 1
    return time.perf_counter() - start, n


def model_alone(predictor: Any, calls: int) -> float:
    """Seconds for ``calls`` model calls on ready crops (what the pipeline's model work costs alone)."""
    engine = predictor.engine
    h, w = engine.image_size
    crops = np.random.default_rng(0).normal(size=(engine.batch_size, h, w, 3)).astype(np.float32)
    start = time.perf_counter()
    pending = [engine.dispatch(crops) for _ in range(calls)]
    for p in pending:
        p.result()
    return time.perf_counter() - start


def bench_model(name: str, video: str, boxes: str, joints: np.ndarray, args: argparse.Namespace) -> list[dict]:
    """Every row of one model, ``args.rounds`` times in turn; each figure the median over rounds."""
    from aggpose_jax.predict.runner import Predictor

    label, loaded = load(name)
    sizes = sorted({1, *args.batch})
    predictors = {size: Predictor(loaded, batch_size=size) for size in sizes}
    for p in predictors.values():
        p.engine.warm_up()  # compiles each batch size (seeds use the same shape)
    rows: list[tuple[str, int]] = [("one frame at a time", 1)] + [("pipeline", b) for b in sizes]
    if name == "tiny":  # random weights never find a subject: every frame would be a seed
        rows.append(("single subject", max(args.batch)))
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {row: [] for row in rows}
    for _ in range(args.rounds):
        for mode, size in rows:
            predictor = predictors[size]
            if mode == "one frame at a time":
                wall, n = one_at_a_time(predictor, video, boxes)
                runs[(mode, size)].append({"frames": n, "wall_s": wall})
                continue
            res = predictor.video(video, boxes=None if mode == "single subject" else boxes)
            t = dict(res.stats["timings"])
            err = float(np.median(np.linalg.norm(res.keypoints - joints, axis=-1)))
            runs[(mode, size)].append(
                {
                    "frames": t["frames"],
                    "wall_s": t["wall_s"],
                    "timings": t,
                    "median_err_px": err,
                    "model_alone_s": model_alone(predictor, t["model_calls"]),
                }
            )
    out = []
    for (mode, size), got in runs.items():
        fps = [g["frames"] / g["wall_s"] for g in got]
        row = {"model": label, "mode": mode if mode == "one frame at a time" else f"{mode}, batch {size}"}
        row.update(fps=float(np.median(fps)), fps_range=(min(fps), max(fps)), runs=got, random=name != "tiny")
        out.append(row)
    return out


def machine() -> str:
    import cv2
    import jax

    cpu = platform.processor() or "unknown CPU"
    if os.path.exists("/proc/cpuinfo"):
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return (
        f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}; Python "
        f"{platform.python_version()}, jax {jax.__version__}, numpy {np.__version__}, OpenCV {cv2.__version__}"
    )


def _median_share(runs: list[dict[str, Any]], key: Any) -> str:
    return f"{100 * float(np.median([key(r) / r['wall_s'] for r in runs])):.0f} %"


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace, loadavg: tuple[float, float], info: str) -> str:
    date = datetime.date.today().isoformat()
    lines = [
        f"CPU, float32, flip test + DARK decoding, a generated {args.size[0]}x{args.size[1]} mp4v video of "
        f"{args.frames} frames (AggPose-L: the first {max(4, args.frames // 3)}), one box per frame (single "
        "subject: none); compilation excluded; "
        f"{args.rounds} rounds of all rows in turn, each figure the median (frames/s: min-max).",
        "",
        f"Run of {date}, {info}; load average {loadavg[0]:.2f} before, {loadavg[1]:.2f} after.",
        "",
        "| model | mode | frames/s | x one at a time | model alone | decode | write | read + crop "
        "| waiting for model | median error px |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    base: dict[str, float] = {}
    for r in rows:
        fps = f"{r['fps']:.1f} ({r['fps_range'][0]:.1f}-{r['fps_range'][1]:.1f})"
        if r["mode"] == "one frame at a time":
            base[r["model"]] = r["fps"]
            lines.append(f"| {r['model']} | {r['mode']} | {fps} | 1.00 | | | | | | |")
            continue
        runs = r["runs"]
        speedup = r["fps"] / base[r["model"]] if r["model"] in base else float("nan")
        err = "—" if r["random"] else f"{np.median([g['median_err_px'] for g in runs]):.1f}"
        lines.append(
            f"| {r['model']} | {r['mode']} | {fps} | {speedup:.2f} | "
            f"{_median_share(runs, lambda g: g['model_alone_s'])} | "
            f"{_median_share(runs, lambda g: g['timings']['decode_s'] + g['timings']['seed_s'])} | "
            f"{_median_share(runs, lambda g: g['timings']['write_s'])} | "
            f"{_median_share(runs, lambda g: g['timings']['read_s'] + g['timings']['crop_s'])} | "
            f"{_median_share(runs, lambda g: g['timings']['model_wait_s'])} | {err} |"
        )
    lines += [
        "",
        "Shares are of the row's wall time. `model alone`: the same model calls on ready crops, timed alone; "
        "`decode` (+ single-subject seeding's host work) and `write` run on the main thread while the next "
        "batch runs; `read + crop` runs on the reader thread (in single-subject mode the reading only: its crops, "
        "counted here too, are made on the main thread); `waiting for model`: the main thread blocked on the "
        "model. The error is against the figure's true joints (the tiny model; AggPose-L has random weights, "
        "so no error and no single-subject row: it would seed every frame).",
        "",
        f"Reproduce: `python benchmarks/predict.py --frames {args.frames} --batch "
        f"{','.join(map(str, args.batch))} --rounds {args.rounds} --size {args.size[0]} {args.size[1]}`",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: tiny model, 12 frames, batches 1 and 4, 1 round")
    p.add_argument("--models", default="tiny,aggpose_l", help="comma-separated: tiny, aggpose_l")
    p.add_argument("--frames", type=int, default=48, help="frames of the video (AggPose-L: a third of them)")
    p.add_argument("--batch", default="4,8", help="comma-separated batch sizes besides 1 (default 4,8)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.frames, args.batch, args.rounds, args.size = "tiny", 12, "4", 1, (240, 320)
    args.batch = [int(b) for b in str(args.batch).split(",") if b.strip()]
    import logging

    logging.getLogger("absl").setLevel(logging.ERROR)
    before = os.getloadavg()[0]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models.split(","):
            name = name.strip()
            frames = args.frames if name == "tiny" else max(4, args.frames // 3)
            sub = os.path.join(folder, name)
            os.makedirs(sub)
            video, boxes, joints = make_video(sub, frames, tuple(args.size))
            rows += bench_model(name, video, boxes, joints, args)
    after = os.getloadavg()[0]
    print(markdown(rows, args, (before, after), machine()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
