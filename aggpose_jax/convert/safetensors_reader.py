"""Read ``.safetensors`` files with numpy only.

Layout: 8-byte little-endian header length N, N bytes of JSON ``{name: {"dtype", "shape",
"data_offsets": [begin, end]}, "__metadata__": {...}}``, then the raw little-endian tensor bytes
(offsets relative to the end of the header).
"""

from __future__ import annotations

import json
import math
import os
import struct

import numpy as np

from aggpose_jax.errors import CheckpointError

_DTYPES = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "BF16": "bfloat16",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U64": "<u8",
    "U32": "<u4",
    "U16": "<u2",
    "U8": "u1",
    "BOOL": "?",
}
_MAX_HEADER = 100 * 2**20


def _dtype(code: str) -> np.dtype:
    if code == "BF16":
        import ml_dtypes  # a jax dependency

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(_DTYPES[code])


def is_safetensors(path: str | os.PathLike) -> bool:
    """True when the file starts like a safetensors file (plausible header length, then '{')."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
        size = os.path.getsize(path)
    except OSError:
        return False
    if len(head) < 9:
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 2 <= length <= min(size - 8, _MAX_HEADER)


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Tensor name -> numpy array (native byte order). Raises ``CheckpointError`` naming file and tensor."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (length,) = struct.unpack("<Q", head)
        if length > min(size - 8, _MAX_HEADER):
            raise CheckpointError(
                f"{path}: not a safetensors file or truncated (header length {length}, file size {size})"
            )
        try:
            header = json.loads(f.read(length).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{path}: safetensors header is not valid JSON ({err})") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{path}: safetensors header is not a JSON object")
        data_start, data_len = 8 + length, size - 8 - length
        out: dict[str, np.ndarray] = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            try:
                code, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
                shape = tuple(int(s) for s in shape)
                ok = code in _DTYPES and all(s >= 0 for s in shape) and 0 <= begin <= end
            except (KeyError, TypeError, ValueError):
                ok = False
            if not ok:
                raise CheckpointError(f"{path}: tensor {name!r}: invalid entry {info!r:.120}")
            if end > data_len:
                raise CheckpointError(
                    f"{path}: tensor {name!r}: file is truncated (data_offsets end at {end}, "
                    f"the data section has {data_len} bytes)"
                )
            dtype = _dtype(code)
            nbytes = math.prod(shape) * dtype.itemsize
            if end - begin != nbytes:
                raise CheckpointError(
                    f"{path}: tensor {name!r}: {end - begin} bytes for shape {shape} of {code} (needs {nbytes})"
                )
            f.seek(data_start + begin)
            raw = f.read(nbytes)
            out[name] = np.frombuffer(raw, dtype).reshape(shape).astype(dtype.newbyteorder("="))
    return out


__all__ = ["is_safetensors", "read_safetensors"]
