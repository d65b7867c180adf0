"""Writing the cohort as real DICOM: one axial CT/MR series per study, DICOM SEG for labelled ones.

Files are explicit VR little endian with preamble and DICM prefix. Slices are stored along
increasing LPS z, but InstanceNumber follows the scanner's ordering (ascending, descending or
shuffled), so readers must sort by ImagePositionPatient, not by InstanceNumber or file name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from medsegllm.common.io import write_with
from medsegllm.knowledge import SEG_CLASSES
from medsegllm.synth.phantom import Grid
from medsegllm.synth.scanners import ScannerProfile


@dataclass(frozen=True)
class StudyMeta:
    """Header values of one study; the report generator mirrors some of them as PHI."""

    patient_name: str  # DICOM PN, "Family^Given"
    patient_id: str
    birth_date: str  # YYYYMMDD
    sex: str
    phone: str
    accession_number: str
    study_uid: str
    series_uid: str
    frame_uid: str
    study_date: str  # YYYYMMDD
    study_time: str  # HHMMSS
    series_number: int
    referring_physician: str  # DICOM PN
    study_description: str


def uid(seed: int, *parts: object) -> str:
    """A deterministic UID: the same seed and parts always give the same UID."""
    return str(generate_uid(entropy_srcs=["medsegllm-synth", str(seed), *map(str, parts)]))


def instance_numbers(n: int, order: str, rng: np.random.Generator) -> list[int]:
    """InstanceNumber of each slice in increasing-z order, following the scanner's habit."""
    if order == "ascending":
        return list(range(1, n + 1))
    if order == "descending":
        return list(range(n, 0, -1))
    return [int(v) + 1 for v in rng.permutation(n)]


def new_instance(sop_class: str, sop_uid: str) -> Dataset:
    """An empty explicit-VR little-endian instance whose file meta and SOP identity agree."""
    meta_ds = FileMetaDataset()
    meta_ds.MediaStorageSOPClassUID = sop_class
    meta_ds.MediaStorageSOPInstanceUID = sop_uid
    meta_ds.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta_ds
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    return ds


def _slice_dataset(meta: StudyMeta, scanner: ScannerProfile, grid: Grid, pixels: np.ndarray,
                   k: int, instance: int, sop_uid: str) -> Dataset:
    ds = new_instance(CTImageStorage if scanner.modality == "CT" else MRImageStorage, sop_uid)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    for prefix in ("Study", "Series", "Acquisition", "Content"):
        setattr(ds, f"{prefix}Date", meta.study_date)
        setattr(ds, f"{prefix}Time", meta.study_time)
    ds.AccessionNumber = meta.accession_number
    ds.Modality = scanner.modality
    ds.Manufacturer = scanner.manufacturer
    ds.InstitutionName = scanner.institution
    ds.ReferringPhysicianName = meta.referring_physician
    ds.StationName = scanner.station_name
    ds.StudyDescription = meta.study_description
    ds.SeriesDescription = scanner.series_description
    ds.ManufacturerModelName = scanner.model_name
    ds.PatientName = meta.patient_name
    ds.PatientID = meta.patient_id
    ds.PatientBirthDate = meta.birth_date
    ds.PatientSex = meta.sex
    ds.PatientTelephoneNumbers = meta.phone
    ds.BodyPartExamined = "ABDOMEN"
    ds.SliceThickness = f"{scanner.slice_thickness_mm:g}"
    ds.SpacingBetweenSlices = f"{grid.spacing[2]:g}"
    if scanner.modality == "CT":
        ds.KVP = "120"
        ds.ConvolutionKernel = "STANDARD"
    else:
        ds.ScanningSequence = "GR"
        ds.SequenceVariant = "SP"
        ds.MRAcquisitionType = "3D"
        ds.RepetitionTime = "3.9"
        ds.EchoTime = "1.8"
        ds.MagneticFieldStrength = f"{scanner.field_strength_t:g}"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = meta.study_uid
    ds.SeriesInstanceUID = meta.series_uid
    ds.StudyID = meta.accession_number[-6:]
    ds.SeriesNumber = meta.series_number
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = instance
    position = [grid.origin[0], grid.origin[1], grid.origin[2] + k * grid.spacing[2]]
    ds.ImagePositionPatient = [f"{v:.4f}".rstrip("0").rstrip(".") for v in position]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.FrameOfReferenceUID = meta.frame_uid
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = ds.ImagePositionPatient[2]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = grid.shape[1], grid.shape[0]
    ds.PixelSpacing = [f"{grid.spacing[1]:.6g}", f"{grid.spacing[0]:.6g}"]  # row spacing (dy), column spacing (dx)
    ds.BitsAllocated = 16
    signed = pixels.dtype == np.int16
    ds.BitsStored = 16 if signed or scanner.modality == "MR" else 12
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if signed else 0
    if scanner.modality == "CT":
        ds.WindowCenter, ds.WindowWidth = "40", "400"
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
    ds.PixelData = np.ascontiguousarray(pixels[:, :, k].T).astype(pixels.dtype.newbyteorder("<")).tobytes()
    return ds


def write_series(series_dir: Path, meta: StudyMeta, scanner: ScannerProfile, grid: Grid, pixels: np.ndarray,
                 seed: int, rng: np.random.Generator) -> list[Dataset]:
    """Write one slice file per z index; returns the datasets in increasing-z order."""
    numbers = instance_numbers(grid.shape[2], scanner.instance_order, rng)
    datasets = []
    for k, number in enumerate(numbers):
        ds = _slice_dataset(meta, scanner, grid, pixels, k, number, uid(seed, meta.series_uid, "sop", k))
        write_with(series_dir / scanner.file_pattern.format(number),
                   lambda p, ds=ds: pydicom.dcmwrite(p, ds, enforce_file_format=True))
        datasets.append(ds)
    return datasets


def _segment_descriptions() -> list[hd.seg.SegmentDescription]:
    """One segment per foreground SEG class, numbered like the label map."""
    coded = {
        "liver": (codes.SCT.Organ, codes.SCT.Liver),
        "kidney": (codes.SCT.Organ, codes.SCT.Kidney),
        "lesion": (codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Lesion),
    }
    return [
        hd.seg.SegmentDescription(
            segment_number=SEG_CLASSES.index(name), segment_label=name,
            segmented_property_category=category, segmented_property_type=prop,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for name, (category, prop) in coded.items()
    ]


def _pin_volatile(seg: Dataset, meta: StudyMeta, dimension_uid: str) -> None:
    """Replace what highdicom derives from the clock or a random UID, so output is byte-stable."""
    seg.InstanceCreationDate, seg.InstanceCreationTime = meta.study_date, meta.study_time
    for item in seg.get("ContributingEquipmentSequence", []):
        item.ContributionDateTime = meta.study_date + meta.study_time
    for item in [*seg.DimensionOrganizationSequence, *seg.DimensionIndexSequence]:
        item.DimensionOrganizationUID = dimension_uid


def write_seg(path: Path, source: list[Dataset], labels: np.ndarray, meta: StudyMeta, seed: int) -> None:
    """A binary DICOM SEG of the label map (x, y, z), referencing the source slices (increasing z)."""
    frames = np.ascontiguousarray(np.transpose(labels, (2, 1, 0)))  # (slices, rows, columns)
    seg = hd.seg.Segmentation(
        source_images=source,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_segment_descriptions(),
        series_instance_uid=uid(seed, meta.series_uid, "seg-series"),
        series_number=900 + meta.series_number,
        sop_instance_uid=uid(seed, meta.series_uid, "seg"),
        instance_number=1,
        manufacturer="MedSegLLM",
        manufacturer_model_name="synth",
        software_versions="medsegllm-synth",
        device_serial_number="0",
        content_description="reference labels",
        content_creator_name="Annotator^Demo",
        series_description="SEG reference labels",
        content_date=meta.study_date,
        content_time=meta.study_time,
    )
    _pin_volatile(seg, meta, uid(seed, meta.series_uid, "seg-dimensions"))
    write_with(path, lambda p: seg.save_as(p, enforce_file_format=True))
