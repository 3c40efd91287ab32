"""AggPose in PyTorch, written from the architecture description (docs: shared reference AGGPOSE.md).

A benchmark reference only (torch is optional and never imported by the package). Module names are
those of the released state dict, so ``load_state_dict`` takes the released checkpoints. Layout as in
the release: token sequences (B, N, C) with the map size passed alongside, NCHW images in and
heatmaps (B, J, H/4, W/4) out.

    python benchmarks/torch_aggpose.py --check-fixture   # reproduce tests/fixtures/upstream_tiny17_io.npz
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

Map = tuple[torch.Tensor, int, int]  # tokens (B, H*W, C), H, W


class DropPath(nn.Module):
    """Stochastic depth on the residual branch (per sample), active in training only."""

    def __init__(self, rate: float):
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class DWConv(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        y = self.dwconv(x.transpose(1, 2).reshape(b, c, h, w))
        return y.flatten(2).transpose(1, 2)


class MixFFN(nn.Module):
    """fc1 -> depthwise 3x3 -> exact GELU -> fc2, on tokens."""

    def __init__(self, c_in: int, hidden: int, c_out: int):
        super().__init__()
        self.fc1 = nn.Linear(c_in, hidden)
        self.dwconv = DWConv(hidden)
        self.fc2 = nn.Linear(hidden, c_out)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return self.fc2(F.gelu(self.dwconv(self.fc1(x), h, w)))


class Upsample(nn.Module):
    """MixFFN to the target width, then nearest up-sampling by ``factor``."""

    def __init__(self, c_in: int, c_out: int, factor: int):
        super().__init__()
        self.factor = factor
        self.mlp = MixFFN(c_in, c_out, c_out)

    def forward(self, m: Map) -> Map:
        x, h, w = m
        y = self.mlp(x, h, w)
        b, _, c = y.shape
        y = F.interpolate(y.transpose(1, 2).reshape(b, c, h, w), scale_factor=self.factor, mode="nearest")
        return y.flatten(2).transpose(1, 2), h * self.factor, w * self.factor


class PatchEmbed(nn.Module):
    """Overlapping k x k conv with stride s (padding k // 2), then LayerNorm (eps 1e-5)."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride: int = 2):
        super().__init__()
        self.proj = nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2)
        self.norm = nn.LayerNorm(c_out)

    def forward_image(self, x: torch.Tensor) -> Map:
        y = self.proj(x)
        _, _, h, w = y.shape
        return self.norm(y.flatten(2).transpose(1, 2)), h, w

    def forward(self, m: Map) -> Map:
        x, h, w = m
        b, _, c = x.shape
        return self.forward_image(x.transpose(1, 2).reshape(b, c, h, w))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, sr_ratio: int):
        super().__init__()
        self.heads, self.sr_ratio = heads, sr_ratio
        self.scale = (dim // heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        d = c // self.heads
        q = self.q(x).reshape(b, n, self.heads, d).transpose(1, 2)
        src = x
        if self.sr_ratio > 1:
            src = self.sr(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
            src = self.norm(src)
        kv = self.kv(src).reshape(b, -1, 2, self.heads, d).permute(2, 0, 3, 1, 4)
        attn = (q @ kv[0].transpose(-2, -1)) * self.scale
        out = attn.softmax(dim=-1) @ kv[1]
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, sr_ratio: int, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MixFFN(dim, int(dim * mlp_ratio), dim)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.mlp(self.norm2(x), h, w))


def _normalise_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Accept ``ModelConfig.to_dict()`` or the fixture's JSON (``J``, ``depths``)."""
    out = dict(config)
    if "J" in out:
        out.setdefault("num_joints", out["J"])
    return {
        "dims": tuple(out["dims"]),
        "heads": tuple(out["heads"]),
        "sr_ratios": tuple(out["sr_ratios"]),
        "mlp_ratio": float(out["mlp_ratio"]),
        "num_joints": int(out["num_joints"]),
        "stage_depths": tuple(tuple(r) for r in out["stage_depths"]),
        "drop_path_rate": float(out.get("drop_path_rate", 0.1)),
    }


def _stack_name(stream: int, stage: int, prefix: str = "block") -> str:
    return prefix + (f"{stream}" if stage == stream else f"{stream}_{stage - stream}")


class TorchAggPose(nn.Module):
    """AggPose; ``config`` is a ``ModelConfig.to_dict()``-like mapping."""

    def __init__(self, config: Mapping[str, Any]):
        super().__init__()
        cfg = self.cfg = _normalise_config(config)
        d1, d2, d3, d4 = dims = cfg["dims"]
        self.patch_embed1 = PatchEmbed(3, d1, 7, 4)
        self.patch_embed2, self.patch_embed3, self.patch_embed4 = (
            PatchEmbed(d1, d2),
            PatchEmbed(d2, d3),
            PatchEmbed(d3, d4),
        )
        self.patch_embed12 = PatchEmbed(d1, d2)
        self.patch_embed12k, self.patch_embed23k = PatchEmbed(d1, d2), PatchEmbed(d2, d3)
        self.patch_embed12kk, self.patch_embed23kk, self.patch_embed34kk = (
            PatchEmbed(d1, d2),
            PatchEmbed(d2, d3),
            PatchEmbed(d3, d4),
        )
        mix = lambda c_in, c_out: MixFFN(c_in, c_out, c_out)  # noqa: E731
        self.merge_12_1, self.merge_12_2 = mix(2 * d1, d1), mix(2 * d2, d2)
        self.merge_123_1, self.merge_123_2, self.merge_123_3 = mix(2 * d1, d1), mix(3 * d2, d2), mix(2 * d3, d3)
        self.merge_1234_1, self.merge_1234_2 = mix(2 * d1, d1), mix(3 * d2, d2)
        self.merge_1234_3, self.merge_1234_4 = mix(3 * d3, d3), mix(2 * d4, d4)
        self.final, self.final_layer = mix(4 * d1, d1), MixFFN(d1, d1, cfg["num_joints"])
        self.upsample1_21 = Upsample(d2, d1, 2)
        self.upsample2_21, self.upsample2_32 = Upsample(d2, d1, 2), Upsample(d3, d2, 2)
        self.upsample3_21, self.upsample3_32, self.upsample3_43 = (
            Upsample(d2, d1, 2),
            Upsample(d3, d2, 2),
            Upsample(d4, d3, 2),
        )
        self.upsample4_21, self.upsample4_31, self.upsample4_41 = (
            Upsample(d2, d1, 2),
            Upsample(d3, d1, 4),
            Upsample(d4, d1, 8),
        )
        # Drop-path: a ramp over the streams' first stages; later stages reuse their stream's rates.
        first = [row[0] for row in cfg["stage_depths"]]
        ramp = np.linspace(0.0, cfg["drop_path_rate"], sum(first))
        start = np.cumsum([0] + first[:-1])
        for stage in range(1, 5):
            for stream in range(1, stage + 1):
                s, n = stream - 1, cfg["stage_depths"][stream - 1][stage - stream]
                rates = [float(ramp[min(start[s] + i, len(ramp) - 1)]) for i in range(n)]
                blocks = nn.ModuleList(
                    Block(dims[s], cfg["heads"][s], cfg["mlp_ratio"], cfg["sr_ratios"][s], r) for r in rates
                )
                setattr(self, _stack_name(stream, stage), blocks)
                setattr(self, _stack_name(stream, stage, "norm"), nn.LayerNorm(dims[s], eps=1e-6))
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            nn.init.zeros_(m.bias)

    def _stage(self, stream: int, stage: int, m: Map) -> Map:
        x, h, w = m
        for block in getattr(self, _stack_name(stream, stage)):
            x = block(x, h, w)
        return getattr(self, _stack_name(stream, stage, "norm"))(x), h, w

    @staticmethod
    def _merge(mlp: MixFFN, parts: Sequence[Map]) -> Map:
        _, h, w = parts[0]
        return mlp(torch.cat([p[0] for p in parts], dim=-1), h, w), h, w

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        m1 = self._stage(1, 1, self.patch_embed1.forward_image(images))
        m2 = self.patch_embed2(m1)
        m1, m2 = self._stage(1, 2, m1), self._stage(2, 2, m2)
        m3 = self.patch_embed3(m2)
        m1, m2 = (
            self._merge(self.merge_12_1, [m1, self.upsample1_21(m2)]),
            self._merge(self.merge_12_2, [m2, self.patch_embed12(m1)]),
        )
        m1, m2, m3 = self._stage(1, 3, m1), self._stage(2, 3, m2), self._stage(3, 3, m3)
        m4 = self.patch_embed4(m3)
        m1, m2, m3 = (
            self._merge(self.merge_123_1, [m1, self.upsample2_21(m2)]),
            self._merge(self.merge_123_2, [self.patch_embed12k(m1), m2, self.upsample2_32(m3)]),
            self._merge(self.merge_123_3, [self.patch_embed23k(m2), m3]),
        )
        m1, m2, m3, m4 = (self._stage(1, 4, m1), self._stage(2, 4, m2), self._stage(3, 4, m3), self._stage(4, 4, m4))
        m1, m2, m3, m4 = (
            self._merge(self.merge_1234_1, [m1, self.upsample3_21(m2)]),
            self._merge(self.merge_1234_2, [self.patch_embed12kk(m1), m2, self.upsample3_32(m3)]),
            self._merge(self.merge_1234_3, [self.patch_embed23kk(m2), m3, self.upsample3_43(m4)]),
            self._merge(self.merge_1234_4, [self.patch_embed34kk(m3), m4]),
        )
        y, h, w = self._merge(self.final, [m1, self.upsample4_21(m2), self.upsample4_31(m3), self.upsample4_41(m4)])
        y = self.final_layer(y, h, w)
        return y.transpose(1, 2).reshape(y.shape[0], -1, h, w)


def check_fixture(fixtures: pathlib.Path, tolerance: float = 1e-5) -> float:
    """Load the upstream fixture into TorchAggPose and return the relative L2 error of ``y_nchw``."""
    config = json.loads((fixtures / "upstream_tiny17.json").read_text())
    model = TorchAggPose(config).eval()
    model.load_state_dict(torch.load(fixtures / "upstream_tiny17.pth", weights_only=True), strict=True)
    io = np.load(fixtures / "upstream_tiny17_io.npz")
    with torch.no_grad():
        y = model(torch.from_numpy(io["x_nchw"])).numpy()
    ref = io["y_nchw"]
    rel = float(np.linalg.norm(y - ref) / np.linalg.norm(ref))
    if y.shape != ref.shape or not rel <= tolerance:
        raise AssertionError(
            f"TorchAggPose does not reproduce the fixture: shape {y.shape} vs {ref.shape}, "
            f"relative L2 error {rel:.3g} > {tolerance}"
        )
    return rel


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check-fixture", action="store_true", help="reproduce the upstream fixture output")
    parser.add_argument(
        "--fixtures", type=pathlib.Path, default=pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures"
    )
    args = parser.parse_args(argv)
    if args.check_fixture:
        print(f"fixture reproduced: relative L2 error {check_fixture(args.fixtures):.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
