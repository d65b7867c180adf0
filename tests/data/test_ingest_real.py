"""Ingest on real third-party DICOM: geometry against dcm2niix, SEG labels, de-identification."""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medsegllm.common.deid import pseudonym
from medsegllm.config import IngestParams
from medsegllm.ingest.geometry import build_volume, pixels
from medsegllm.ingest.run import run_ingest
from medsegllm.ingest.rtstruct import rtstruct_references
from medsegllm.ingest.seg import class_of_name, seg_label_map
from medsegllm.ingest.series import slice_index

REAL = Path("/work/shared/testdata/real")
GE_CT, GE_SEG = REAL / "dcmqi_ge_ct_liver" / "ct", REAL / "dcmqi_ge_ct_liver" / "liver_seg.dcm"
SIEMENS_CT = REAL / "totalseg_siemens_ct" / "dicom"
DCM2NIIX = Path(sys.executable).parent / "dcm2niix"
SALT = "real-salt"
pytestmark = pytest.mark.skipif(not REAL.exists(), reason="real test data not present")


def load_series(folder: Path):
    datasets = [pydicom.dcmread(p) for p in sorted(folder.iterdir())]
    return datasets, build_volume(datasets, [pixels(ds) for ds in datasets])


@pytest.fixture(scope="module")
def ingested(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("real")
    tree = root / "in"
    shutil.copytree(GE_CT, tree / "patient" / "study" / "ct")
    shutil.copy(GE_SEG, tree / "patient" / "seg_without_suffix")
    shutil.copytree(SIEMENS_CT, tree / "siemens")
    (tree / "pydicom").mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm", "rtstruct.dcm", "reportsi.dcm", "no_meta.dcm"):
        shutil.copy(get_testdata_file(name), tree / "pydicom" / name)
    run_ingest(tree, root / "out", IngestParams(pseudonymize_paths=False), SALT)  # reasons checked by file name
    return root


@pytest.mark.parametrize("folder", [GE_CT, SIEMENS_CT], ids=["ge_3_slices", "siemens_jpeg2000_20_slices"])
def test_geometry_and_values_match_dcm2niix(folder: Path, tmp_path: Path):
    if not DCM2NIIX.exists():
        pytest.skip("dcm2niix not installed")
    subprocess.run([str(DCM2NIIX), "-z", "n", "-f", "out", "-o", str(tmp_path), str(folder)], check=True, capture_output=True)
    reference = nib.as_closest_canonical(nib.load(tmp_path / "out.nii"))
    _, volume = load_series(folder)
    ours = nib.as_closest_canonical(nib.Nifti1Image(volume.array, volume.affine))
    assert ours.shape == reference.shape
    np.testing.assert_allclose(ours.affine, reference.affine, atol=1e-3)
    np.testing.assert_allclose(np.asarray(ours.dataobj), reference.get_fdata(), atol=1e-3)


def test_seg_frames_land_on_their_slices():
    datasets, volume = load_series(GE_CT)
    label = seg_label_map(pydicom.dcmread(GE_SEG), slice_index(datasets, volume))
    frames = pydicom.dcmread(GE_SEG).pixel_array
    assert set(np.unique(label)) == {0, 1}  # "Liver" -> class 1
    assert label.sum() == frames.sum() > 0
    assert np.median(volume.array[label == 1]) > 0  # liver is soft tissue (HU > 0), not air


def test_ingest_real_tree(ingested: Path):
    out = ingested / "out"
    manifest = pd.read_parquet(out / "manifest.parquet").set_index("device_id")
    quarantine = pd.read_parquet(out / "quarantine.parquet")
    reasons = dict(zip(quarantine.path, quarantine.reason))
    assert set(manifest.index) >= {"ge_medical_systems_lightspeed_ultra", "siemens_biograph40_mct_4r"}
    assert set(manifest.modality) == {"CT", "MR"} and len(manifest) == 4  # GE, Siemens, CT_small, MR_small
    ge = manifest.loc["ge_medical_systems_lightspeed_ultra"]
    assert ge.has_label and ge.n_slices == 3
    volume, label = nib.load(out / ge.volume_path), nib.load(out / ge.label_path)
    assert volume.shape == label.shape == tuple(ge["shape"])
    np.testing.assert_allclose(volume.affine, label.affine)
    assert np.asarray(label.dataobj).dtype == np.uint8 and np.asarray(label.dataobj).max() == 1
    assert reasons["pydicom/rtstruct.dcm"] == "RTSTRUCT references no image series in the input"
    assert reasons["pydicom/no_meta.dcm"] == "unreadable: not a DICOM file"
    mr = manifest[manifest.modality == "MR"].iloc[0]
    mr_data = np.asarray(nib.load(out / mr.volume_path).dataobj)
    assert 0.0 <= mr_data.min() and mr_data.max() <= 1.0 and mr_data.std() > 0.05
    for hist in ("histogram", "raw_histogram"):
        assert all(abs(sum(h) - 1) < 1e-4 for h in manifest[hist])
    summary = pd.read_json(out / "summary.json", typ="series")
    assert summary.n_report_files == 1 and summary.n_label_files == 1


def test_no_identifiers_in_outputs(ingested: Path):
    header = pydicom.dcmread(sorted(GE_CT.iterdir())[0], stop_before_pixels=True)
    secrets = {str(header.PatientName), str(header.PatientID), str(header.AccessionNumber), str(header.SeriesInstanceUID),
               str(header.StudyInstanceUID), str(header.get("InstitutionName", "")), str(header.StudyDate)} - {""}
    blobs = []
    for path in (ingested / "out").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            blobs.append(gzip.decompress(data) if path.name.endswith(".gz") else data)
    blob = b"\n".join(blobs)
    for secret in secrets:
        assert secret.encode() not in blob, "identifier leaked into ingest output"
    manifest = pd.read_parquet(ingested / "out" / "manifest.parquet")
    assert pseudonym(str(header.AccessionNumber), SALT) in set(manifest.accession_id)


def test_truncated_real_file_is_quarantined(tmp_path: Path):
    (tmp_path / "in").mkdir()
    shutil.copy(get_testdata_file("MR_truncated.dcm"), tmp_path / "in" / "x.dcm")
    summary = run_ingest(tmp_path / "in", tmp_path / "out", IngestParams(), SALT)
    reasons = pd.read_parquet(tmp_path / "out" / "quarantine.parquet").reason.tolist()
    assert summary["n_quarantined_files"] == 1 and reasons[0].startswith("pixel data unreadable")


def test_enhanced_conversion_of_real_ct_matches_dcm2niix_and_classic(tmp_path: Path):
    """The GE series as one Legacy Converted Enhanced CT file (highdicom): dcm2niix's geometry and our classic volume."""
    if not DCM2NIIX.exists():
        pytest.skip("dcm2niix not installed")
    from highdicom.legacy import LegacyConvertedEnhancedCTImage
    from pydicom.uid import generate_uid

    from medsegllm.ingest.series import decode_series

    datasets, classic = load_series(GE_CT)
    enhanced = LegacyConvertedEnhancedCTImage(datasets, series_instance_uid=generate_uid(), series_number=99,
                                              sop_instance_uid=generate_uid(), instance_number=1)
    (tmp_path / "in").mkdir()
    enhanced.save_as(tmp_path / "in" / "enhanced.dcm")
    subprocess.run([str(DCM2NIIX), "-z", "n", "-f", "out", "-o", str(tmp_path), str(tmp_path / "in")], check=True, capture_output=True)
    reference = nib.as_closest_canonical(nib.load(tmp_path / "out.nii"))
    frames, slices, bad = decode_series([tmp_path / "in" / "enhanced.dcm"])
    volume = build_volume(frames, slices)
    assert not bad and volume.array.shape == classic.array.shape == (512, 512, 3)
    np.testing.assert_array_equal(volume.array, classic.array)
    ours = nib.as_closest_canonical(nib.Nifti1Image(volume.array, volume.affine))
    np.testing.assert_allclose(ours.affine, reference.affine, atol=1e-3)
    np.testing.assert_allclose(np.asarray(ours.dataobj), reference.get_fdata(), atol=1e-3)


def test_real_structure_set_references_and_roi_names():
    """pydicom's bundled RTSTRUCT (a planning system's export): its referenced series is found (its
    contours name no images: they are placed by position), and its ROIs ("patient", isocentres) name
    no class, so none would be painted."""
    ds = pydicom.dcmread(get_testdata_file("rtstruct.dcm"), force=True)
    series, sops = rtstruct_references(ds)
    assert series == {"1.2.826.0.1.3680043.8.498.2010020400001.2.1.1"} and sops == set()
    assert [class_of_name(str(roi.ROIName)) for roi in ds.StructureSetROISequence] == [None, None, None]
