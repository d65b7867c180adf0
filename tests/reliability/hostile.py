"""A hostile DICOM corpus, built from a seed: what a hospital archive can hold besides clean series.

Each fault is a function `(rng, folder) -> list[Path]` writing files into `folder` and returning
them; `EXPECT_QUARANTINE` names the faults whose every file must end in quarantine.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT = "1.2.840.10008.5.1.4.1.1.2"
ROWS, COLS = 8, 6


def make_slice(series: str, z: float, *, sop: str | None = None, modality: str = "CT", study: str = "1.2.3.4",
               patient: str = "PID-77", accession: str = "ACC-99", rows: int = ROWS, cols: int = COLS) -> Dataset:
    """One valid single-frame CT/MR slice with the geometry ingest needs."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT if modality == "CT" else "1.2.840.10008.5.1.4.1.1.4"
    meta.MediaStorageSOPInstanceUID = sop or generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = modality, series, study
    ds.PatientName, ds.PatientID, ds.AccessionNumber = "Doe^Jane", patient, accession
    ds.Manufacturer, ds.ManufacturerModelName = "ACME", "Fuzz 1"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0.0, 0.0, z]
    ds.PixelSpacing = [2.0, 2.0]
    ds.SliceThickness = 2.0
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1.0, -1024.0
    ds.PixelData = np.arange(rows * cols, dtype=np.uint16).tobytes()
    return ds


def save(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def slice_bytes(**kw) -> bytes:
    from io import BytesIO

    buffer = BytesIO()
    make_slice(generate_uid(), 0.0, **kw).save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write_series(folder: Path, n: int, series: str | None = None, tweak: Callable[[Dataset, int], None] | None = None,
                 **kw) -> list[Path]:
    series = series or generate_uid()
    paths = []
    for i in range(n):
        ds = make_slice(series, 2.0 * i, **kw)
        if tweak is not None:
            tweak(ds, i)
        paths.append(save(ds, folder / f"s{i}.dcm"))
    return paths


# --- faults -----------------------------------------------------------------------------------

def valid_series(rng: random.Random, folder: Path) -> list[Path]:
    return write_series(folder, rng.randint(2, 4), modality=rng.choice(["CT", "MR"]))


def truncated(rng: random.Random, folder: Path) -> list[Path]:
    data = slice_bytes()
    path = folder / "truncated.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: rng.randrange(0, len(data))])
    return [path]


def random_bytes(rng: random.Random, folder: Path) -> list[Path]:
    path = folder / "random.bin"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(rng.randbytes(rng.randint(0, 4096)))
    return [path]


def dicm_garbage(rng: random.Random, folder: Path) -> list[Path]:
    path = folder / "preamble.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * 128 + b"DICM" + rng.randbytes(rng.randint(0, 2048)))
    return [path]


# Explicit-VR-little-endian headers of elements ingest reads, and the VRs they are flipped to.
VR_TAGS = [b"\x28\x00\x10\x00US", b"\x28\x00\x11\x00US", b"\x28\x00\x30\x00DS", b"\x20\x00\x37\x00DS",
           b"\x20\x00\x32\x00DS", b"\x08\x00\x60\x00CS", b"\x20\x00\x0e\x00UI", b"\x28\x00\x00\x01US",
           b"\x28\x00\x52\x00DS", b"\x28\x00\x53\x00DS"]
FLIPPED_VRS = [b"SQ", b"UN", b"OB", b"OW", b"AT", b"FD", b"FL", b"SS", b"SL", b"UL", b"US", b"IS", b"DA", b"PN", b"XX"]


def write_flipped_vr(path: Path, tag: bytes, vr: bytes) -> Path:
    """A valid slice whose element `tag` now claims the VR `vr` (its bytes unchanged)."""
    data = bytearray(slice_bytes())
    at = data.find(tag) + 4
    data[at:at + 2] = vr
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))
    return path


def flipped_vr(rng: random.Random, folder: Path) -> list[Path]:
    return [write_flipped_vr(folder / "flipped_vr.dcm", rng.choice(VR_TAGS), rng.choice(FLIPPED_VRS))]


def _pixel_fault(kind: str) -> Callable[[random.Random, Path], list[Path]]:
    def fault(rng: random.Random, folder: Path) -> list[Path]:
        ds = make_slice(generate_uid(), 0.0)
        if kind == "missing":
            del ds.PixelData
        elif kind == "short":
            ds.PixelData = ds.PixelData[: rng.randrange(0, len(ds.PixelData) - 2, 2)]
        else:  # oversized: more bytes than Rows x Columns x BitsAllocated
            ds.PixelData = ds.PixelData * rng.randint(3, 64)
        return [save(ds, folder / f"pixels_{kind}.dcm")]

    fault.__name__ = f"pixel_data_{kind}"
    return fault


def absurd_dimensions(rng: random.Random, folder: Path) -> list[Path]:
    """Rows x Columns claiming gigabytes while the file holds a few bytes (must not be allocated)."""
    ds = make_slice(generate_uid(), 0.0)
    ds.Rows, ds.Columns = rng.choice([(65535, 65535), (65535, 1), (0, 0), (1, 65535)])
    ds.BitsAllocated = rng.choice([16, 32])
    return [save(ds, folder / "absurd_dims.dcm")]


def pixel_length_lie(rng: random.Random, folder: Path) -> list[Path]:
    """A valid header whose PixelData (or an element before it) declares ~4 GB in a small file."""
    data = bytearray(slice_bytes())
    tag = rng.choice([b"\xe0\x7f\x10\x00OW\x00\x00", b"\x08\x00\x70\x00LO"])
    at = data.find(tag) + len(tag)
    width = 4 if tag.endswith(b"\x00\x00") else 2
    data[at:at + width] = (0xFFFFFFF0 if width == 4 else 0xFFF0).to_bytes(width, "little")
    path = folder / "length_lie.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))
    return [path]


GEOMETRY_FAULTS = {
    "pixel_spacing_huge": lambda ds, i: setattr(ds, "PixelSpacing", [1e7, 1e7]),
    "slice_gap_huge": lambda ds, i: setattr(ds, "ImagePositionPatient", [0.0, 0.0, 1e8 * i]),
    "pixel_spacing_zero": lambda ds, i: setattr(ds, "PixelSpacing", [0.0, 0.0]),
    "pixel_spacing_negative": lambda ds, i: setattr(ds, "PixelSpacing", [-2.0, 2.0]),
    "pixel_spacing_inf": lambda ds, i: setattr(ds, "PixelSpacing", ["inf", 2.0]),
    "position_nan": lambda ds, i: setattr(ds, "ImagePositionPatient", [0.0, "nan", 2.0 * i]),
    "slice_thickness_negative_single": lambda ds, i: setattr(ds, "SliceThickness", -5.0),
}


def _geometry_fault(name: str) -> Callable[[random.Random, Path], list[Path]]:
    """A plausible pixel grid whose spacing or positions span kilometres, zero, NaN or infinity."""
    def fault(rng: random.Random, folder: Path) -> list[Path]:
        n = 1 if name.endswith("_single") else 3
        return write_series(folder, n, tweak=GEOMETRY_FAULTS[name])

    fault.__name__ = f"geometry_{name}"
    return fault


def zero_orientation(rng: random.Random, folder: Path) -> list[Path]:
    def tweak(ds: Dataset, i: int) -> None:
        ds.ImageOrientationPatient = [0, 0, 0, 0, 0, 0]

    return write_series(folder, 2, tweak=tweak)


def mixed_series(rng: random.Random, folder: Path) -> list[Path]:
    """Two series (one CT, one MR) interleaved in one folder, names sorted across them."""
    paths = []
    for j, modality in enumerate(["CT", "MR"]):
        uid = generate_uid()
        for i in range(rng.randint(1, 3)):
            paths.append(save(make_slice(uid, 2.0 * i, modality=modality), folder / f"img{i}_{j}.dcm"))
    return paths


def duplicate_sop(rng: random.Random, folder: Path) -> list[Path]:
    """Same SOPInstanceUID twice: once at two positions, or a byte-identical copy of a slice."""
    uid, sop = generate_uid(), generate_uid()
    first = save(make_slice(uid, 0.0, sop=sop), folder / "a.dcm")
    second = save(make_slice(uid, 0.0 if rng.random() < 0.5 else 2.0, sop=sop), folder / "b.dcm")
    return [first, second]


def hostile_identifiers(rng: random.Random, folder: Path) -> list[Path]:
    """Identifiers made of path separators and parent references, in headers and in file names."""
    evil = rng.choice(["../../escaped", "..\\..\\escaped", "/etc/passwd", "a/../../b", "..", "./", "\\\\srv\\share"])

    def tweak(ds: Dataset, i: int) -> None:
        ds.PatientID, ds.AccessionNumber, ds.StudyInstanceUID = evil, evil, evil
        ds.SeriesInstanceUID = evil + "/series"
        ds.Manufacturer, ds.ManufacturerModelName = evil, evil

    paths = write_series(folder / "..evil..", 2, tweak=tweak)
    renamed = [p.rename(p.with_name(f"..{i}..dcm")) for i, p in enumerate(paths)]
    return renamed


def garbage_number_of_frames(rng: random.Random, folder: Path) -> list[Path]:
    ds = make_slice(generate_uid(), 0.0)
    ds.add_new(0x00280008, "IS", "1")
    ds[0x00280008]._value = rng.choice(["abc", "-5", "1e9", "", "NaN"])
    return [save(ds, folder / "frames.dcm")]


FAULTS: dict[str, Callable[[random.Random, Path], list[Path]]] = {
    f.__name__: f
    for f in [valid_series, truncated, random_bytes, dicm_garbage, flipped_vr, _pixel_fault("missing"),
              _pixel_fault("short"), _pixel_fault("oversized"), absurd_dimensions, pixel_length_lie, zero_orientation,
              mixed_series, duplicate_sop, hostile_identifiers, garbage_number_of_frames,
              *(_geometry_fault(name) for name in GEOMETRY_FAULTS)]
}
# Faults whose every file must be quarantined (the others may legitimately be accepted or partly so).
EXPECT_QUARANTINE = {"truncated", "random_bytes", "dicm_garbage", "pixel_data_missing", "pixel_data_short",
                     "absurd_dimensions", "zero_orientation",
                     *(f"geometry_{name}" for name in GEOMETRY_FAULTS)}


def build_corpus(root: Path, faults: list[tuple[str, int]]) -> dict[Path, str]:
    """Write one folder per (fault, seed) under `root`; map every file written to its fault name."""
    written: dict[Path, str] = {}
    for i, (name, seed) in enumerate(faults):
        for path in FAULTS[name](random.Random(seed), root / f"{i:02d}_{name}"):
            written[path] = name
    return written
