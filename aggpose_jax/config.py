"""The training/evaluation configuration (ml_collections): defaults, validation, model config.

``configs/*.py`` start from ``base_config()`` and change what their recipe needs. Sections:
``model`` (variant name + overrides), ``data`` (see ``aggpose_jax.data.pipeline``), ``optim``,
``train``, ``eval``, ``init``; top level ``seed``, ``init_checkpoint`` and ``freeze``.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
from collections.abc import Sequence
from typing import Any

import ml_collections

from aggpose_jax.pose.geometry import CONVENTIONS
from aggpose_jax.train.optimizer import DECAY_MASKS, SCHEDULES

DATA_SOURCES = ("coco_json", "tfds")
DECODERS = ("dark", "argmax")
MODES = ("train", "eval", "train_and_eval")
# ModelConfig fields set from another section of the config; the rest are model.<field>.
_MODEL_FIELD_KEYS = {"num_joints": "data.keypoints", "image_size": "data.image_size"}


def load_file(path: str) -> ml_collections.ConfigDict:
    """``get_config()`` of the config file ``path``; ``ValueError`` naming the file otherwise."""
    spec = importlib.util.spec_from_file_location("_aggpose_config", path)
    if spec is None or spec.loader is None or not os.path.isfile(path):
        raise ValueError(f"--config: {path}: no such config file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def sibling_config(config_file: str, name: str) -> ml_collections.ConfigDict:
    """`get_config()` of the config file `name` in the same folder as `config_file`."""
    path = os.path.join(os.path.dirname(os.path.abspath(config_file)), name)
    spec = importlib.util.spec_from_file_location(os.path.splitext(name)[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def base_config() -> ml_collections.ConfigDict:
    """Every key the trainer reads, with the release's COCO recipe values where one exists."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    # Architecture: a variant of aggpose_jax.models.aggpose.VARIANTS; () / 0.0 keep the variant's value.
    # num_joints comes from data.keypoints, image_size from data.image_size.
    # kernels: 'auto' | 'xla' | 'cpu' (models/cpu_kernels.py); attention: 'dot_product' | 'cudnn' | 'einsum'.
    c.model = dict(
        name="aggpose_l",
        dims=(),
        heads=(),
        sr_ratios=(),
        stage_depths=(),
        mlp_ratio=0.0,
        drop_path_rate=0.1,
        dtype="float32",
        remat=False,
        unroll_blocks=False,
        kernels="auto",
        attention="dot_product",
    )
    c.data = dict(
        root="",  # '' = a synthetic dataset generated into <workdir>/synthetic
        source="coco_json",
        tfds_data_dir="",
        tfds_name="",
        keypoints="coco",
        image_size=(256, 192),
        heatmap_size=(64, 48),
        sigma=2.0,
        use_gt_bbox=True,
        detections_file="",
        det_score_threshold=0.0,
        num_workers=0,
        prefetch=2,
        affine_convention="aggpose",
        aug=dict(
            scale_factor=0.35,
            rotation_factor=45.0,
            rotation_prob=0.6,
            flip=True,
            half_body_prob=0.3,
            color_jitter_prob=0.5,
            brightness=0.3,
            contrast=0.3,
            saturation=0.3,
            hue=0.1,
        ),
        synthetic=dict(num_images=500, seed=0, image_size=(480, 640), val_fraction=0.2),
    )
    c.optim = dict(
        name="adamw",
        lr=1e-3,
        b1=0.9,
        b2=0.999,
        eps=1e-8,
        # The release builds torch.optim.AdamW(model.parameters(), lr=LR): its config's WD is not passed,
        # so PyTorch's default decay 0.01 applies to every parameter.
        weight_decay=0.01,
        decay_mask="kernels",
        schedule="multistep",
        decay_epochs=(170.0, 200.0, 240.0),
        decay_factor=0.1,
        warmup_epochs=0.0,
        warmup_init_factor=0.001,
        final_lr_factor=0.0,
        grad_clip_norm=0.0,
        grad_accum_steps=1,
    )
    c.train = dict(
        batch_size=128,  # global (all processes and devices)
        num_epochs=250.0,
        num_steps=0,  # num_steps > 0 overrides num_epochs
        log_every_steps=100,
        checkpoint_every_steps=1000,
        keep_checkpoints=3,
        async_checkpoints=True,
        fsdp=False,
        fsdp_min_size=2**18,
    )
    c.eval = dict(
        every_steps=0,
        every_epochs=10.0,  # every_steps > 0 takes precedence; 0/0 = only at the end
        batch_size=64,
        flip_test=True,
        decode="dark",
        shift_heatmap=False,
        oks_nms_thre=0.9,
        in_vis_thre=0.2,
        draw_images=4,
        ann_file="",  # '' = ROOT/annotations/person_keypoints_val2017.json
        image_dir="",  # '' = ROOT/val2017
    )
    c.init = dict(mit_checkpoint="")  # MiT ImageNet weights (SegFormer mit_b2/mit_b5 .pth) for the backbone
    c.init_checkpoint = ""  # AggPose .pth or converted model directory: start from (or, in eval, evaluate) it
    c.freeze = ()  # regexes on parameter paths ('block1/layers/attn/q/kernel') whose values stay fixed
    return c


def _err(key: str, msg: str, value: Any) -> ValueError:
    return ValueError(f"config.{key}: {msg} (got {value!r})")


def _choice(config: ml_collections.ConfigDict, key: str, choices: tuple[str, ...]) -> None:
    value = _get(config, key)
    if value not in choices:
        raise _err(key, f"must be one of {list(choices)}", value)


def _get(config: ml_collections.ConfigDict, key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        node = node[part]
    return node


def _positive(config: ml_collections.ConfigDict, key: str, allow_zero: bool = False) -> None:
    value = _get(config, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (value == 0 and not allow_zero):
        raise _err(key, "must be a " + ("non-negative" if allow_zero else "positive") + " number", value)


def validate(config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict | None = None) -> Any:
    """Check ``config`` once, before anything runs; returns its ``ModelConfig``.

    Types against ``reference`` (the config file's own values, when given), then every value, then the
    architecture. Raises ``ValueError('config.<key>: ...')`` for the first problem.
    """
    from aggpose_jax.pose.keypoints import get_keypoint_set

    if reference is not None:
        check_types(config, reference)

    _choice(config, "data.source", DATA_SOURCES)
    _choice(config, "optim.schedule", SCHEDULES)
    _choice(config, "optim.decay_mask", DECAY_MASKS)
    _choice(config, "eval.decode", DECODERS)
    _choice(config, "data.affine_convention", CONVENTIONS)
    try:
        get_keypoint_set(config.data.keypoints)
    except (KeyError, ValueError) as err:
        raise _err("data.keypoints", str(err).strip("\"'"), config.data.keypoints) from None
    for key in (
        "optim.lr",
        "train.batch_size",
        "eval.batch_size",
        "data.sigma",
        "optim.grad_accum_steps",
        "train.log_every_steps",
        "train.keep_checkpoints",
    ):
        _positive(config, key)
    for key in (
        "optim.weight_decay",
        "optim.warmup_epochs",
        "optim.grad_clip_norm",
        "train.num_steps",
        "train.num_epochs",
        "train.checkpoint_every_steps",
        "eval.every_steps",
        "eval.every_epochs",
        "data.num_workers",
        "data.prefetch",
        "eval.draw_images",
    ):
        _positive(config, key, allow_zero=True)
    if config.train.num_steps == 0 and config.train.num_epochs == 0:
        raise _err("train.num_epochs", "set num_epochs or num_steps", 0)
    h, w = (int(v) for v in config.data.image_size)
    if h % 32 or w % 32 or h <= 0 or w <= 0:
        raise _err("data.image_size", "(H, W) must be positive multiples of 32", tuple(config.data.image_size))
    if tuple(int(v) for v in config.data.heatmap_size) != (h // 4, w // 4):
        raise _err(
            "data.heatmap_size",
            f"must be image_size / 4 = {(h // 4, w // 4)} (the model predicts at 1/4)",
            tuple(config.data.heatmap_size),
        )
    if config.data.source == "tfds" and not config.eval.ann_file:
        raise _err("eval.ann_file", "the COCO ground-truth JSON is required with data.source='tfds'", "")
    for pattern in config.freeze:
        try:
            re.compile(pattern)
        except (re.error, TypeError) as err:
            raise _err("freeze", f"invalid regex {pattern!r}: {err}", tuple(config.freeze)) from None
    return model_config(config)


def model_config(config: ml_collections.ConfigDict) -> Any:
    """The ``ModelConfig`` for ``config`` (variant + overrides, joints from the keypoint set)."""
    from aggpose_jax.models.aggpose import VARIANTS, ModelConfigError, get_model_config
    from aggpose_jax.pose.keypoints import get_keypoint_set

    m = config.model
    if m.name not in VARIANTS:
        raise _err("model.name", f"must be one of {sorted(VARIANTS)}", m.name)
    overrides: dict[str, Any] = dict(
        num_joints=get_keypoint_set(config.data.keypoints).num_joints,
        image_size=tuple(int(v) for v in config.data.image_size),
        drop_path_rate=float(m.drop_path_rate),
        dtype=m.dtype,
        remat=bool(m.remat),
        unroll_blocks=bool(m.unroll_blocks),
        kernels=m.kernels,
        attention=m.attention,
    )
    for key in ("dims", "heads", "sr_ratios", "stage_depths"):
        if len(m[key]):
            overrides[key] = tuple(tuple(v) if isinstance(v, (tuple, list)) else v for v in m[key])
    if m.mlp_ratio:
        overrides["mlp_ratio"] = float(m.mlp_ratio)
    try:
        return get_model_config(m.name, **overrides)
    except ModelConfigError as err:
        key = _MODEL_FIELD_KEYS.get(err.field, f"model.{err.field}")
        raise ValueError(f"config.{key}: {err.reason}") from None


def check_types(config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict, prefix: str = "") -> None:
    """Raise ``ValueError('config.<key>: ...')`` where ``config`` holds a value of another type than
    ``reference`` (the config file's own values); ints are accepted for floats, tuple elements are checked."""
    for key, ref in reference.items():
        name = f"{prefix}{key}"
        if key not in config:
            raise ValueError(f"config.{name}: missing")
        value = config[key]
        if isinstance(ref, ml_collections.ConfigDict):
            if not isinstance(value, ml_collections.ConfigDict):
                raise _err(name, "must be a section (ConfigDict)", value)
            check_types(value, ref, f"{name}.")
            continue
        if not _same_kind(value, ref):
            raise _err(name, f"expected {_kind(ref)}", value)


def _kind(ref: Any) -> str:
    if isinstance(ref, tuple):
        plural = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}.get(
            type(ref[0]) if ref else None
        )
        return f"a tuple of {plural}" if plural else "a tuple"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(type(ref), type(ref).__name__)


def _same_kind(value: Any, ref: Any) -> bool:
    if ref is None:
        return True
    if isinstance(ref, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(ref, bool)
    if isinstance(ref, float):
        return isinstance(value, (int, float))
    if isinstance(ref, (tuple, list)):
        if not isinstance(value, (tuple, list)):
            return False
        return not ref or all(_same_kind(v, ref[0]) for v in value)
    return isinstance(value, type(ref))


def check_paths(config: ml_collections.ConfigDict) -> None:
    """Raise ``ValueError('config.<key>: PATH: no such file or directory')`` for a named input that is missing."""
    keys = ("data.root", "data.detections_file", "eval.ann_file", "eval.image_dir", "init_checkpoint",
            "init.mit_checkpoint", "data.tfds_data_dir")  # fmt: skip
    for key in keys:
        value = _get(config, key)
        if value and not os.path.exists(os.fspath(value)):
            raise ValueError(f"config.{key}: {value}: no such file or directory")


def config_path(argv: Sequence[str]) -> str | None:
    """The value of ``--config`` in ``argv`` (None when absent)."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def unknown_override(argv: Sequence[str], reference: ml_collections.ConfigDict) -> str | None:
    """A one-line error for the first ``--config.<key>`` flag whose key is not in ``reference``."""
    for arg in argv:
        hit = re.match(r"--config\.([\w.]+)(=|$)", arg)
        if not hit:
            continue
        node: Any = reference
        walked: list[str] = []
        for part in hit.group(1).split("."):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                options = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
                close = difflib.get_close_matches(part, options, n=1)
                where = ".".join(walked) or "the top level"
                hint = (
                    f"; did you mean {'.'.join(walked + close)!r}?"
                    if close
                    else f"; keys in {where}: {sorted(options)}"
                )
                return f"--config.{hit.group(1)}: unknown config key {'.'.join(walked + [part])!r}{hint}"
            walked.append(part)
            node = node[part]
    return None


__all__ = [
    "DATA_SOURCES",
    "DECODERS",
    "MODES",
    "base_config",
    "check_types",
    "config_path",
    "load_file",
    "model_config",
    "sibling_config",
    "unknown_override",
    "validate",
]
