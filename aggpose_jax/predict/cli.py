"""``aggpose-predict``: keypoints of images, image folders and videos into CSV / JSON / NPZ / overlay files.

    aggpose-predict clip.mp4 --model converted/infant --out results/                 # one infant, no boxes
    aggpose-predict photos/ --model model.pth --boxes detections.json --out results/  # COCO detections
    aggpose-predict a.mp4 b.mp4 --model runs/l --which best --region 100,40,400,300 --out results/
    aggpose-predict clip.mp4 --model m --out r --max-gap 0.2 --smooth butterworth:cutoff_hz=5 --overlay

Exit status: 0 every input processed completely; 3 the run finished, but some inputs failed or were
skipped (an unreadable video, an undecodable image, an image with several people and no boxes) or a video
was decoded incompletely (the summary, the warnings and ``OUT/aggpose-predict.json`` name them); 2 nothing
was computed: an error, one line each on stderr (bad arguments, boxes, smoothing against a video's frame
rate, an output folder that cannot be written or holds an earlier run's results); 130 interrupted.
Warnings (an incomplete video, frames whose subject identity is uncertain, several people at the start of
a single-subject video) are one line each on stderr. What FFmpeg, OpenCV and XLA print is kept off the
console, in ``OUT/aggpose-predict.log``. See ``aggpose_jax.predict.outputs`` for the files.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence

from aggpose_jax.data.cli_errors import Parser, add_model_flags, model_flags
from aggpose_jax.errors import one_line
from aggpose_jax.predict.outputs import DEFAULT_OUTPUTS, OUTPUT_KINDS
from aggpose_jax.predict.video import NativeLog

PROG = "aggpose-predict"


def build_parser() -> argparse.ArgumentParser:
    from aggpose_jax.predict.series import smoothing_help

    p = Parser(
        prog=PROG,
        description="Predict keypoints in images, image folders and videos with an AggPose model.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "box sources recorded per frame: file, region, seed (single subject found from the whole frame), "
            "track (from an earlier frame's keypoints, x1.25), none (no box: no keypoints).\n"
            f"smoothing methods and defaults: {smoothing_help()}"
        ),
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="images, folders of images and videos")
    p.add_argument("--model", required=True, help=".pth/safetensors file, converted model folder or training workdir")
    p.add_argument("--out", required=True, help="output folder (created)")

    g = p.add_argument_group("model")
    add_model_flags(g)
    g.add_argument("--batch-size", type=int, help="crops per model call (default: 4 on CPU, 16 on GPU/TPU)")
    g.add_argument("--no-flip", dest="flip", action="store_false", help="no flip test")
    g.add_argument("--decode", choices=("dark", "argmax"), default="dark", help="heatmap decoding (default dark)")

    g = p.add_argument_group("boxes (default: single-subject mode)")
    g.add_argument("--boxes", help="COCO detections JSON or CSV frame,x,y,w,h,score; or a folder of <stem>.json/.csv")
    g.add_argument(
        "--region",
        action="append",
        default=[],
        metavar="[FILE=]X,Y,W,H",
        help="a fixed box for every frame (of FILE only, when named); repeat per video",
    )
    g.add_argument("--min-box-score", type=float, default=0.0, help="ignore file boxes scoring below this")
    g.add_argument("--reseed-below", type=float, default=0.25, help="single subject: re-seed below this mean score")
    g.add_argument("--seed-passes", type=int, default=3, help="single subject: model passes per seed")

    g = p.add_argument_group("outputs")
    g.add_argument(
        "--outputs",
        default=",".join(DEFAULT_OUTPUTS),
        help=f"comma-separated, from {','.join(OUTPUT_KINDS)} (default {','.join(DEFAULT_OUTPUTS)})",
    )
    g.add_argument(
        "--overlay",
        action="store_true",
        help="also write overlay videos (H.264 with PyAV installed, else mp4v) and overlay PNGs",
    )
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the results of an earlier run in --out as a whole (default: refuse; another --out keeps both)",
    )
    g.add_argument("--quiet", action="store_true", help="no progress bar or reports (warnings and errors stay)")
    g.add_argument(
        "--ignore-exif",
        dest="apply_exif",
        action="store_false",
        help="photos: use the stored pixels, not turned by their EXIF orientation",
    )

    g = p.add_argument_group("keypoint series (videos)")
    g.add_argument("--min-score", type=float, default=0.2, help="score threshold: quality report, masking")
    g.add_argument("--mask", action="store_true", help="set joints scoring below --min-score to NaN (flagged)")
    g.add_argument("--max-gap", type=float, default=0.0, metavar="SECONDS", help="interpolate gaps up to this long")
    g.add_argument("--smooth", metavar="METHOD[:NAME=VALUE,...]", help="savgol, gaussian, butterworth or one_euro")
    g.add_argument("--min-stretch", type=float, default=1.0, metavar="SECONDS", help="quality: usable stretch")
    g.add_argument("--keypoint-format", choices=("native", "openpose18"), default="native")
    g.add_argument("--normalise", action="store_true", help="add the mid-hip centred, trunk-length scaled series")
    return p


def _outputs(args: argparse.Namespace) -> list[str]:
    kinds = [k.strip() for k in args.outputs.split(",") if k.strip()]
    if args.overlay:
        kinds += [k for k in ("video", "png") if k not in kinds]
    return kinds


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from aggpose_jax.predict.boxes import parse_region
    from aggpose_jax.predict.runner import Predictor, plan_run
    from aggpose_jax.predict.series import SeriesSettings, parse_smoothing
    from aggpose_jax.predict.subject import SubjectSettings

    regions = dict(parse_region(r) for r in args.region)
    smooth, params = parse_smoothing(args.smooth) if args.smooth else (None, {})
    series = SeriesSettings(
        min_score=args.min_score,
        mask=args.mask,
        max_gap_s=args.max_gap,
        smooth=smooth,
        smooth_params=params,
        min_stretch_s=args.min_stretch,
        keypoint_format=args.keypoint_format,
        normalise=args.normalise,
    )
    plan = plan_run(
        args.inputs,
        args.out,
        boxes=args.boxes,
        regions=regions,
        outputs=_outputs(args),
        min_box_score=args.min_box_score,
        series=series,
        overwrite=args.overwrite,
    )
    subject = SubjectSettings(min_score=args.min_score, reseed_below=args.reseed_below, passes=args.seed_passes)
    predictor = Predictor.load(
        args.model,
        **model_flags(args),
        flip=args.flip,
        decode=args.decode,
        batch_size=args.batch_size,
        subject=subject,
        min_box_score=args.min_box_score,
        progress=not args.quiet,
        apply_exif=args.apply_exif,
    )
    report = None if args.quiet else print
    summary = predictor.run(
        plan,
        series=series,
        command=[PROG, *argv],
        report=report,
    )
    if summary.exit_status:
        failed, incomplete = len(summary.failed), len(summary.incomplete)
        print(
            f"{PROG}: {failed} input(s) failed or skipped, {incomplete} incomplete; the others are done "
            f"(see {plan.out_dir}/aggpose-predict.json); exit status {summary.exit_status}",
            file=sys.stderr,
        )
    return summary.exit_status


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    print(f"{PROG}: warning: {one_line(str(message))}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, or a usage error already printed as one line
        return int(done.code or 0)
    for name in ("absl", "orbax", "jax._src.xla_bridge"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        # FFmpeg's, OpenCV's and XLA's own lines stay off the console (the run saves them beside the results).
        with NativeLog(), warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = _one_line_warning
            return run(args, argv)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted (results written so far are kept)", file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError) as err:
        for problem in getattr(err, "problems", None) or [err]:
            print(f"{PROG}: error: {one_line(problem)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
