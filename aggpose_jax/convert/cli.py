"""``aggpose-convert``: PyTorch AggPose checkpoint (or MiT ImageNet weights) -> model checkpoint directory.

aggpose-convert SRC DEST [--config VARIANT|JSON] [--heads 1,2,5,8] [--key state_dict] [--force]
aggpose-convert --mit SRC DEST --config aggpose_l [--seed 0] [--force]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Sequence

from aggpose_jax.convert import convert_checkpoint, describe_config, init_from_mit, resolve_config
from aggpose_jax.convert.mapping import expected_torch_shapes
from aggpose_jax.data.cli_errors import Parser, run_cli


def _heads(text: str) -> tuple[int, ...]:
    try:
        heads = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 4 comma-separated integers, got {text!r}") from None
    if len(heads) != 4 or min(heads) < 1:
        raise argparse.ArgumentTypeError(f"expected 4 comma-separated positive integers, got {text!r}")
    return heads


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="aggpose-convert",
        description="Convert a PyTorch AggPose checkpoint (plain state dict or training checkpoint; no torch "
        "needed, no pickled code run) into an aggpose-jax model checkpoint directory. With --mit, "
        "write a freshly initialised model whose backbone comes from MiT (SegFormer) ImageNet weights.",
    )
    parser.add_argument("src", help=".pth checkpoint (or .safetensors for --mit)")
    parser.add_argument("dest", help="output directory (must not exist or be empty, unless --force)")
    parser.add_argument(
        "--config",
        help="variant name (aggpose_l, aggpose_s, aggpose_tiny) or a JSON file of "
        "ModelConfig fields; default: inferred from the tensors",
    )
    parser.add_argument(
        "--heads",
        type=_heads,
        help="attention heads per stream, e.g. 1,2,5,8 (they change no tensor shape, so they cannot be inferred)",
    )
    parser.add_argument(
        "--key",
        help="entry of a training checkpoint holding the weights "
        "(default: state_dict, then best_state_dict, then model)",
    )
    parser.add_argument("--mit", action="store_true", help="SRC holds MiT ImageNet weights (needs --config)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation seed of the non-MiT tensors (--mit)")
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace a non-empty DEST (only once the new checkpoint is completely written)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli("aggpose-convert", lambda: _convert(args))


def _convert(args: argparse.Namespace) -> int:
    if args.mit:
        if args.config is None:
            raise ValueError("--mit needs --config (e.g. aggpose_l for mit_b5, aggpose_s for mit_b2)")
        config = resolve_config(args.config)
        if args.heads is not None:
            config = dataclasses.replace(config, heads=args.heads)
        config, report = init_from_mit(args.src, args.dest, config, seed=args.seed, force=args.force)
        print(report.summary())
    else:
        config = convert_checkpoint(
            args.src, args.dest, config=args.config, heads=args.heads, key=args.key, force=args.force
        )
    shapes = expected_torch_shapes(config)
    num_params = sum(math.prod(s) for s in shapes.values())
    print(f"wrote {args.dest}")
    print(f"  config: {describe_config(config)}")
    print(f"  parameters: {num_params:,} in {len(shapes)} tensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
