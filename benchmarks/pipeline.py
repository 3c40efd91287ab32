"""Training input pipeline throughput: samples/s per worker core at 256x192 from 640x480 JPEGs.

    python benchmarks/pipeline.py                 # full run (about a minute on a quiet machine)
    python benchmarks/pipeline.py --quick         # short run
    python benchmarks/pipeline.py --markdown      # also print a Markdown table for BENCHMARKS.md

Rows: a plain single-process Python loop doing the per-sample work (decode, augment, crop,
targets, normalise; the same functions the pipeline uses, without Grain, batching or IPC); the
Grain loader in-process (0 workers); the Grain loader with 1 and 2 worker processes (batches made
in the workers, handed over in shared memory). "/worker" divides the rate by the number of worker
processes (1 for the loop and for 0 workers); "/CPU-s" divides the samples by the CPU seconds
that this process and all its children used meanwhile (the honest per-core figure: it counts
the main process, prefetch threads and Grain's own work too, and is not inflated by idle cores).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from aggpose_jax.data import pipeline as P  # noqa: E402
from aggpose_jax.data import transforms as T  # noqa: E402
from aggpose_jax.pose.keypoints import get_keypoint_set  # noqa: E402

COCO_LIMBS = [
    (15, 13),
    (13, 11),
    (16, 14),
    (14, 12),
    (11, 12),
    (5, 11),
    (6, 12),
    (5, 6),
    (5, 7),
    (6, 8),
    (7, 9),
    (8, 10),
    (0, 5),
    (0, 6),
]


def synthetic_records(n_images: int, seed: int = 0) -> list[dict]:
    """640x480 JPEGs (quality 90) with a textured background and 1-3 stick people each."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n_images):
        noise = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
        img = cv2.resize(cv2.GaussianBlur(noise, (0, 0), 1.0), (640, 480), interpolation=cv2.INTER_CUBIC)
        img = cv2.add(img, rng.integers(0, 24, img.shape, dtype=np.uint8))  # fine grain, like photos
        people = []
        for _ in range(int(rng.integers(1, 4))):
            h = rng.uniform(150, 400)
            x0, y0 = rng.uniform(0, 640 - h * 0.5), rng.uniform(0, 480 - h * 0.9)
            base = np.array(
                [
                    [0.5, 0.08],
                    [0.45, 0.06],
                    [0.55, 0.06],
                    [0.4, 0.08],
                    [0.6, 0.08],
                    [0.3, 0.2],
                    [0.7, 0.2],
                    [0.2, 0.38],
                    [0.8, 0.38],
                    [0.15, 0.55],
                    [0.85, 0.55],
                    [0.38, 0.55],
                    [0.62, 0.55],
                    [0.36, 0.78],
                    [0.64, 0.78],
                    [0.35, 0.98],
                    [0.65, 0.98],
                ]
            )
            joints = base * [h * 0.5, h] + [x0, y0] + rng.normal(0, 4, (17, 2))
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            for a, b in COCO_LIMBS:
                cv2.line(img, tuple(map(int, joints[a])), tuple(map(int, joints[b])), colour, 7)
            vis = np.where(rng.random(17) < 0.85, 2, 0)
            kps = np.concatenate([joints, vis[:, None]], axis=1).astype(np.float32)
            lo, hi = joints.min(axis=0), joints.max(axis=0)
            people.append((kps, np.array([*lo, *(hi - lo)], np.float32)))
        data = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
        for kps, box in people:
            records.append(
                {
                    "image_id": np.int64(i),
                    "image_file": f"{i:06d}.jpg",
                    "image_bytes": data,
                    "bbox": box,
                    "keypoints": kps,
                    "score": np.float32(1.0),
                    "area": np.float32(box[2] * box[3]),
                }
            )
    return records


def data_config() -> dict:
    return {"image_size": (256, 192), "heatmap_size": (64, 48), "sigma": 2.0, "num_workers": 0, "aug": {}}


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and all its live descendants (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    parent, times = {}, {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(pid)] = int(fields[1])
        times[int(pid)] = (int(fields[11]) + int(fields[12])) / tick
    mine, frontier = {os.getpid()}, [os.getpid()]
    while frontier:
        kids = [p for p, pp in parent.items() if pp in frontier and p not in mine]
        mine.update(kids)
        frontier = kids
    return sum(times.get(p, 0.0) for p in mine)


def plain_loop(records: list[dict], n: int) -> tuple[float, float]:
    """(samples/s, samples per CPU-second) of the per-sample work, one sample at a time."""
    kp = get_keypoint_set("coco")
    dec, tr = T.DecodeImage(), T.TrainTransform(kp, (256, 192), (64, 48), 2.0)
    for i in range(10):
        tr.random_map(dec.map(records[i % len(records)]), np.random.default_rng(i))
    t0, c0 = time.perf_counter(), cpu_seconds()
    for i in range(n):
        tr.random_map(dec.map(records[i % len(records)]), np.random.default_rng(i))
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    return n / wall, n / max(cpu, 1e-9)


def grain_loader(records: list[dict], workers: int, n_batches: int, batch: int) -> tuple[float, float]:
    """(samples/s, samples per CPU-second of all processes) of the Grain training loader."""
    ld = P.make_loader(
        records,
        keypoint_set="coco",
        data_config=data_config(),
        train=True,
        batch_size=batch,
        seed=0,
        shard_index=0,
        shard_count=1,
        worker_count=workers,
        prefetch=2,
    )
    it = iter(ld)
    for _ in range(max(2, workers * 2)):  # start-up: spawn, imports, first batches
        next(it)
    t0, c0 = time.perf_counter(), cpu_seconds()
    for _ in range(n_batches):
        next(it)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    if hasattr(it, "close"):
        it.close()
    return n_batches * batch / wall, n_batches * batch / max(cpu, 1e-9)


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} logical cores"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer samples (noisier)")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    cv2.setNumThreads(1)
    P.keep_freed_buffers_in_heap()  # what every Grain worker does at start-up
    records = synthetic_records(32 if args.quick else 96)
    mean_kb = np.mean([len(r["image_bytes"]) for r in records]) / 1024
    n_plain = 300 if args.quick else 1500
    n_batches = 8 if args.quick else 40
    load0 = os.getloadavg()
    rows = [("plain Python loop (no Grain)", 1, *plain_loop(records, n_plain))]
    for w in (0, 1, 2):
        name = f"Grain loader, {w} worker process{'es' if w != 1 else ''}"
        rows.append(
            (
                name + (" (+1 prefetch thread)" if w == 0 else ""),
                max(w, 1),
                *grain_loader(records, w, n_batches, args.batch),
            )
        )
    load1 = os.getloadavg()
    import grain  # noqa: PLC0415

    header = (
        f"{datetime.date.today()} | {machine()} | load avg {load0[0]:.2f} -> {load1[0]:.2f} | "
        f"Python {platform.python_version()}, numpy {np.__version__}, OpenCV {cv2.__version__}, "
        f"grain {getattr(grain, '__version__', '?')} | {len(records)} people in "
        f"{len(set(r['image_file'] for r in records))} JPEGs 640x480 q90, mean {mean_kb:.0f} KiB | "
        f"batch {args.batch} | {'quick' if args.quick else 'full'} run"
    )
    print(header)
    print(f"{'mode':62s} {'workers':>7s} {'samples/s':>10s} {'/worker':>8s} {'/CPU-s':>7s}")
    for name, procs, rate, per_cpu in rows:
        print(f"{name:62s} {procs:7d} {rate:10.1f} {rate / procs:8.1f} {per_cpu:7.1f}")
    if args.markdown:
        print(
            "\n| mode | worker cores | samples/s | samples/s per worker | samples per CPU-second "
            "(all processes) |\n|---|---|---|---|---|"
        )
        for name, procs, rate, per_cpu in rows:
            print(f"| {name} | {procs} | {rate:.0f} | {rate / procs:.0f} | {per_cpu:.0f} |")


if __name__ == "__main__":
    main()
