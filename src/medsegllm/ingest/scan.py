"""Walk a folder tree and classify every file from its header alone (no pixel data read).

Every file ends in exactly one bucket (image, label, report, quarantine), so the stage can prove
that nothing was dropped silently.
"""

from __future__ import annotations

import sys
from concurrent.futures import Executor
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path

import pydicom
from tqdm import tqdm

from medsegllm.ingest.frames import is_multiframe, volume_labels
from medsegllm.ingest.pixels import NativePixels, NativeSlice, native_slice, read_header
from medsegllm.ingest.rtstruct import rtstruct_references
from medsegllm.ingest.stacks import stack_attributes
from medsegllm.ingest.values import header_get

# Image storage classes the geometry code understands: classic single-frame files, and enhanced
# multi-frame objects whose frames carry their geometry in functional groups (ingest/frames.py).
IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT
    "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR
    "1.2.840.10008.5.1.4.1.1.4.4",  # Legacy Converted Enhanced MR
}


@dataclass
class ImageHeader:
    """What grouping and de-identification need from one image file; raw IDs never leave the scan."""

    path: Path
    series_uid: str
    study_uid: str
    patient_id: str
    accession: str
    sop_uid: str
    modality: str
    manufacturer: str
    model_name: str
    station: str = ""  # StationName, for device_id's optional station token; never written
    native: NativeSlice | None = None  # kept so decode need not parse a plain native file again
    echo: str = ""  # EchoNumbers
    temporal: str = ""  # TemporalPositionIdentifier (multi-phase series: DCE, perfusion)
    trigger: str = ""  # TriggerTime (cardiac phases)
    acquisition: str = ""  # AcquisitionNumber
    position: tuple[float, ...] | None = None  # ImagePositionPatient of a classic file
    complex_part: str = ""  # MR ImageType magnitude/phase/real/imaginary component
    orientation: tuple[float, ...] | None = None  # ImageOrientationPatient of a classic file
    stack: str = ""  # set by stacks.group_series when the series holds several stacks ("echo=2", "plane=1")
    volumes: tuple[str, ...] = ()  # an enhanced object's volumes when it holds several (frames.volume_labels)
    frame_stack: str | None = None  # which of them this header stands for (set by stacks.group_series)


@dataclass
class SegHeader:
    """A label object (SEG or RTSTRUCT) and the images it was drawn on."""

    path: Path
    referenced_series: set[str]
    referenced_sops: set[str]
    kind: str = "SEG"


@dataclass
class ScanResult:
    n_files: int = 0
    images: list[ImageHeader] = field(default_factory=list)
    segs: list[SegHeader] = field(default_factory=list)
    reports: list[Path] = field(default_factory=list)
    quarantine: list[tuple[Path, str]] = field(default_factory=list)


def iter_files(root: Path) -> list[Path]:
    """All regular files under `root`, any nesting and any name, in a stable order."""
    return sorted(p for p in root.rglob("*") if p.is_file())


def _sop_class(ds: pydicom.Dataset) -> str:
    """SOPClassUID, else the file meta's copy of it (some exporters leave the dataset's empty)."""
    value = header_get(ds, "SOPClassUID")
    meta = getattr(ds, "file_meta", None)
    if not value and meta is not None:
        value = meta.get("MediaStorageSOPClassUID")
    return str(value or "")


def _seg_references(ds: pydicom.Dataset) -> tuple[set[str], set[str]]:
    series = {str(item.SeriesInstanceUID) for item in ds.get("ReferencedSeriesSequence", []) if "SeriesInstanceUID" in item}
    sops: set[str] = set()
    for frame in ds.get("PerFrameFunctionalGroupsSequence", []):
        for derivation in frame.get("DerivationImageSequence", []):
            for source in derivation.get("SourceImageSequence", []):
                sops.add(str(source.ReferencedSOPInstanceUID))
    for item in ds.get("ReferencedSeriesSequence", []):
        for ref in item.get("ReferencedInstanceSequence", []):
            sops.add(str(ref.ReferencedSOPInstanceUID))
    return series, sops


def classify(path: Path, ds: pydicom.Dataset, result: ScanResult, root: Path, native: NativePixels | None) -> None:
    """Put one parsed file in its bucket; the reason names the modality, never a header value that identifies."""
    modality = str(header_get(ds, "Modality", "") or "").upper().strip()
    sop_class = _sop_class(ds)
    if modality == "SEG":
        series, sops = _seg_references(ds)
        result.segs.append(SegHeader(path, series, sops))
    elif modality == "RTSTRUCT":
        series, sops = rtstruct_references(ds)
        result.segs.append(SegHeader(path, series, sops, "RTSTRUCT"))
    elif modality == "SR":
        result.reports.append(path)
    elif modality not in ("CT", "MR"):
        result.quarantine.append((path, f"not a CT/MR image: {modality or 'no modality'}"))
    elif sop_class and sop_class not in IMAGE_SOP_CLASSES:
        result.quarantine.append((path, f"not a CT/MR image: {modality} object of an unsupported storage class"))
    elif "Rows" not in ds or "Columns" not in ds:
        result.quarantine.append((path, "CT/MR file without image attributes"))
    else:
        result.images.append(_image_header(path, ds, modality, root, native))


def _image_header(path: Path, ds: pydicom.Dataset, modality: str, root: Path, native: NativePixels | None) -> ImageHeader:
    """Blank UIDs (some anonymizers empty them) fall back to the folder as the series key, and the
    study, patient and accession keys fall back to the series key, so blank never means shared."""
    series = str(header_get(ds, "SeriesInstanceUID", "") or "") or f"folder:{path.parent.relative_to(root).as_posix()}"
    study = str(header_get(ds, "StudyInstanceUID", "") or "") or series
    meta = getattr(ds, "file_meta", None)
    sop = str(header_get(ds, "SOPInstanceUID", "") or "") or str((meta.get("MediaStorageSOPInstanceUID") if meta else "") or "")
    return ImageHeader(
        path=path,
        series_uid=series,
        study_uid=study,
        patient_id=str(header_get(ds, "PatientID", "") or "") or study,
        accession=str(header_get(ds, "AccessionNumber", "") or "") or series,
        sop_uid=sop,
        modality=modality,
        manufacturer=str(header_get(ds, "Manufacturer", "") or ""),
        model_name=str(header_get(ds, "ManufacturerModelName", "") or ""),
        station=str(header_get(ds, "StationName", "") or ""),
        native=native_slice(ds, native),
        volumes=volume_labels(ds) if is_multiframe(ds) else (),
        **stack_attributes(ds),
    )


def scan(root: Path, pool: Executor | None = None, chunk_files: int = 256) -> ScanResult:
    """Classify every file under `root`; a file that cannot be read is quarantined, never raised.
    With a process pool the files are scanned in chunks by its workers; the result, order included,
    is the serial one."""
    files = iter_files(root)
    if pool is None or len(files) <= chunk_files:
        return scan_files(files, root)
    chunks = [files[i:i + chunk_files] for i in range(0, len(files), chunk_files)]
    result = ScanResult()
    with tqdm(total=len(files), desc="scan headers", unit="file", file=sys.stderr) as progress:
        for part in pool.map(scan_files, chunks, repeat(root)):
            result.n_files += part.n_files
            result.images += part.images
            result.segs += part.segs
            result.reports += part.reports
            result.quarantine += part.quarantine
            progress.update(part.n_files)
    return result


def scan_files(files: list[Path], root: Path) -> ScanResult:
    """`scan` of some of the files under `root`."""
    result = ScanResult()
    for path in files:
        result.n_files += 1
        try:
            ds, native = read_header(path)
            # values are decoded lazily: a wrong VR or a garbage number fails here, not in read_header
            classify(path, ds, result, root, native)
        except Exception as exc:  # any parse failure is a property of the file, not of the batch
            result.quarantine.append((path, f"unreadable: {_describe(exc)}"))
    return result


def _describe(exc: Exception) -> str:
    """A short, header-free description of a read failure."""
    if isinstance(exc, ValueError) and str(exc) in ("empty file", "not a DICOM file"):
        return str(exc)
    if isinstance(exc, (EOFError, OSError)) or "end of file" in str(exc).lower():
        return "truncated or corrupt file"
    return f"not a valid DICOM file ({type(exc).__name__})"
