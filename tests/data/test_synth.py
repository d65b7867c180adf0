"""The demo cohort generator: real DICOM, consistent hidden truth, deterministic output."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest

from medsegllm.config import SynthParams
from medsegllm.knowledge import SUBTYPES
from medsegllm.synth.cohort import generate_cohort, scanner_counts
from medsegllm.synth.scanners import SCANNERS

SEED = 7
PARAMS = SynthParams(n_studies=8)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("cohort")
    return out, generate_cohort(out, PARAMS, SEED)


@pytest.fixture(scope="module")
def truth(cohort) -> list[dict]:
    return [json.loads(line) for line in (cohort[0] / "truth" / "studies.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def series(cohort) -> dict[str, list[tuple[Path, pydicom.Dataset]]]:
    """Image slices per SeriesInstanceUID, sorted by position along the slice normal (z)."""
    found: dict[str, list] = defaultdict(list)
    for path in sorted((cohort[0] / "dicom").rglob("*")):
        if path.is_file():
            ds = pydicom.dcmread(path)
            if ds.Modality in ("CT", "MR"):
                found[ds.SeriesInstanceUID].append((path, ds))
    return {uid: sorted(items, key=lambda it: float(it[1].ImagePositionPatient[2])) for uid, items in found.items()}


def _volume(slices: list[tuple[Path, pydicom.Dataset]]) -> np.ndarray:
    """(column, row, slice) volume in modality units, by the truth-mask convention."""
    return np.stack([ds.pixel_array.T * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
                     for _, ds in slices], axis=-1)


def _mask(root: Path, uid: str) -> nib.Nifti1Image:
    return nib.load(root / "truth" / "masks" / f"{uid}.nii.gz")


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files_and_another_seed_differs(cohort, tmp_path):
    root, summary = cohort
    again = generate_cohort(tmp_path / "again", PARAMS, SEED)
    assert again == summary
    assert _hashes(tmp_path / "again") == _hashes(root)
    generate_cohort(tmp_path / "other", PARAMS, SEED + 1)
    assert (tmp_path / "other" / "reports.jsonl").read_bytes() != (root / "reports.jsonl").read_bytes()


def test_all_six_scanners_and_plan(cohort, truth):
    root, summary = cohort
    assert sum(scanner_counts(48)) == 48 and min(scanner_counts(48)) >= 4
    assert {t["device_id"] for t in truth} == {s.device_id for s in SCANNERS}
    assert set(summary["holdout_devices"]) == {"toshiba_aquilion_one", "ge_medical_systems_signa_artist"}
    assert summary["n_studies"] == len(truth) == PARAMS.n_studies
    assert all(not t["labelled"] for t in truth if t["holdout"])
    labelled = [t for t in truth if t["labelled"]]
    assert len(labelled) >= 2 and any(t["tumour_present"] for t in labelled)
    assert sum(t["tumour_present"] for t in truth) == round(PARAMS.tumour_fraction * PARAMS.n_studies)
    fewest, most = PARAMS.lesions_per_tumour_study  # sample_lesions drops one that finds no room, never all
    assert all(1 <= len(t["lesions"]) <= most for t in truth if t["tumour_present"])
    assert any(len(t["lesions"]) >= fewest > 1 for t in truth)
    assert json.loads((root / "cohort.json").read_text()) == json.loads(json.dumps(summary))


def test_headers_are_complete_real_dicom(series, truth):
    required = ["PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyInstanceUID",
                "SOPInstanceUID", "Manufacturer", "ManufacturerModelName", "StationName", "InstitutionName",
                "ReferringPhysicianName", "StudyDate", "StudyTime", "SeriesNumber", "InstanceNumber",
                "PixelSpacing", "SliceThickness", "SpacingBetweenSlices", "FrameOfReferenceUID"]
    shuffled = 0
    for t in truth:
        slices = series[t["series_instance_uid"]]
        path, ds = slices[0]
        assert path.read_bytes()[128:132] == b"DICM"
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert all(k in ds for k in required)
        assert ds.SOPClassUID == (pydicom.uid.CTImageStorage if t["modality"] == "CT" else pydicom.uid.MRImageStorage)
        assert (ds.Manufacturer, ds.ManufacturerModelName) == (t["manufacturer"], t["model_name"])
        assert ds.BitsAllocated == 16 and ds.PhotometricInterpretation == "MONOCHROME2"
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        numbers = [int(d.InstanceNumber) for _, d in slices]
        shuffled += numbers != sorted(numbers)
        assert len({d.SOPInstanceUID for _, d in slices}) == len(slices)
    assert shuffled > 0  # readers must sort by ImagePositionPatient


def test_ct_in_hounsfield_units_and_mr_gains_differ(cohort, series, truth):
    root = cohort[0]
    mr_max = {}
    for t in truth:
        slices = series[t["series_instance_uid"]]
        volume = _volume(slices)
        labels = np.asarray(_mask(root, t["series_instance_uid"]).dataobj)
        assert labels.shape == volume.shape and labels.dtype == np.uint8
        if t["modality"] == "CT":
            assert float(slices[0][1].RescaleIntercept) == -1024
            liver = float(np.median(volume[labels == 1]))
            assert 38 < liver < 95  # the held-out Toshiba's calibration drifted: x0.95 + 30 HU
            if t["manufacturer"] == "SIEMENS":
                assert 50 < liver < 70
            assert volume.min() < -900  # air
        else:
            mr_max[t["device_id"]] = float(np.percentile(volume, 99))
    assert max(mr_max.values()) > 5 * min(mr_max.values())


def test_truth_affine_matches_dicom_geometry(cohort, series, truth):
    root = cohort[0]
    for t in truth:
        slices = series[t["series_instance_uid"]]
        first, last = slices[0][1], slices[-1][1]
        row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
        p0 = np.array([float(v) for v in first.ImagePositionPatient])
        dz = (float(last.ImagePositionPatient[2]) - p0[2]) / (len(slices) - 1)
        lps = np.array([[col_spacing, 0, 0, p0[0]], [0, row_spacing, 0, p0[1]], [0, 0, dz, p0[2]], [0, 0, 0, 1]])
        expected = np.diag([-1, -1, 1, 1]) @ lps
        np.testing.assert_allclose(_mask(root, t["series_instance_uid"]).affine, expected, atol=1e-3)


def test_truth_matches_dcm2niix(cohort, series, truth, tmp_path):
    dcm2niix = Path(sys.executable).parent / "dcm2niix"
    if not dcm2niix.exists():
        dcm2niix = shutil.which("dcm2niix")
    if not dcm2niix:
        pytest.skip("dcm2niix not installed")
    t = next(t for t in truth if t["modality"] == "CT")
    slices = series[t["series_instance_uid"]]
    subprocess.run([str(dcm2niix), "-z", "n", "-b", "n", "-f", "vol", "-o", str(tmp_path), str(slices[0][0].parent)],
                   check=True, capture_output=True)
    converted = nib.load(tmp_path / "vol.nii")
    truth_img = _mask(cohort[0], t["series_instance_uid"])
    transform = nib.orientations.ornt_transform(nib.io_orientation(converted.affine),
                                                nib.io_orientation(truth_img.affine))
    data = nib.orientations.apply_orientation(np.asarray(converted.get_fdata()), transform)
    affine = converted.affine @ nib.orientations.inv_ornt_aff(transform, converted.shape)
    np.testing.assert_allclose(affine, truth_img.affine, atol=1e-2)
    np.testing.assert_allclose(data, _volume(slices), atol=0.5)


def test_seg_matches_truth_on_labelled_studies(cohort, series, truth):
    root = cohort[0]
    segs = {}
    for path in (root / "dicom").rglob("seg.dcm"):
        seg = hd.seg.segread(path)
        segs[seg.ReferencedSeriesSequence[0].SeriesInstanceUID] = seg
    labelled = [t for t in truth if t["labelled"]]
    assert set(segs) == {t["series_instance_uid"] for t in labelled}
    for t in labelled:
        seg = segs[t["series_instance_uid"]]
        assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver", "kidney", "lesion"]
        sops = [ds.SOPInstanceUID for _, ds in series[t["series_instance_uid"]]]
        pixels = seg.get_pixels_by_source_instance(sops, combine_segments=True, assert_missing_frames_are_empty=True)
        expected = np.asarray(_mask(root, t["series_instance_uid"]).dataobj).transpose(2, 1, 0)
        np.testing.assert_array_equal(pixels, expected)


def test_lesions_are_labelled_where_the_truth_says(cohort, truth):
    root = cohort[0]
    for t in truth:
        image = _mask(root, t["series_instance_uid"])
        labels = np.asarray(image.dataobj)
        assert bool((labels == 3).any()) == t["tumour_present"]
        assert (labels == 1).any() and (labels == 2).any()
        for lesion in t["lesions"]:
            assert lesion["subtype"] in SUBTYPES and lesion["organ"] in SUBTYPES[lesion["subtype"]]["organs"]
            assert 8 <= lesion["size_mm"] <= 40
            assert (lesion["laterality"] is None) == (lesion["organ"] == "liver")
            ras = np.array([-lesion["center_mm"][0], -lesion["center_mm"][1], lesion["center_mm"][2], 1.0])
            i, j, k = np.rint(np.linalg.inv(image.affine) @ ras)[:3].astype(int)
            assert (labels[max(i - 1, 0):i + 2, max(j - 1, 0):j + 2, max(k - 1, 0):k + 2] == 3).any()


def test_reports_describe_findings_negations_and_phi(cohort, truth, series):
    root = cohort[0]
    reports = {r["accession_number"]: r["report_text"]
               for r in map(json.loads, (root / "reports.jsonl").read_text().splitlines())}
    assert set(reports) == {t["accession_number"] for t in truth}
    headers = {ds.AccessionNumber: ds for slices in series.values() for _, ds in slices[:1]}
    all_synonyms = [s for entry in SUBTYPES.values() for s in entry["synonyms"]]
    for t in truth:
        text = reports[t["accession_number"]].lower()
        if t["tumour_present"]:
            assert any(s in text for s in SUBTYPES[t["lesions"][0]["subtype"]]["synonyms"])
            sizes = [float(v) * (10 if unit.startswith("c") else 1)
                     for v, unit in re.findall(r"(\d+(?:\.\d)?)(?: x \d+(?:\.\d)?)? (cm|mm)", text)]
            assert any(abs(s - les["size_mm"]) <= 1.0 for les in t["lesions"] for s in sizes)
        else:
            assert not any(re.search(rf"\b{s}\b", text) for s in all_synonyms)
            assert re.search(r"no (focal|evidence|suspicious|renal)|unremarkable", text)
        family, given = str(headers[t["accession_number"]].PatientName).split("^")
        assert (given.lower() in text and family.lower() in text) == t["report_has_phi"]
    assert 0 < sum(t["report_has_phi"] for t in truth) < len(truth)


@pytest.mark.parametrize("bad", [(0, 2), (3, 2)])
def test_lesion_range_is_validated(bad):
    with pytest.raises(ValueError, match="lesions_per_tumour_study"):
        SynthParams(lesions_per_tumour_study=bad)
