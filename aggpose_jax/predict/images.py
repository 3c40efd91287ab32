"""Reading photos for prediction: any depth and channel count to 8-bit BGR, the EXIF orientation applied.

Phones store a portrait photo as landscape pixels with an EXIF ``Orientation`` tag that says how to turn
it for display. Prediction applies it (``apply_orientation``), so a photo is processed upright and its
keypoints are in the picture as displayed; the tag read and whether it was applied are recorded per image.
The tag is read from JPEG (APP1 ``Exif``), PNG (``eXIf``), WebP (``EXIF``) and TIFF files; other files
have none. Gray, 16-bit and alpha images are read as 8-bit BGR (alpha dropped), as OpenCV's
``IMREAD_COLOR`` does.
"""

from __future__ import annotations

import struct

import cv2
import numpy as np

# EXIF orientation -> what it means (the transform that shows the stored pixels upright).
ORIENTATIONS: dict[int, str] = {
    1: "upright",
    2: "mirrored left-right",
    3: "rotated 180",
    4: "mirrored top-bottom",
    5: "transposed",
    6: "rotated 90 clockwise",
    7: "transversed",
    8: "rotated 90 counter-clockwise",
}
_TAG = 0x0112


def _tiff_orientation(tiff: bytes) -> int | None:
    """The Orientation tag of IFD0 of a TIFF structure (EXIF's), or None."""
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return None
    end = "<" if tiff[:2] == b"II" else ">"
    (offset,) = struct.unpack(end + "I", tiff[4:8])
    if offset + 2 > len(tiff):
        return None
    (count,) = struct.unpack(end + "H", tiff[offset : offset + 2])
    for i in range(count):
        entry = offset + 2 + 12 * i
        if entry + 12 > len(tiff):
            return None
        tag, kind, n = struct.unpack(end + "HHI", tiff[entry : entry + 8])
        if tag == _TAG and kind == 3 and n >= 1:
            (value,) = struct.unpack(end + "H", tiff[entry + 8 : entry + 10])
            return value if value in ORIENTATIONS else None
    return None


def _exif_block(block: bytes) -> int | None:
    return _tiff_orientation(block[6:] if block.startswith(b"Exif\x00\x00") else block)


def exif_orientation(data: bytes) -> int | None:
    """The EXIF orientation (1-8) stored in an image file's bytes, or None when it holds none."""
    try:
        if data[:2] == b"\xff\xd8":  # JPEG: segments up to the scan
            pos = 2
            while pos + 4 <= len(data) and data[pos] == 0xFF:
                marker = data[pos + 1]
                if marker in (0xD9, 0xDA):
                    break
                (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
                if marker == 0xE1 and data[pos + 4 : pos + 10] == b"Exif\x00\x00":
                    return _exif_block(data[pos + 4 : pos + 2 + length])
                pos += 2 + length
            return None
        if data[:8] == b"\x89PNG\r\n\x1a\n":
            pos = 8
            while pos + 8 <= len(data):
                (length,) = struct.unpack(">I", data[pos : pos + 4])
                kind = data[pos + 4 : pos + 8]
                if kind == b"eXIf":
                    return _exif_block(data[pos + 8 : pos + 8 + length])
                if kind in (b"IDAT", b"IEND"):
                    return None
                pos += 12 + length
            return None
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            pos = 12
            while pos + 8 <= len(data):
                kind, (length,) = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])
                if kind == b"EXIF":
                    return _exif_block(data[pos + 8 : pos + 8 + length])
                pos += 8 + length + (length % 2)
            return None
        if data[:4] in (b"II*\x00", b"MM\x00*"):
            return _tiff_orientation(data)
    except struct.error:
        return None
    return None


def apply_orientation(image: np.ndarray, orientation: int | None) -> np.ndarray:
    """The stored pixels turned as EXIF ``orientation`` says, i.e. the picture as displayed."""
    if orientation in (None, 1):
        return image
    if orientation == 2:
        return cv2.flip(image, 1)
    if orientation == 3:
        return cv2.rotate(image, cv2.ROTATE_180)
    if orientation == 4:
        return cv2.flip(image, 0)
    if orientation == 5:
        return cv2.transpose(image)
    if orientation == 6:
        return cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:
        return cv2.flip(cv2.transpose(image), -1)
    if orientation == 8:
        return cv2.rotate(image, cv2.ROTATE_90_COUNTERCLOCKWISE)
    raise ValueError(f"EXIF orientation must be 1-8, got {orientation!r}")


def read_image(path: str, *, apply_exif: bool = True) -> tuple[np.ndarray | None, int | None]:
    """(BGR uint8 image or None when it cannot be read or decoded, the file's EXIF orientation or None).

    With ``apply_exif`` the image is turned as its EXIF orientation says (the picture as displayed);
    without, the stored pixels are returned as they are.
    """
    try:
        data = np.fromfile(path, np.uint8)
    except OSError:
        return None, None
    if data.size == 0:
        return None, None
    try:
        img = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error:
        return None, None
    if img is None or img.ndim != 3 or img.shape[0] == 0 or img.shape[1] == 0:
        return None, None
    orientation = exif_orientation(data.tobytes())
    if apply_exif:
        img = np.ascontiguousarray(apply_orientation(img, orientation))
    return img, orientation


__all__ = ["ORIENTATIONS", "apply_orientation", "exif_orientation", "read_image"]
