"""The training/evaluation configuration: ml_collections defaults for users, one typed run config for the code.

``configs/*.py`` start from ``base_config()`` and change what their recipe needs (``--config.x=y`` on the
command line). Sections: ``model`` (variant name + overrides), ``data`` (see ``aggpose_jax.data.pipeline``),
``optim``, ``train``, ``eval``, ``init``; top level ``seed``, ``init_checkpoint`` and ``freeze``.

``validate`` is the one place that reads the ``ConfigDict``: it checks every value once and returns a
frozen :class:`RunConfig` carrying every derived value (the ``ModelConfig`` with its kernels resolved for
the devices the step runs on, the global and per-process batches, the synthetic data root, the
evaluation ground truth, ...). Everything below takes the ``RunConfig``; nothing re-derives, re-checks
or changes it. ``RunConfig.record()`` is the JSON written to ``<workdir>/config.json``.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import os
import re
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections

from aggpose_jax import storage
from aggpose_jax.data.pipeline import BatchSplit
from aggpose_jax.data.transforms import AugmentConfig
from aggpose_jax.models import cpu_kernels
from aggpose_jax.models.aggpose import VARIANTS, ModelConfig, ModelConfigError, get_model_config
from aggpose_jax.pose.geometry import CONVENTIONS
from aggpose_jax.pose.keypoints import KeypointSet, get_keypoint_set

DATA_SOURCES = ("coco_json", "tfds")
DECODERS = ("dark", "argmax")
MODES = ("train", "eval", "train_and_eval")
DECAY_MASKS = ("kernels", "all", "none")  # train/optimizer.py builds them
SCHEDULES = ("multistep", "cosine", "constant")
SYNTHETIC_DIR = "synthetic"  # data.root='' : <workdir>/synthetic
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
        aug=dataclasses.asdict(AugmentConfig()),  # the release's values (data/transforms.py owns them)
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


@dataclasses.dataclass(frozen=True)
class SyntheticSettings:
    """``data.synthetic``: the generated set used when ``data.root`` is empty."""

    num_images: int
    seed: int
    image_size: tuple[int, int]
    val_fraction: float


@dataclasses.dataclass(frozen=True)
class DataSettings:
    """``data``, checked; ``root`` is resolved (``<workdir>/synthetic`` when the config's is empty)."""

    source: str
    root: str
    generate_synthetic: bool  # root is <workdir>/synthetic, generated on first use (workdir.prepare_data)
    synthetic_on_each_host: bool  # a gs:// workdir: root is a local folder, generated by each process
    tfds_data_dir: str
    tfds_name: str
    keypoints: str
    keypoint_set: KeypointSet
    image_size: tuple[int, int]
    heatmap_size: tuple[int, int]
    sigma: float
    use_gt_bbox: bool
    detections_file: str
    det_score_threshold: float
    num_workers: int
    prefetch: int
    affine_convention: str
    aug: AugmentConfig
    synthetic: SyntheticSettings


@dataclasses.dataclass(frozen=True)
class OptimSettings:
    """``optim``, checked (``train/optimizer.py`` builds the optimizer and schedule from it)."""

    name: str
    lr: float
    b1: float
    b2: float
    eps: float
    weight_decay: float
    decay_mask: str
    schedule: str
    decay_epochs: tuple[float, ...]
    decay_factor: float
    warmup_epochs: float
    warmup_init_factor: float
    final_lr_factor: float
    grad_clip_norm: float
    grad_accum_steps: int


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """``train``, checked; ``batch`` is the global batch split over the processes and devices."""

    batch: BatchSplit
    num_epochs: float
    num_steps: int
    log_every_steps: int
    checkpoint_every_steps: int
    keep_checkpoints: int
    async_checkpoints: bool
    fsdp: bool
    fsdp_min_size: int


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """``eval``, checked; ``ann_file`` and ``image_dir`` are resolved, ``batch`` split over the processes."""

    batch: BatchSplit
    every_steps: int
    every_epochs: float
    flip_test: bool
    decode: str
    shift_heatmap: bool
    oks_nms_thre: float | None  # None: no OKS-NMS (a negative config value)
    in_vis_thre: float
    draw_images: int
    ann_file: str
    image_dir: str | None


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything a run reads, checked and derived once by :func:`validate` (frozen: nothing changes it)."""

    seed: int
    model_name: str
    model: ModelConfig  # kernels resolved to 'xla' or 'cpu' for ``platform``
    data: DataSettings
    optim: OptimSettings
    train: TrainSettings
    eval: EvalSettings
    mit_checkpoint: str
    init_checkpoint: str
    freeze: tuple[str, ...]
    platform: str  # jax backend of the devices the step runs on
    process_count: int
    device_count: int
    recorded: str = dataclasses.field(repr=False)  # JSON of the config as checked (root resolved)

    def record(self) -> dict[str, Any]:
        """The config as written to ``<workdir>/config.json`` (the config file's keys, root resolved)."""
        return json.loads(self.recorded)


@dataclasses.dataclass(frozen=True)
class TrainSchedule:
    """Step counts of a run, from its config and the size of its training set (built once by the trainer)."""

    steps_per_epoch: int
    total_steps: int
    eval_every: int  # 0: only at the end

    @classmethod
    def of(cls, run: RunConfig, train_set_size: int) -> TrainSchedule:
        steps_per_epoch = train_set_size // run.train.batch.global_size
        if steps_per_epoch < 1:
            raise ValueError(
                f"config.train.batch_size: {run.train.batch.global_size} is larger than the training set "
                f"({train_set_size} people)"
            )
        t, ev = run.train, run.eval
        total = t.num_steps or int(round(t.num_epochs * steps_per_epoch))
        return cls(steps_per_epoch, total, ev.every_steps or int(round(ev.every_epochs * steps_per_epoch)))


def validate(
    config: ml_collections.ConfigDict,
    reference: ml_collections.ConfigDict | None = None,
    *,
    workdir: str | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> RunConfig:
    """Check ``config`` once, before anything runs, and return its :class:`RunConfig`.

    Types against ``reference`` (the config file's own values, when given), then every value, then the
    architecture, then the batches against ``devices`` (default: every device of every process; in a
    multi-process job the distributed runtime must be started first). ``workdir``: where ``data.root=''``
    puts the synthetic set (required then). Raises ``ValueError('config.<key>: ...')`` for the first problem.
    """
    if reference is not None:
        check_types(config, reference)

    _choice(config, "data.source", DATA_SOURCES)
    _choice(config, "optim.schedule", SCHEDULES)
    _choice(config, "optim.decay_mask", DECAY_MASKS)
    _choice(config, "eval.decode", DECODERS)
    _choice(config, "data.affine_convention", CONVENTIONS)
    if config.optim.name != "adamw":
        raise _err("optim.name", "only 'adamw' is supported", config.optim.name)
    try:
        keypoint_set = get_keypoint_set(config.data.keypoints)
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
    platform = _check_kernels(config)
    model = model_config(config, platform=platform)

    devices = list(devices) if devices is not None else jax.devices()
    process_count = len({d.process_index for d in devices})
    device_count = len(devices)
    train_batch = _split(config, "train.batch_size", process_count, device_count)
    eval_batch = _split(config, "eval.batch_size", process_count, 1)  # padded to the device count per batch

    d, ev = config.data, config.eval
    # data.root='': the synthetic set in <workdir>/synthetic (left empty without a workdir: no data read)
    generate = d.source == "coco_json" and not d.root and workdir is not None
    # the input pipeline reads local files: for a gs:// workdir, a copy on each host, the same from the seed
    on_each_host = generate and storage.is_url(workdir)
    root = storage.local_folder(storage.join(storage.absolute(workdir), SYNTHETIC_DIR)) if generate else d.root
    root = os.fspath(root)
    detections = os.fspath(d.detections_file)
    if generate and not d.use_gt_bbox and not detections:
        detections = os.path.join(root, "person_detections_val2017.json")
    syn = d.synthetic
    data = DataSettings(
        source=d.source,
        root=root,
        generate_synthetic=generate,
        synthetic_on_each_host=on_each_host,
        tfds_data_dir=os.fspath(d.tfds_data_dir),
        tfds_name=d.tfds_name,
        keypoints=keypoint_set.name,
        keypoint_set=keypoint_set,
        image_size=(h, w),
        heatmap_size=(h // 4, w // 4),
        sigma=float(d.sigma),
        use_gt_bbox=bool(d.use_gt_bbox),
        detections_file=detections,
        det_score_threshold=float(d.det_score_threshold),
        num_workers=int(d.num_workers),
        prefetch=int(d.prefetch),
        affine_convention=d.affine_convention,
        aug=AugmentConfig.from_config(d.aug),
        synthetic=SyntheticSettings(
            int(syn.num_images), int(syn.seed), tuple(int(v) for v in syn.image_size), float(syn.val_fraction)
        ),
    )
    o = config.optim
    optim = OptimSettings(
        name=o.name,
        lr=float(o.lr),
        b1=float(o.b1),
        b2=float(o.b2),
        eps=float(o.eps),
        weight_decay=float(o.weight_decay),
        decay_mask=o.decay_mask,
        schedule=o.schedule,
        decay_epochs=tuple(float(v) for v in o.decay_epochs),
        decay_factor=float(o.decay_factor),
        warmup_epochs=float(o.warmup_epochs),
        warmup_init_factor=float(o.warmup_init_factor),
        final_lr_factor=float(o.final_lr_factor),
        grad_clip_norm=float(o.grad_clip_norm),
        grad_accum_steps=int(o.grad_accum_steps),
    )
    t = config.train
    train = TrainSettings(
        batch=train_batch,
        num_epochs=float(t.num_epochs),
        num_steps=int(t.num_steps),
        log_every_steps=int(t.log_every_steps),
        checkpoint_every_steps=int(t.checkpoint_every_steps),
        keep_checkpoints=int(t.keep_checkpoints),
        async_checkpoints=bool(t.async_checkpoints),
        fsdp=bool(t.fsdp),
        fsdp_min_size=int(t.fsdp_min_size),
    )
    nms = float(ev.oks_nms_thre)
    evaluation = EvalSettings(
        batch=eval_batch,
        every_steps=int(ev.every_steps),
        every_epochs=float(ev.every_epochs),
        flip_test=bool(ev.flip_test),
        decode=ev.decode,
        shift_heatmap=bool(ev.shift_heatmap),
        oks_nms_thre=nms if nms >= 0 else None,
        in_vis_thre=float(ev.in_vis_thre),
        draw_images=int(ev.draw_images),
        ann_file=os.fspath(ev.ann_file) or os.path.join(root, "annotations", "person_keypoints_val2017.json"),
        image_dir=os.fspath(ev.image_dir) or None,
    )
    recorded = json.loads(json.dumps(config.to_dict()))
    recorded["data"]["root"] = root
    return RunConfig(
        seed=int(config.seed),
        model_name=config.model.name,
        model=model,
        data=data,
        optim=optim,
        train=train,
        eval=evaluation,
        mit_checkpoint=os.fspath(config.init.mit_checkpoint),
        init_checkpoint=os.fspath(config.init_checkpoint),
        freeze=tuple(config.freeze),
        platform=platform,
        process_count=process_count,
        device_count=device_count,
        recorded=json.dumps(recorded, sort_keys=True),
    )


def _check_kernels(config: ml_collections.ConfigDict) -> str:
    """The backend the step runs on, after checking ``model.kernels``."""
    _choice(config, "model.kernels", cpu_kernels.KERNEL_CHOICES)
    return jax.default_backend()


def _split(config: ml_collections.ConfigDict, key: str, process_count: int, device_count: int) -> BatchSplit:
    try:
        return BatchSplit.of(int(_get(config, key)), process_count, jax.process_index(), device_count)
    except ValueError as err:
        raise ValueError(f"config.{key}: {err}") from None


def model_config(config: ml_collections.ConfigDict, *, platform: str | None = None) -> ModelConfig:
    """The ``ModelConfig`` of a config (variant + overrides, joints from the keypoint set).

    ``platform``: resolve ``model.kernels='auto'`` for that backend (``validate`` does, for the run's devices);
    None keeps the configured value (reading a recorded workdir config, whose architecture is what counts).
    """
    m = config.model
    if m.name not in VARIANTS:
        raise _err("model.name", f"must be one of {sorted(VARIANTS)}", m.name)
    kernels = m.kernels if platform is None else cpu_kernels.resolve(m.kernels, platform)
    overrides: dict[str, Any] = dict(
        num_joints=get_keypoint_set(config.data.keypoints).num_joints,
        image_size=tuple(int(v) for v in config.data.image_size),
        drop_path_rate=float(m.drop_path_rate),
        dtype=m.dtype,
        remat=bool(m.remat),
        unroll_blocks=bool(m.unroll_blocks),
        kernels=kernels,
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
    "DECAY_MASKS",
    "DECODERS",
    "MODES",
    "SCHEDULES",
    "DataSettings",
    "EvalSettings",
    "OptimSettings",
    "RunConfig",
    "TrainSchedule",
    "TrainSettings",
    "base_config",
    "check_types",
    "config_path",
    "load_file",
    "model_config",
    "sibling_config",
    "unknown_override",
    "validate",
]
