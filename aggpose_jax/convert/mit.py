"""Initialise AggPose's backbone path from Mix-Transformer (MiT / SegFormer) ImageNet weights.

Accepted files (any format ``read_state_dict`` reads, e.g. ``.pth`` or ``.safetensors``):
  * NVlabs ``mit_b*.pth``: names ``patch_embed{1..4}.*``, ``block{1..4}.<i>.*``, ``norm{1..4}.*`` (already
    AggPose's names), plus the classification ``head.*``; an ``backbone.`` prefix (mmseg) is stripped.
  * Hugging Face Segformer: ``encoder.patch_embeddings.{i}.proj|layer_norm``, ``encoder.block.{i}.{j}.*``,
    ``encoder.layer_norm.{i}`` (an optional ``segformer.`` prefix is stripped); separate attention
    ``key`` / ``value`` Linears are concatenated into AggPose's ``kv`` (key first).
Classification and decode heads are ignored. Every other AggPose tensor keeps its initialisation; the
report lists them. The file must fit the model's backbone exactly (widths, first-stage depths).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping

import numpy as np

from aggpose_jax.convert.mapping import CheckpointMismatchError, expected_torch_shapes, flax_to_torch, torch_to_flax
from aggpose_jax.convert.torch_reader import read_state_dict
from aggpose_jax.models.aggpose import ModelConfig

_IGNORED_PREFIXES = ("head.", "classifier.", "decode_head.", "auxiliary_head.")
_BACKBONE = re.compile(r"^(patch_embed[1-4]\.|block[1-4]\.\d+\.|norm[1-4]\.)")
_HF_BLOCK_PARTS = {  # Hugging Face sub-module name -> AggPose (NVlabs) sub-module name inside a block
    "layer_norm_1": "norm1",
    "attention.self.query": "attn.q",
    "attention.self.sr": "attn.sr",
    "attention.self.layer_norm": "attn.norm",
    "attention.output.dense": "attn.proj",
    "layer_norm_2": "norm2",
    "mlp.dense1": "mlp.fc1",
    "mlp.dwconv.dwconv": "mlp.dwconv.dwconv",
    "mlp.dense2": "mlp.fc2",
}
_MAX_LISTED = 8


@dataclasses.dataclass
class MitImportReport:
    """What an MiT import did: AggPose tensor names loaded / left at their initialisation, file names ignored."""

    source: str
    source_format: str  # 'nvlabs' | 'huggingface'
    loaded: list[str]
    fresh: list[str]
    ignored: list[str]

    def summary(self) -> str:
        groups = sorted({re.sub(r"\..*", "", name) for name in self.fresh})
        return (
            f"{self.source} ({self.source_format} names): loaded {len(self.loaded)} backbone tensors; "
            f"{len(self.fresh)} tensors keep their fresh initialisation (in {', '.join(groups)}); "
            f"ignored {len(self.ignored)} head tensors"
        )


def is_backbone_name(name: str) -> bool:
    """True for AggPose tensors that MiT weights provide (patch_embed1-4, block1-4, norm1-4)."""
    return bool(_BACKBONE.match(name))


def _from_hf(name: str) -> str | None:
    """AggPose name of a Hugging Face encoder tensor (None when unknown; key/value handled by the caller)."""
    if m := re.fullmatch(r"encoder\.patch_embeddings\.(\d)\.(proj|layer_norm)\.(weight|bias)", name):
        return f"patch_embed{int(m[1]) + 1}.{'proj' if m[2] == 'proj' else 'norm'}.{m[3]}"
    if m := re.fullmatch(r"encoder\.layer_norm\.(\d)\.(weight|bias)", name):
        return f"norm{int(m[1]) + 1}.{m[2]}"
    if m := re.fullmatch(r"encoder\.block\.(\d)\.(\d+)\.(.+)\.(weight|bias)", name):
        part = _HF_BLOCK_PARTS.get(m[3])
        return None if part is None else f"block{int(m[1]) + 1}.{m[2]}.{part}.{m[4]}"
    return None


def to_aggpose_names(state_dict: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str], list[str], str]:
    """(tensors under AggPose names, ignored head names, unrecognised names, 'nvlabs' | 'huggingface')."""
    renamed: dict[str, np.ndarray] = {}
    ignored, unknown = [], []
    sd = {
        (
            n[len("segformer.") :]
            if n.startswith("segformer.")
            else n[len("backbone.") :]
            if n.startswith("backbone.")
            else n
        ): v
        for n, v in state_dict.items()
    }
    hf = any(n.startswith("encoder.") for n in sd)
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for name, value in sd.items():
        if name.startswith(_IGNORED_PREFIXES):
            ignored.append(name)
        elif not hf and is_backbone_name(name):
            renamed[name] = value
        elif not hf:
            unknown.append(name)
        elif m := re.fullmatch(r"encoder\.block\.(\d)\.(\d+)\.attention\.self\.(key|value)\.(weight|bias)", name):
            pairs.setdefault(f"block{int(m[1]) + 1}.{m[2]}.attn.kv.{m[4]}", {})[m[3]] = value
        elif (target := _from_hf(name)) is not None:
            renamed[target] = value
        else:
            unknown.append(name)
    for target, parts in pairs.items():
        if set(parts) != {"key", "value"} or parts["key"].shape != parts["value"].shape:
            unknown.append(f"{target} (incomplete or mismatched attention key/value pair)")
        else:
            renamed[target] = np.concatenate([parts["key"], parts["value"]], axis=0)
    return renamed, ignored, unknown, "huggingface" if hf else "nvlabs"


def _listing(title: str, items: list[str]) -> str:
    more = f" ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return f"{title} ({len(items)}): {', '.join(items[:_MAX_LISTED])}{more}"


def check_backbone(tensors: Mapping[str, np.ndarray], unknown: list[str], config: ModelConfig, path: str) -> None:
    """Raise ``CheckpointMismatchError`` (one line) unless the MiT tensors fit the backbone of ``config``."""
    expected = {n: s for n, s in expected_torch_shapes(config).items() if is_backbone_name(n)}
    misshaped = [
        f"{n} {tuple(v.shape)} vs model {expected[n]}"
        for n, v in tensors.items()
        if n in expected and tuple(v.shape) != expected[n]
    ]
    missing = [n for n in expected if n not in tensors]
    unexpected = unknown + [n for n in tensors if n not in expected]
    parts = [
        _listing(t, items)
        for t, items in (
            ("mis-shaped", misshaped),
            ("missing from the file", missing),
            ("not in the model", unexpected),
        )
        if items
    ]
    if parts:
        first = tuple(row[0] for row in config.stage_depths)
        raise CheckpointMismatchError(
            f"{path}: MiT weights do not fit the AggPose backbone (dims={config.dims}, "
            f"first-stage depths={first}): {'; '.join(parts)}"
        )


def import_mit_backbone(params: Mapping, path: str | os.PathLike, config: ModelConfig) -> tuple[dict, MitImportReport]:
    """``params`` (a nested dict for ``config``) with MiT weights from ``path`` in its backbone, and a report.

    Raises ``CheckpointMismatchError`` naming the tensors that do not fit; ``params`` is not modified.
    """
    path = os.fspath(path)
    tensors, ignored, unknown, fmt = to_aggpose_names(read_state_dict(path))
    check_backbone(tensors, unknown, config, path)
    full = flax_to_torch(params, config)
    full.update(tensors)
    names = expected_torch_shapes(config)
    report = MitImportReport(
        source=path,
        source_format=fmt,
        loaded=[n for n in names if n in tensors],
        fresh=[n for n in names if n not in tensors],
        ignored=ignored,
    )
    return torch_to_flax(full, config), report


__all__ = ["MitImportReport", "check_backbone", "import_mit_backbone", "is_backbone_name", "to_aggpose_names"]
