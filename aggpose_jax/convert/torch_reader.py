"""Read PyTorch checkpoints (``torch.save`` zip format) without torch and without running pickled code.

A ``torch.save`` file is a zip archive ``ARCHIVE/data.pkl`` (the pickled object), ``ARCHIVE/data/<key>``
(one raw storage per key), ``ARCHIVE/byteorder`` ('little' or 'big'; absent means little) and a few
version records. The pickle is read by an unpickler whose ``find_class`` maps the handful of globals a
state dict or a training checkpoint needs to functions of this module (torch itself is never
imported); any other global (``os.system``, ``builtins.eval``, ...) is refused before anything runs.
Tensors come back as numpy arrays (dtype, storage offset, size and stride honoured).

Allow-list (module, name) and why each entry is there:
  * ``collections.OrderedDict``: ``state_dict()`` is an OrderedDict; every tensor also carries an empty
    OrderedDict of backward hooks.
  * ``torch._utils._rebuild_tensor_v2``: how every tensor is pickled (storage, offset, size, stride).
  * ``torch._utils._rebuild_parameter``: an ``nn.Parameter`` saved directly (e.g. in custom dicts).
  * ``torch.{Float,Double,Half,BFloat16,Long,Int,Short,Char,Byte,Bool,ComplexFloat,ComplexDouble}Storage``:
    the storage type names a tensor's dtype (the persistent id of each storage refers to it).
  * ``numpy.dtype``, ``numpy.core.multiarray.scalar`` (``numpy._core`` for numpy >= 2) and
    ``_codecs.encode``: numpy scalars, as HRNet-style training loops store the validation AP ('perf');
    restricted to numeric dtypes and to latin-1 encoding (how protocol 2 pickles the scalar's bytes).
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from aggpose_jax.convert.safetensors_reader import is_safetensors, read_safetensors
from aggpose_jax.errors import CheckpointError

# Legacy (torch < 1.6) files start with a protocol-2 pickle of this magic number.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PREFIX = b"\x80\x02\x8a\x0a" + _LEGACY_MAGIC.to_bytes(10, "little")

_STORAGE_DTYPES = {
    "FloatStorage": "f4",
    "DoubleStorage": "f8",
    "HalfStorage": "f2",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "i8",
    "IntStorage": "i4",
    "ShortStorage": "i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
    "ComplexFloatStorage": "c8",
    "ComplexDoubleStorage": "c16",
}
# Wrapping keys of training checkpoints, in order of precedence (see read_state_dict).
STATE_DICT_KEYS = ("state_dict", "best_state_dict", "model")
_NUMERIC_KINDS = "biufc?"


def _numpy_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes  # a jax dependency; only needed for bfloat16 storages

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


class _Frozen:
    """Base of the objects the unpickler hands out for allowed globals: a pickle cannot modify them
    (BUILD / setattr refused), so one file cannot change how the next one is read."""

    __slots__ = ()

    def __setattr__(self, name: str, value: Any) -> None:
        raise pickle.UnpicklingError(f"attribute {name!r} of an allowed global cannot be set")

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError("an allowed global cannot be modified (BUILD)")


class _Allowed(_Frozen):
    """An allow-listed global: calls ``fn``."""

    __slots__ = ("fn",)

    def __init__(self, fn: Any):
        object.__setattr__(self, "fn", fn)

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)


class _StorageType(_Frozen):
    """Stands in for ``torch.<X>Storage``: carries the element dtype; not callable."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "dtype", _numpy_dtype(_STORAGE_DTYPES[name]))


def _native_storage(raw: bytes, dtype: np.dtype, numel: int, byteorder: str) -> np.ndarray:
    """The first ``numel`` elements of ``raw`` (stored in ``byteorder``) as a native-order array."""
    if byteorder == "little" or dtype.itemsize == 1:
        return np.frombuffer(raw, dtype.newbyteorder("<") if dtype.kind != "V" else dtype, count=numel)
    if dtype.kind == "V":  # bfloat16 (ml_dtypes) has no big-endian variant: swap as uint16
        return np.frombuffer(raw, ">u2", count=numel).astype("<u2").view(dtype)
    return np.frombuffer(raw, dtype.newbyteorder(">"), count=numel).astype(dtype.newbyteorder("="))


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple, stride: tuple, *_: Any) -> np.ndarray:
    """``torch._utils._rebuild_tensor_v2``: a strided view of ``storage``, copied into a fresh array."""
    if not isinstance(storage, np.ndarray):
        raise pickle.UnpicklingError("tensor without a storage")
    size, stride = tuple(size), tuple(stride)
    ints = (offset, *size, *stride)
    if len(size) != len(stride) or not all(isinstance(v, int) and v >= 0 for v in ints):
        raise pickle.UnpicklingError(f"invalid tensor geometry: offset {offset}, size {size}, stride {stride}")
    if 0 in size:
        return np.zeros(size, storage.dtype)
    extent = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1
    if extent > storage.size:
        raise pickle.UnpicklingError(
            f"tensor of size {size}, stride {stride}, offset {offset} reaches "
            f"element {extent} of a storage of {storage.size}"
        )
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=[s * item for s in stride], writeable=False
    )
    return np.array(view, copy=True)


def _rebuild_parameter(data: np.ndarray, *_: Any) -> np.ndarray:
    """``torch._utils._rebuild_parameter``: a Parameter is its data."""
    return data


def _safe_dtype(spec: Any, align: bool = False, copy: bool = False) -> np.dtype:
    """``numpy.dtype`` restricted to plain numeric dtypes given by name."""
    dtype = np.dtype(spec, copy=True) if isinstance(spec, str) and len(spec) <= 8 else None  # never a singleton
    if dtype is None or dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None:
        raise pickle.UnpicklingError(f"numpy dtype {spec!r} is not a plain numeric dtype")
    return dtype


def _safe_scalar(dtype: Any, data: Any = None) -> Any:
    """``numpy.core.multiarray.scalar`` restricted to numeric dtypes and raw bytes."""
    if (
        not isinstance(dtype, np.dtype)
        or dtype.kind not in _NUMERIC_KINDS
        or not isinstance(data, bytes)
        or len(data) != dtype.itemsize
    ):
        raise pickle.UnpicklingError("numpy scalar that is not a plain number")
    return np.frombuffer(data, dtype)[0]


def _latin1_encode(text: Any, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol 2 uses it for bytes: only (str, 'latin1')."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError('_codecs.encode is only allowed as (str, "latin1")')
    return text.encode("latin1")


_ALLOWED: dict[tuple[str, str], _Frozen] = {
    ("collections", "OrderedDict"): _Allowed(collections.OrderedDict),
    ("torch._utils", "_rebuild_tensor_v2"): _Allowed(_rebuild_tensor),
    ("torch._utils", "_rebuild_parameter"): _Allowed(_rebuild_parameter),
    ("numpy", "dtype"): _Allowed(_safe_dtype),
    ("numpy.core.multiarray", "scalar"): _Allowed(_safe_scalar),
    ("numpy._core.multiarray", "scalar"): _Allowed(_safe_scalar),
    ("_codecs", "encode"): _Allowed(_latin1_encode),
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}
ALLOWED_GLOBALS: tuple[str, ...] = tuple(sorted(f"{m}.{n}" for m, n in _ALLOWED))


class _RefusedGlobal(pickle.UnpicklingError):
    pass


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only allow-listed globals and reads storages from the archive."""

    def __init__(self, data: bytes, load_storage: Any):
        super().__init__(io.BytesIO(data))
        self._load_storage = load_storage
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _RefusedGlobal(f"{module}.{name}") from None

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (
            isinstance(pid, tuple)
            and len(pid) == 5
            and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)
            and isinstance(pid[2], str)
            and isinstance(pid[4], int)
        ):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel = pid
        if key not in self._storages:
            self._storages[key] = self._load_storage(key, storage_type.dtype, numel)
        return self._storages[key]


def _describe_non_zip(path: str, head: bytes) -> str:
    if head.startswith(b"PK\x03\x04"):
        return f"{path}: truncated or damaged zip archive (the end of the file is missing or corrupt)"
    if head.startswith(_LEGACY_PREFIX) or head[257:262] == b"ustar":
        return (
            f"{path}: legacy (pre-1.6) PyTorch serialization format; re-save it with a recent torch: "
            f"torch.save(torch.load(old_path), new_path)"
        )
    return f"{path}: not a PyTorch checkpoint (not a torch.save zip archive)"


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such file")
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file")


def read_torch_file(path: str | os.PathLike) -> Any:
    """Unpickle a ``torch.save`` file: nested dicts/lists/tuples of numpy arrays and Python scalars.

    Raises ``CheckpointError`` for a non-checkpoint, a damaged archive, a legacy-format file or a pickle
    that names a global outside the allow-list (nothing from the pickle runs in that case).
    """
    path = os.fspath(path)
    _check_file(path)
    with open(path, "rb") as f:
        head = f.read(512)
    if not zipfile.is_zipfile(path):
        raise CheckpointError(_describe_non_zip(path, head))
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise CheckpointError(f"{path}: damaged zip archive ({err})") from None
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") <= 1]
        if len(pickles) != 1:
            found = "no" if not pickles else f"{len(pickles)}"
            raise CheckpointError(f"{path}: zip archive with {found} data.pkl record(s); not a torch.save checkpoint")
        prefix = pickles[0][: -len("data.pkl")]

        def read_member(name: str) -> bytes:
            try:
                return archive.read(name)
            except KeyError:
                raise CheckpointError(f"{path}: record {name} is missing from the archive") from None
            except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
                raise CheckpointError(f"{path}: record {name} is damaged ({err})") from None

        byteorder = "little"
        if prefix + "byteorder" in archive.namelist():
            byteorder = read_member(prefix + "byteorder").decode("ascii", "replace").strip()
            if byteorder not in ("little", "big"):
                raise CheckpointError(f"{path}: record {prefix}byteorder: unknown byte order {byteorder!r}")

        def load_storage(key: str, dtype: np.dtype, numel: int) -> np.ndarray:
            name = f"{prefix}data/{key}"
            raw = read_member(name)
            if len(raw) < numel * dtype.itemsize:
                raise CheckpointError(
                    f"{path}: record {name} holds {len(raw)} bytes, its storage needs {numel} x {dtype.itemsize}"
                )
            return _native_storage(raw, dtype, numel, byteorder)

        try:
            return _SafeUnpickler(read_member(pickles[0]), load_storage).load()
        except _RefusedGlobal as err:
            raise CheckpointError(
                f"{path}: refused to load: the pickle names the global {err}, which is not "
                f"in the allow-list of a weights-only checkpoint"
            ) from None
        except CheckpointError:
            raise
        except Exception as err:  # any failure of the pickle data itself: report, never crash oddly
            raise CheckpointError(
                f"{path}: damaged or unsupported pickle in {pickles[0]}: {type(err).__name__}: {err}"
            ) from None


def _is_tensor_dict(value: Any) -> bool:
    return (
        isinstance(value, Mapping)
        and len(value) > 0
        and all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in value.items())
    )


def select_state_dict(obj: Any, path: str, key: str | None = None) -> dict[str, np.ndarray]:
    """The tensor dict inside a loaded checkpoint object (see ``read_state_dict``)."""
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            raise CheckpointError(f"{path}: no entry {key!r} in the checkpoint")
        found, where = obj[key], f"entry {key!r}"
    elif _is_tensor_dict(obj):
        found, where = obj, "the top level"
    else:
        candidates = [k for k in STATE_DICT_KEYS if isinstance(obj, Mapping) and _is_tensor_dict(obj.get(k))]
        if not candidates:
            keys = sorted(map(str, obj))[:10] if isinstance(obj, Mapping) else type(obj).__name__
            raise CheckpointError(
                f"{path}: no state dict found (looked for a dict of tensors at the top level "
                f"or under {list(STATE_DICT_KEYS)}; found {keys})"
            )
        found, where = obj[candidates[0]], f"entry {candidates[0]!r}"
    if not isinstance(found, Mapping) or not found:
        raise CheckpointError(f"{path}: {where} is not a non-empty dict of tensors")
    for name, value in found.items():
        if not isinstance(name, str) or not isinstance(value, np.ndarray):
            raise CheckpointError(f"{path}: {where}: {name!r} is a {type(value).__name__}, not a tensor")
    out = dict(found)
    if all(name.startswith("module.") for name in out):  # saved from a DataParallel wrapper
        out = {name[len("module.") :]: value for name, value in out.items()}
    return out


def read_state_dict(path: str | os.PathLike, key: str | None = None) -> dict[str, np.ndarray]:
    """Tensor name -> numpy array from a PyTorch checkpoint (or a ``.safetensors`` file).

    Accepts a plain state dict or a training checkpoint wrapping it. Without ``key`` the first of
    'state_dict', 'best_state_dict', 'model' that holds a dict of tensors is used: 'state_dict' is the
    general PyTorch convention, and in HRNet-style checkpoints ('checkpoint.pth') 'state_dict' and
    'best_state_dict' hold the same (latest) weights, the former with a ``module.`` prefix (stripped here,
    when every name has it), while 'model' is a model name there but the weights in other code bases.
    """
    path = os.fspath(path)
    if not zipfile.is_zipfile(path) and is_safetensors(path):
        obj: Any = read_safetensors(path)
    else:
        obj = read_torch_file(path)
    return select_state_dict(obj, path, key)


__all__ = [
    "ALLOWED_GLOBALS",
    "STATE_DICT_KEYS",
    "CheckpointError",
    "read_state_dict",
    "read_torch_file",
    "select_state_dict",
]
