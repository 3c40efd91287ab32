"""Test utility: write ``torch.save``-format checkpoints and ``.safetensors`` files without torch.

``write_torch_checkpoint(path, obj)`` pickles ``obj`` (nested dicts/lists/tuples, numpy arrays become
tensors) into a zip laid out as torch writes it: ``ARCHIVE/data.pkl``, ``ARCHIVE/data/<key>``,
``ARCHIVE/byteorder``, ``ARCHIVE/version``. Tensors are pickled as torch does, through
``torch._utils._rebuild_tensor_v2`` with a persistent id per storage. ``Global(module, name)`` and
``Call(Global, args)`` put arbitrary globals and calls into the pickle (to build malicious files);
``TensorView`` writes a strided view of a shared storage.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import pickle
import struct
import zipfile
from typing import Any

import numpy as np

_STORAGE_NAMES = {
    np.dtype("f4"): "FloatStorage",
    np.dtype("f8"): "DoubleStorage",
    np.dtype("f2"): "HalfStorage",
    np.dtype("i8"): "LongStorage",
    np.dtype("i4"): "IntStorage",
    np.dtype("i2"): "ShortStorage",
    np.dtype("i1"): "CharStorage",
    np.dtype("u1"): "ByteStorage",
    np.dtype("?"): "BoolStorage",
    np.dtype("c8"): "ComplexFloatStorage",
    np.dtype("c16"): "ComplexDoubleStorage",
}
_SAFETENSORS_CODES = {
    np.dtype(k): v
    for k, v in (
        ("f8", "F64"),
        ("f4", "F32"),
        ("f2", "F16"),
        ("i8", "I64"),
        ("i4", "I32"),
        ("i2", "I16"),
        ("i1", "I8"),
        ("u1", "U8"),
        ("?", "BOOL"),
    )
}


@dataclasses.dataclass(frozen=True)
class Global:
    """A global ``module.name`` written as a GLOBAL opcode (never imported here)."""

    module: str
    name: str

    def __call__(self, *args: Any) -> None:  # pickle's save_reduce wants a callable
        raise TypeError("placeholder")


@dataclasses.dataclass(frozen=True)
class Call:
    """Pickles as ``func(*args)`` (REDUCE)."""

    func: Global
    args: tuple

    def __reduce__(self) -> tuple:
        return self.func, self.args


@dataclasses.dataclass(frozen=True)
class TensorView:
    """A tensor viewing ``storage`` (1-D) at ``offset`` with ``shape`` and ``stride`` (in elements)."""

    storage: np.ndarray
    offset: int
    shape: tuple
    stride: tuple


@dataclasses.dataclass(frozen=True)
class _Storage:
    array: np.ndarray
    key: str


class _Tensor:
    def __init__(self, storage: _Storage, offset: int, shape: tuple, stride: tuple, parameter: bool):
        self.storage, self.offset, self.shape, self.stride, self.parameter = storage, offset, shape, stride, parameter

    def __reduce__(self) -> tuple:
        hooks = collections.OrderedDict()
        tensor = Call(
            Global("torch._utils", "_rebuild_tensor_v2"),
            (self.storage, self.offset, self.shape, self.stride, False, hooks),
        )
        if self.parameter:
            return Global("torch._utils", "_rebuild_parameter"), (tensor, True, hooks)
        return tensor.__reduce__()


class _Pickler(pickle._Pickler):  # the pure-Python pickler lets us add a dispatch entry
    dispatch = dict(pickle._Pickler.dispatch)

    def __init__(self, file: io.BytesIO, storage_dtype: dict[str, str]):
        super().__init__(file, protocol=2)
        self._storage_dtype = storage_dtype

    def _save_global_marker(self, obj: Global) -> None:
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    dispatch[Global] = _save_global_marker

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, _Storage):
            name = self._storage_dtype.get(obj.key) or _STORAGE_NAMES[obj.array.dtype.newbyteorder("=")]
            return "storage", Global("torch", name), obj.key, "cpu", int(obj.array.size)
        return None


def _convert(obj: Any, storages: dict[int, _Storage], parameters: bool) -> Any:
    def storage_of(array: np.ndarray) -> _Storage:
        if id(array) not in storages:
            storages[id(array)] = _Storage(array, str(len(storages)))
        return storages[id(array)]

    if isinstance(obj, np.ndarray):
        flat = np.ascontiguousarray(obj).reshape(-1)
        stride = tuple(int(np.prod(obj.shape[i + 1 :])) for i in range(obj.ndim))
        return _Tensor(storage_of(flat), 0, tuple(obj.shape), stride, parameters)
    if isinstance(obj, TensorView):
        return _Tensor(storage_of(obj.storage), obj.offset, tuple(obj.shape), tuple(obj.stride), parameters)
    if isinstance(obj, dict):
        return type(obj)((k, _convert(v, storages, parameters)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_convert(v, storages, parameters) for v in obj)
    return obj


def write_torch_checkpoint(
    path: Any,
    obj: Any,
    *,
    archive: str = "archive",
    byteorder: str = "little",
    parameters: bool = False,
    storage_names: dict[str, str] | None = None,
) -> None:
    """Write ``obj`` in torch.save's zip format. ``parameters``: pickle arrays as ``nn.Parameter``.

    ``storage_names`` overrides the storage class written for given storage keys (e.g. to lie about a dtype).
    """
    storages: dict[int, _Storage] = {}
    converted = _convert(obj, storages, parameters)
    buf = io.BytesIO()
    _Pickler(buf, storage_names or {}).dump(converted)
    order = "<" if byteorder == "little" else ">"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{archive}/data.pkl", buf.getvalue())
        z.writestr(f"{archive}/byteorder", byteorder)
        for storage in storages.values():
            data = storage.array.astype(storage.array.dtype.newbyteorder(order)).tobytes()
            z.writestr(f"{archive}/data/{storage.key}", data)
        z.writestr(f"{archive}/version", "3\n")


def write_raw_pickle(path: Any, data: bytes, archive: str = "archive") -> None:
    """A torch.save-style zip whose data.pkl is ``data`` (hand-written pickle opcodes)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{archive}/data.pkl", data)
        z.writestr(f"{archive}/byteorder", "little")
        z.writestr(f"{archive}/version", "3\n")


def write_safetensors(path: Any, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Write a ``.safetensors`` file (float/int/bool numpy arrays)."""
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    chunks, offset = [], 0
    for name, array in tensors.items():
        array = np.ascontiguousarray(array)
        data = array.astype(array.dtype.newbyteorder("<")).tobytes()
        header[name] = {
            "dtype": _SAFETENSORS_CODES[array.dtype.newbyteorder("=")],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    encoded = json.dumps(header).encode("utf-8")
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for chunk in chunks:
            f.write(chunk)
