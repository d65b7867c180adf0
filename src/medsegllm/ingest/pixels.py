"""Header reads, and uncompressed little-endian pixel data read straight from the file.

pydicom's `pixel_array` wants the whole dataset in memory, so a series would be parsed twice (the
header scan, then the full read) and its pixels copied three times (bytes, stored array, float).
For native little-endian grayscale data the header read already says where the stored integers
lie, so they are read with one `readinto` at that offset, and the scan keeps a small `NativeSlice`
(the geometry attributes and that offset) so decode does not parse the header again. Anything
else (compressed, big-endian, deflated, odd lengths, excess frames, enhanced multi-frame, unusual
attributes) is left to pydicom, so its results, errors and therefore the quarantine reasons stay
exactly pydicom's.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from medsegllm.ingest.frames import is_multiframe
from medsegllm.ingest.values import header_get

PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little-endian
IMPLICIT_BY_SYNTAX = {ImplicitVRLittleEndian: True, ExplicitVRLittleEndian: False}
GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
HEAD_BYTES = 1 << 16  # a classic CT/MR header is a few KB; enhanced multi-frame headers may not fit
# What decode, geometry and the SEG slice index read from a single-frame header (as frames.py's views)
SLICE_TAGS = tuple(tag_for_keyword(k) for k in (
    "Rows", "Columns", "SamplesPerPixel", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
    "SliceThickness", "RescaleSlope", "RescaleIntercept", "SOPInstanceUID"))


class CappedReader(io.BufferedReader):
    """A file whose reads never ask for more than it holds: pydicom allocates a buffer of an element's
    declared length before reading, so a garbage length would otherwise reserve up to 4 GB."""

    def __init__(self, path: Path):
        super().__init__(io.FileIO(path, "rb"))
        self.size = path.stat().st_size

    def read(self, size: int | None = -1) -> bytes:
        if size is not None and size > 0:
            size = min(size, max(self.size - self.tell(), 0))
        return super().read(size)


def dcmread_capped(path: Path, **kwargs) -> pydicom.Dataset:
    with CappedReader(path) as handle:
        return pydicom.dcmread(handle, **kwargs)


@dataclass(frozen=True)
class NativePixels:
    """Where a file's stored integers lie and how to read them as pydicom's decoder would."""

    offset: int  # file offset of the first pixel byte
    dtype: np.dtype  # little-endian stored integer type
    shape: tuple[int, int, int]  # frames, rows, columns
    unused_bits: int  # BitsAllocated - BitsStored; pydicom clears them (sign-extends if signed)


@dataclass(frozen=True)
class NativeSlice:
    """A single-frame native file as the scan saw it: the header attributes decode needs (raw, so a
    malformed value fails where it would have) and where the pixels lie. Small, so holding one
    per file is cheap, unlike holding the full headers."""

    view: pydicom.Dataset
    native: NativePixels


def read_header(path: Path) -> tuple[pydicom.Dataset, NativePixels | None]:
    """The header (everything before the pixel data) and, when pydicom would decode it natively,
    where the pixels are. Files without the DICOM preamble are accepted if they parse as a raw dataset."""
    if path.stat().st_size == 0:
        raise ValueError("empty file")
    try:
        return _read_header(path, force=False)
    except InvalidDicomError:
        ds, native = _read_header(path, force=True)
        if "SOPClassUID" not in ds or "Modality" not in ds:
            raise ValueError("not a DICOM file") from None
        return ds, native


def _read_header(path: Path, force: bool) -> tuple[pydicom.Dataset, NativePixels | None]:
    """Parse from the file's first HEAD_BYTES in memory (one read instead of dozens of small ones);
    only a header that does not end inside them is parsed again from the file itself."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(HEAD_BYTES)
    if len(head) < size:
        try:
            ds, element, offset = _parse(io.BytesIO(head), force)
            if len(element) == 12 and element.startswith(PIXEL_DATA_TAG):  # every header byte was in `head`
                return ds, _locate(ds, element, offset, size)
        except Exception:  # cut mid-element, or an error the full read below raises for itself
            pass
    with (io.BytesIO(head) if len(head) >= size else CappedReader(path)) as handle:
        ds, element, offset = _parse(handle, force)
        return ds, _locate(ds, element, offset, size)


def _parse(handle: io.IOBase, force: bool) -> tuple[pydicom.Dataset, bytes, int]:
    """The header, and the (up to) 12 bytes that follow it with their file offset."""
    ds = pydicom.dcmread(handle, stop_before_pixels=True, force=force)
    ds.buffer = None  # nothing is read lazily later: do not keep the in-memory prefix alive
    # dcmread(stop_before_pixels) leaves the handle at the pixel data element's tag
    element = handle.read(12)
    return ds, element, handle.tell() - len(element)


def native_slice(ds: pydicom.Dataset, native: NativePixels | None) -> NativeSlice | None:
    """The slice record of a single-frame native file; None where decode must read the file itself."""
    if native is None or native.shape[0] != 1 or is_multiframe(ds):
        return None
    view = pydicom.Dataset()
    for tag in SLICE_TAGS:
        element = ds.get_item(tag)  # not converted: a bad value raises in geometry, as from the full header
        if element is not None:
            view[tag] = element
    return NativeSlice(view, native)


def _image_attributes(ds: pydicom.Dataset) -> tuple[int, int, int, int, int, int] | None:
    """(frames, rows, columns, bits allocated, bits stored, pixel representation) when all are plain, valid integers."""
    try:
        frames = int(header_get(ds, "NumberOfFrames")) if "NumberOfFrames" in ds else 1
        values = (frames, *(int(header_get(ds, k)) for k in ("Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation")))
        samples = int(header_get(ds, "SamplesPerPixel", 1) or 1)
        photometric = str(header_get(ds, "PhotometricInterpretation", "")).strip()
    except (AttributeError, KeyError, TypeError, ValueError):  # absent (None) or malformed
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
