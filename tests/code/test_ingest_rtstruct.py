"""RTSTRUCT label objects: contours filled by voxel centre on any slice orientation, holes, class names,
routing to the referenced series, and bad structure sets quarantined without losing the series."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medsegllm.config import IngestParams
from medsegllm.ingest.geometry import build_volume
from medsegllm.ingest.rtstruct import rtstruct_label_map
from medsegllm.ingest.run import run_ingest
from medsegllm.ingest.seg import class_of_name
from medsegllm.ingest.series import decode_series, slice_index
from medsegllm.knowledge import SEG_CLASSES

RTSTRUCT_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"
ROWS, COLUMNS, SLICES = 12, 16, 5
SPACING = (0.8, 0.7)  # PixelSpacing: row spacing, column spacing
STEP = 2.5
LIVER, KIDNEY, LESION = (SEG_CLASSES.index(name) for name in ("liver", "kidney", "lesion"))


def _rotation(angle_deg: float) -> np.ndarray:
    """An oblique slice orientation: rows and columns rotated about two axes."""
    a, b = np.radians(angle_deg), np.radians(angle_deg / 2)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rx @ rz


class Series:
    """A small CT series written slice by slice; `patient(i, j, k)` maps DICOM (column, row, slice) to LPS mm."""

    def __init__(self, folder: Path, angle_deg: float):
        self.uid, self.study, self.frame = generate_uid(), generate_uid(), generate_uid()
        rotation = _rotation(angle_deg)
        self.row_dir, self.col_dir = rotation[:, 0], rotation[:, 1]
        self.normal = np.cross(self.row_dir, self.col_dir)
        self.origin = np.array([-30.0, 12.0, 40.0])
        self.sops = []
        folder.mkdir(parents=True)
        for k in range(SLICES):
            self.sops.append(generate_uid())
            self._slice(k).save_as(folder / f"slice{(k * 3) % SLICES}.dcm", enforce_file_format=True)

    def patient(self, i: float, j: float, k: float) -> np.ndarray:
        return self.origin + i * SPACING[1] * self.row_dir + j * SPACING[0] * self.col_dir + k * STEP * self.normal

    def _slice(self, k: int) -> Dataset:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CT_CLASS, self.sops[k]
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CT_CLASS, self.sops[k], "CT"
        ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.FrameOfReferenceUID = self.uid, self.study, self.frame
        ds.PatientID, ds.Manufacturer, ds.ManufacturerModelName = "P1", "ACME", "Scanner 1"
        ds.ImageOrientationPatient = [*map(float, self.row_dir), *map(float, self.col_dir)]
        ds.ImagePositionPatient = [float(v) for v in self.patient(0, 0, k)]
        ds.PixelSpacing, ds.SliceThickness = list(SPACING), STEP
        ds.Rows, ds.Columns = ROWS, COLUMNS
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.PixelData = np.full((ROWS, COLUMNS), 40, "<i2").tobytes()
        return ds

    def rectangle(self, k: int, columns: tuple[int, int], rows: tuple[int, int]) -> list[float]:
        """ContourData of the outline half a voxel outside columns c0..c1 and rows r0..r1 of slice k."""
        (c0, c1), (r0, r1) = columns, rows
        corners = [(c0 - 0.5, r0 - 0.5), (c1 + 0.5, r0 - 0.5), (c1 + 0.5, r1 + 0.5), (c0 - 0.5, r1 + 0.5)]
        return [float(v) for i, j in corners for v in self.patient(i, j, k)]


def write_rtstruct(path: Path, series: Series, rois: dict[str, list[tuple[int | None, list[float]]]],
                   kind: str = "CLOSED_PLANAR") -> None:
    """A structure set on `series`: per ROI name, contours as (slice referenced or None, ContourData)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = RTSTRUCT_CLASS, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = RTSTRUCT_CLASS, meta.MediaStorageSOPInstanceUID, "RTSTRUCT"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.PatientID = series.study, generate_uid(), "P1"
    images = Sequence([_image(sop) for sop in series.sops])
    referenced_series = Dataset()
    referenced_series.SeriesInstanceUID, referenced_series.ContourImageSequence = series.uid, images
    study = Dataset()
    study.ReferencedSOPInstanceUID, study.RTReferencedSeriesSequence = series.study, Sequence([referenced_series])
    frame = Dataset()
    frame.FrameOfReferenceUID, frame.RTReferencedStudySequence = series.frame, Sequence([study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame])
    ds.StructureSetROISequence, ds.ROIContourSequence = Sequence(), Sequence()
    for number, (name, contours) in enumerate(rois.items(), start=1):
        roi = Dataset()
        roi.ROINumber, roi.ROIName, roi.ReferencedFrameOfReferenceUID = number, name, series.frame
        ds.StructureSetROISequence.append(roi)
        item = Dataset()
        item.ReferencedROINumber, item.ContourSequence = number, Sequence()
        for k, data in contours:
            contour = Dataset()
            contour.ContourGeometricType, contour.NumberOfContourPoints, contour.ContourData = kind, len(data) // 3, data
            if k is not None:
                contour.ContourImageSequence = Sequence([_image(series.sops[k])])
            item.ContourSequence.append(contour)
        ds.ROIContourSequence.append(item)
    ds.save_as(path, enforce_file_format=True)


def _image(sop: str) -> Dataset:
    image = Dataset()
    image.ReferencedSOPClassUID, image.ReferencedSOPInstanceUID = CT_CLASS, sop
    return image


def _label(series_dir: Path, rtstruct: Path) -> np.ndarray:
    datasets, slices, bad = decode_series(sorted(series_dir.iterdir()))
    assert not bad
    volume = build_volume(datasets, slices)
    return rtstruct_label_map(pydicom.dcmread(rtstruct), slice_index(datasets, volume))


@pytest.mark.parametrize("angle", [0.0, 33.0], ids=["axial", "oblique"])
def test_contours_fill_exactly_their_voxels(tmp_path: Path, angle: float):
    series = Series(tmp_path / "ct", angle)
    write_rtstruct(tmp_path / "rs.dcm", series, {
        "Liver": [(1, series.rectangle(1, (2, 11), (1, 8))), (None, series.rectangle(2, (2, 11), (1, 8))),
                  (2, series.rectangle(2, (5, 7), (3, 5)))],  # a hole in slice 2: even-odd
        "Lesion-1": [(1, series.rectangle(1, (9, 10), (2, 3)))],  # inside the liver: overrides it
        "Kidney_L": [(None, series.rectangle(3, (0, 3), (9, 11)))],  # by position, touching the image edge
        "Couch": [(4, series.rectangle(4, (0, 15), (0, 11)))],  # no class: skipped
    })
    expected = np.zeros((COLUMNS, ROWS, SLICES), np.uint8)  # (X, Y, Z) = (column, row, slice)
    expected[2:12, 1:9, 1] = LIVER
    expected[9:11, 2:4, 1] = LESION
    expected[2:12, 1:9, 2] = LIVER
    expected[5:8, 3:6, 2] = 0
    expected[0:4, 9:12, 3] = KIDNEY
    np.testing.assert_array_equal(_label(tmp_path / "ct", tmp_path / "rs.dcm"), expected)


def test_contours_off_the_slices_are_errors(tmp_path: Path):
    series = Series(tmp_path / "ct", 10.0)
    between = [v for i, j in [(1, 1), (5, 1), (5, 5)] for v in series.patient(i, j, 1.5)]
    write_rtstruct(tmp_path / "between.dcm", series, {"liver": [(None, between)]})
    with pytest.raises(ValueError, match="does not lie in the plane"):
        _label(tmp_path / "ct", tmp_path / "between.dcm")
    beyond = [v for i, j in [(1, 1), (5, 1), (5, 5)] for v in series.patient(i, j, SLICES + 3)]
    write_rtstruct(tmp_path / "beyond.dcm", series, {"liver": [(None, beyond)]})
    with pytest.raises(ValueError, match="matches no slice"):
        _label(tmp_path / "ct", tmp_path / "beyond.dcm")
    write_rtstruct(tmp_path / "wrong_ref.dcm", series, {"liver": [(3, series.rectangle(1, (1, 4), (1, 4)))]})
    with pytest.raises(ValueError, match="does not lie in the plane"):  # references slice 3, drawn on slice 1
        _label(tmp_path / "ct", tmp_path / "wrong_ref.dcm")


def test_points_and_open_contours_are_skipped(tmp_path: Path, caplog):
    series = Series(tmp_path / "ct", 0.0)
    write_rtstruct(tmp_path / "rs.dcm", series, {"liver": [(1, series.rectangle(1, (1, 4), (1, 4)))]}, kind="OPEN_PLANAR")
    with caplog.at_level(logging.WARNING):
        assert not _label(tmp_path / "ct", tmp_path / "rs.dcm").any()
    assert "OPEN_PLANAR is not an area" in caplog.text


@pytest.mark.parametrize(("name", "expected"), [
    ("liver", "liver"), ("Liver", "liver"), ("Kidney_L", "kidney"), ("kidney right", "kidney"),
    ("Lesion-2", "lesion"), (" LIVER ", "liver"), ("GTV", None), ("livers", None), ("background", None), ("", None),
])
def test_class_names(name: str, expected: str | None):
    assert class_of_name(name) == (SEG_CLASSES.index(expected) if expected else None)


def test_ingest_routes_a_structure_set_to_its_series(tmp_path: Path):
    tree = tmp_path / "in"
    labelled, plain = Series(tree / "labelled", 0.0), Series(tree / "plain", 20.0)
    write_rtstruct(tree / "labelled_rs", labelled, {"liver": [(2, labelled.rectangle(2, (3, 9), (2, 7)))]})
    write_rtstruct(tree / "bad_rs", plain, {"liver": [(None, [0.0, 0.0, 999.0] * 3)]})
    summary = run_ingest(tree, tmp_path / "out", IngestParams(target_spacing=(0.7, 0.8, 2.5), pseudonymize_paths=False), "salt")
    manifest = pd.read_parquet(tmp_path / "out" / "manifest.parquet")
    quarantine = pd.read_parquet(tmp_path / "out" / "quarantine.parquet")
    assert summary["n_series"] == 2 and summary["n_label_files"] == 1 and summary["n_quarantined_files"] == 1
    assert dict(zip(quarantine.path, quarantine.reason)) == {
        "bad_rs": "RTSTRUCT not usable: contour plane matches no slice of the series"}
    row = manifest[manifest.has_label].iloc[0]
    assert len(manifest[manifest.has_label]) == 1
    label = np.asarray(nib.load(tmp_path / "out" / row.label_path).dataobj)
    assert set(np.unique(label)) == {0, LIVER} and (label == LIVER).sum() == 7 * 6  # 7 columns x 6 rows, one slice
