"""``aggpose-features``: the Chambers et al. 2020 movement features of videos predicted by ``aggpose-predict``.

    aggpose-features results/ --out features.csv                        # every video in the folder
    aggpose-features results/clip.json --out f.csv --report reports/    # one video, with its picture
    aggpose-features a.npz b.keypoints.csv --fps 30 --series processed --mode corrected --out f.csv

Writes ``OUT`` (``video`` + the 104 published columns, in the published order), ``OUT`` with
``.side38.csv`` in place of ``.csv`` (``video`` + the paper's 38 left/right averages) and ``.json``
(provenance: the mode, each video's input files and hashes, fps and where it came from, the series used,
the prediction run's provenance). ``--infants FILE`` (CSV ``video,infant``) adds ``.infants38.csv``: the
104 columns averaged over each infant's videos, then the 38 (as the paper). ``--report DIR`` writes
``DIR/<video>.gma.png``. Every error is one line on stderr naming the file and field, exit status 2.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

from aggpose_jax.data.cli_errors import Parser, require_file, require_writable_file, run_cli
from aggpose_jax.gma import features as F
from aggpose_jax.gma.features import DEFAULT_MODE, MODES
from aggpose_jax.gma.inputs import load_videos
from aggpose_jax.gma.report import write_report

PROG = "aggpose-features"


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog=PROG,
        description="Chambers et al. 2020 infant-movement features (104 per video, and the paper's 38) "
        "from aggpose-predict results.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "modes: chambers2020 reproduces the published code's numbers, quirks included (the default; the "
            "one normative data were built on); corrected fixes its bugs (see the README)."
        ),
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="STEM.json, STEM.npz, STEM.keypoints.csv or folders")
    p.add_argument("--out", required=True, help="the feature table (CSV); .side38.csv and .json are written beside")
    p.add_argument("--mode", choices=MODES, default=DEFAULT_MODE, help=f"default {DEFAULT_MODE}")
    p.add_argument("--fps", type=float, help="frame rate for every video (default: each video's record)")
    p.add_argument(
        "--series",
        choices=("raw", "processed"),
        default="raw",
        help="raw: the model's output (as the published code); processed: the run's masked/filled/smoothed series",
    )
    p.add_argument(
        "--min-score",
        type=float,
        help="raw series: a point is present when its score is above this (default 0: every detected point)",
    )
    p.add_argument("--report", metavar="DIR", help="write a movement report picture per video (DIR/<video>.gma.png)")
    p.add_argument("--infants", metavar="CSV", help="CSV with columns video,infant: also the per-infant 38")
    return p


def _fmt(value: float) -> str:
    return "" if value is None or not math.isfinite(value) else repr(float(value))


def _write_csv(path: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(tmp, path)


def _sibling(out: str, suffix: str) -> str:
    base = out[:-4] if out.lower().endswith(".csv") else out
    return base + suffix


def read_infants(path: str, videos: Sequence[str]) -> dict[str, str]:
    """video -> infant from a CSV with the columns ``video`` and ``infant``."""
    require_file(path, "infants file")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        for need in ("video", "infant"):
            if need not in (reader.fieldnames or []):
                raise ValueError(f"{path}: column {need} missing (expected video,infant)")
        mapping = {row["video"]: row["infant"] for row in reader}
    missing = [v for v in videos if v not in mapping]
    if missing:
        raise ValueError(
            f"{path}: field video has no row for {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}"
        )
    return mapping


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    out = os.path.abspath(args.out)
    side_path, json_path = _sibling(out, ".side38.csv"), _sibling(out, ".json")
    for path in (out, side_path, json_path):
        require_writable_file(path, "output")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    if args.fps is not None:
        F.check_fps(args.fps)
    videos = load_videos(args.inputs, fps=args.fps, series=args.series, min_score=args.min_score)
    infants = read_infants(args.infants, [v.video for v in videos]) if args.infants else None
    if args.report:
        os.makedirs(args.report, exist_ok=True)

    rows, side_rows, records = [], [], []
    per_video: dict[str, dict[str, float]] = {}
    for v in videos:
        try:
            result = F.compute_features(v.xy, v.fps, frames=v.frames, mode=args.mode, image_size=v.image_size)
        except ValueError as err:
            raise ValueError(f"{v.provenance['data_file']}: {err}") from None
        per_video[v.video] = result.features
        rows.append([v.video] + [_fmt(result.features[c]) for c in F.FEATURE_COLUMNS])
        side_rows.append([v.video] + [_fmt(result.side_averaged[c]) for c in F.SIDE_AVERAGED_COLUMNS])
        record = dict(v.provenance)
        record.update(
            grid_frames=result.n_frames,
            smoothing_window_frames=result.smoothing_window,
            derivative_window_frames=result.derivative_window,
            parts_never_present=[p for p, ok in zip(F.BODY_PARTS, result.has_rows) if not ok],
        )
        if args.report:
            png = os.path.join(args.report, f"{_safe_name(v.video)}.gma.png")
            title = f"{v.video}: movement report ({args.series} series)"
            record["report"] = os.path.abspath(write_report(result, png, title))
        records.append(record)

    _write_csv(out, ["video", *F.FEATURE_COLUMNS], rows)
    _write_csv(side_path, ["video", *F.SIDE_AVERAGED_COLUMNS], side_rows)
    outputs = {"features": os.path.basename(out), "side_averaged": os.path.basename(side_path)}
    if infants is not None:
        infant_path = _sibling(out, ".infants38.csv")
        groups: dict[str, list[dict[str, float]]] = {}
        for v in videos:
            groups.setdefault(infants[v.video], []).append(per_video[v.video])
        infant_rows = []
        for infant, members in groups.items():
            averaged = F.side_average(F.average_rows(members), args.mode)
            infant_rows.append([infant, len(members)] + [_fmt(averaged[c]) for c in F.SIDE_AVERAGED_COLUMNS])
        _write_csv(infant_path, ["infant", "n_videos", *F.SIDE_AVERAGED_COLUMNS], infant_rows)
        outputs["infants"] = os.path.basename(infant_path)
    doc = {
        "format": "aggpose-jax-gma-features",
        "version": 1,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": [PROG, *argv],
        "features": "Chambers et al. 2020 (IEEE TNSRE), cchamber/Infant_movement_assessment 3422ad0",
        "mode": args.mode,
        "series": args.series,
        "outputs": outputs,
        "quirks": [{"quirk": q["quirk"], "handling": q[args.mode]} for q in F.QUIRKS],
        "videos": records,
    }
    tmp = f"{json_path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, allow_nan=False)
    os.replace(tmp, json_path)
    print(f"{PROG}: {len(videos)} video(s), mode {args.mode}, {args.series} series -> {out}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:
        return int(done.code or 0)
    return run_cli(PROG, lambda: run(args, argv))


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["PROG", "build_parser", "main", "read_infants", "run"]
