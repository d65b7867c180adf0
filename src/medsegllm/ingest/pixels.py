"""Uncompressed little-endian pixel data read straight from the file, without a second full parse.

pydicom's `pixel_array` wants the whole dataset in memory, so a series would be parsed twice (the
header scan, then the full read) and its pixels copied three times (bytes, stored array, float).
For native little-endian grayscale data the header read already says where the stored integers
lie, so they are read with one `readinto` at that offset. Anything else (compressed, big-endian,
deflated, odd lengths, excess frames, unusual attributes) is left to pydicom, so its results,
errors and therefore the quarantine reasons stay exactly pydicom's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from medsegllm.ingest.scan import CappedReader

PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little-endian
IMPLICIT_BY_SYNTAX = {ImplicitVRLittleEndian: True, ExplicitVRLittleEndian: False}
GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")


@dataclass(frozen=True)
class NativePixels:
    """Where a file's stored integers lie and how to read them as pydicom's decoder would."""

    offset: int  # file offset of the first pixel byte
    dtype: np.dtype  # little-endian stored integer type
    shape: tuple[int, int, int]  # frames, rows, columns
    unused_bits: int  # BitsAllocated - BitsStored; pydicom clears them (sign-extends if signed)


def read_header(path: Path) -> tuple[pydicom.Dataset, NativePixels | None]:
    """The header (everything before the pixel data) and, when pydicom would decode it natively, where the pixels are."""
    with CappedReader(path) as handle:
        ds = pydicom.dcmread(handle, stop_before_pixels=True, force=True)
        # dcmread(stop_before_pixels) leaves the handle at the pixel data element's tag
        return ds, _locate(ds, handle.read(12), handle.tell() - 12, handle.size)


def _image_attributes(ds: pydicom.Dataset) -> tuple[int, int, int, int, int, int] | None:
    """(frames, rows, columns, bits allocated, bits stored, pixel representation) when all are plain, valid integers."""
    try:
        frames = int(ds.NumberOfFrames) if "NumberOfFrames" in ds else 1
        values = (frames, int(ds.Rows), int(ds.Columns), int(ds.BitsAllocated), int(ds.BitsStored), int(ds.PixelRepresentation))
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        photometric = str(ds.PhotometricInterpretation).strip()
    except (AttributeError, KeyError, TypeError, ValueError):
        return None
    frames, rows, columns, allocated, stored, representation = values
    if samples != 1 or photometric not in GRAYSCALE or min(frames, rows, columns) < 1 or columns > 2**16 - 1:
        return None
    if allocated not in (8, 16, 32) or not 1 <= stored <= allocated or representation not in (0, 1):
        return None
    return values


def _locate(ds: pydicom.Dataset, element: bytes, offset: int, file_size: int) -> NativePixels | None:
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    implicit = IMPLICIT_BY_SYNTAX.get(str(syntax or ""))
    if implicit is None or ds.original_encoding != (implicit, True) or not element.startswith(PIXEL_DATA_TAG):
        return None
    attributes = _image_attributes(ds)
    if attributes is None:
        return None
    frames, rows, columns, allocated, stored, representation = attributes
    if implicit:
        header, length = 8, int.from_bytes(element[4:8], "little")
    elif element[4:6] in (b"OB", b"OW"):
        header, length = 12, int.from_bytes(element[8:12], "little")
    else:
        return None
    expected = frames * rows * columns * allocated // 8
    # pydicom accepts the exact length or one padding byte; shorter data fails there and longer
    # data may hold extra frames, so those cases are pydicom's to decide.
    if length not in (expected, expected + expected % 2) or offset + header + expected > file_size:
        return None
    dtype = np.dtype(f"<{'i' if representation else 'u'}{allocated // 8}")
    return NativePixels(offset + header, dtype, (frames, rows, columns), allocated - stored)


def read_native(path: Path, native: NativePixels, out: np.ndarray) -> bool:
    """Fill `out` (native.shape, native.dtype) with the stored integers; False if the file no longer holds them."""
    with path.open("rb", buffering=0) as handle:
        handle.seek(native.offset)
        if handle.readinto(out.view(np.uint8).reshape(-1)) != out.nbytes:
            return False
    if native.unused_bits:  # as pydicom: bits above Bits Stored are not pixel data
        np.left_shift(out, native.unused_bits, out=out)
        np.right_shift(out, native.unused_bits, out=out)
    return True
