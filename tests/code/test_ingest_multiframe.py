"""Enhanced (multi-frame) CT/MR: highdicom's legacy conversion of a demo series must ingest exactly
like the classic series it came from, match dcm2niix, and fail the same geometry checks."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from highdicom.legacy import LegacyConvertedEnhancedCTImage, LegacyConvertedEnhancedMRImage
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from medsegllm.common.deid import pseudonym
from medsegllm.common.io import load_nifti
from medsegllm.config import IngestParams, SynthParams
from medsegllm.ingest.geometry import build_volume
from medsegllm.ingest.run import run_ingest
from medsegllm.ingest.series import decode_series

SALT = "multiframe-salt"
PARAMS = IngestParams(pseudonymize_paths=False)  # quarantine rows name the test files
DCM2NIIX = Path(sys.executable).parent / "dcm2niix"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"


def _convert(files: list[Path], modality: str) -> pydicom.Dataset:
    datasets = [pydicom.dcmread(p) for p in files]
    cls = LegacyConvertedEnhancedCTImage if modality == "CT" else LegacyConvertedEnhancedMRImage
    return cls(datasets, series_instance_uid=generate_uid(), series_number=99, sop_instance_uid=generate_uid(), instance_number=1)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    """A demo cohort's first CT and first MR series, each also as one Legacy Converted Enhanced file."""
    from medsegllm.synth.cohort import generate_cohort

    root = tmp_path_factory.mktemp("multiframe")
    generate_cohort(root / "cohort", SynthParams(n_studies=4, label_fraction=0.3), seed=0)
    series: dict[tuple[str, str], list[Path]] = defaultdict(list)
    for path in sorted((root / "cohort" / "dicom").rglob("*")):
        if path.is_file():
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            if ds.Modality in ("CT", "MR"):
                series[(ds.Modality, ds.SeriesInstanceUID)].append(path)
    picked = {}
    for (modality, uid), files in series.items():
        if modality not in picked:
            enhanced = _convert(files, modality)
            path = root / f"enhanced_{modality}.dcm"
            enhanced.save_as(path)
            picked[modality] = {"files": files, "uid": uid, "enhanced": enhanced, "path": path}
    assert set(picked) == {"CT", "MR"}
    return {"root": root, **picked}


def _volume(files: list[Path]):
    datasets, slices, bad = decode_series(files)
    assert not bad
    return build_volume(datasets, slices)


def _reject_reason(tmp_path: Path, ds: pydicom.Dataset) -> str:
    path = tmp_path / "variant.dcm"
    ds.save_as(path)
    datasets, slices, bad = decode_series([path])
    assert not bad
    with pytest.raises(ValueError) as error:
        build_volume(datasets, slices)
    return str(error.value)


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_enhanced_volume_equals_classic(demo, modality):
    item = demo[modality]
    classic, enhanced = _volume(item["files"]), _volume([item["path"]])
    assert enhanced.array.shape == classic.array.shape and enhanced.array.shape[2] == len(item["files"])
    np.testing.assert_array_equal(enhanced.array, classic.array)
    np.testing.assert_allclose(enhanced.affine, classic.affine, atol=1e-6)


def test_ingest_enhanced_and_classic_give_identical_outputs(demo, tmp_path):
    tree = tmp_path / "in"
    (tree / "enhanced").mkdir(parents=True)
    for modality in ("CT", "MR"):
        (tree / "classic" / modality).mkdir(parents=True)
        for path in demo[modality]["files"]:
            shutil.copy(path, tree / "classic" / modality / path.name)
        shutil.copy(demo[modality]["path"], tree / "enhanced" / f"{modality}_no_suffix")
    for name in ("rtdose.dcm", "examples_ybr_color.dcm", "SC_rgb_rle_2frame.dcm"):  # pydicom's multi-frame files
        shutil.copy(get_testdata_file(name), tree / name)
    out = tmp_path / "out"
    summary = run_ingest(tree, out, PARAMS, SALT)
    manifest = pd.read_parquet(out / "manifest.parquet").set_index("series_id")
    reasons = dict(pd.read_parquet(out / "quarantine.parquet")[["path", "reason"]].values)
    assert reasons == {"rtdose.dcm": "not a CT/MR image: RTDOSE", "examples_ybr_color.dcm": "not a CT/MR image: US",
                       "SC_rgb_rle_2frame.dcm": "not a CT/MR image: OT"}
    n_classic = sum(len(demo[m]["files"]) for m in ("CT", "MR"))
    assert summary["n_image_files"] == n_classic + 2 and summary["n_files"] == n_classic + 2 + 3
    for modality in ("CT", "MR"):
        classic = manifest.loc[pseudonym(demo[modality]["uid"], SALT)]
        enhanced = manifest.loc[pseudonym(str(demo[modality]["enhanced"].SeriesInstanceUID), SALT)]
        assert enhanced.modality == modality and enhanced.device_id == classic.device_id
        assert enhanced.n_slices == classic.n_slices and list(enhanced.source_spacing) == list(classic.source_spacing)
        a, a_affine = load_nifti(out / classic.volume_path)
        b, b_affine = load_nifti(out / enhanced.volume_path)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a_affine, b_affine, atol=1e-6)


def test_per_frame_groups_and_frame_order(demo, tmp_path):
    """Enhanced CT with frames reversed, pixel spacing and rescale per frame (not shared): same volume."""
    ds = copy.deepcopy(demo["CT"]["enhanced"])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = ENHANCED_CT
    frames = ds.pixel_array.astype(np.int32)
    shared = ds.SharedFunctionalGroupsSequence[0]
    measures, transform = shared.PixelMeasuresSequence, shared.PixelValueTransformationSequence
    del shared.PixelMeasuresSequence, shared.PixelValueTransformationSequence
    for i, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        shift = 7 * i  # stored value up, intercept down: the same HU
        frames[i] += shift
        item.PixelMeasuresSequence = copy.deepcopy(measures)
        item.PixelValueTransformationSequence = copy.deepcopy(transform)
        item.PixelValueTransformationSequence[0].RescaleIntercept = float(transform[0].RescaleIntercept) - shift
    ds.PerFrameFunctionalGroupsSequence = pydicom.Sequence(list(ds.PerFrameFunctionalGroupsSequence)[::-1])
    assert frames.max() < 2 ** (ds.BitsStored - 1)
    ds.PixelData = frames[::-1].astype(ds.pixel_array.dtype).tobytes()
    path = tmp_path / "enhanced_ct.dcm"
    ds.save_as(path)
    ours, classic = _volume([path]), _volume(demo["CT"]["files"])
    np.testing.assert_array_equal(ours.array, classic.array)
    np.testing.assert_allclose(ours.affine, classic.affine, atol=1e-6)


def test_frame_geometry_checks_match_classic(demo, tmp_path):
    base = demo["MR"]["enhanced"]
    gap = copy.deepcopy(base)
    keep = [i for i in range(int(gap.NumberOfFrames)) if i != 5]
    gap.PixelData = gap.pixel_array[keep].tobytes()
    gap.PerFrameFunctionalGroupsSequence = pydicom.Sequence([gap.PerFrameFunctionalGroupsSequence[i] for i in keep])
    gap.NumberOfFrames = len(keep)
    assert _reject_reason(tmp_path, gap).startswith("non-uniform slice spacing")
    dup = copy.deepcopy(base)
    frames = dup.PerFrameFunctionalGroupsSequence
    frames[3].PlanePositionSequence[0].ImagePositionPatient = frames[4].PlanePositionSequence[0].ImagePositionPatient
    assert _reject_reason(tmp_path, dup) == "duplicate slice positions within series"
    tilt = copy.deepcopy(base)
    tilt.PerFrameFunctionalGroupsSequence[2].PlaneOrientationSequence = copy.deepcopy(
        tilt.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence)
    tilt.PerFrameFunctionalGroupsSequence[2].PlaneOrientationSequence[0].ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    assert _reject_reason(tmp_path, tilt) == "inconsistent ImageOrientationPatient within series"


def test_bad_multiframe_objects_are_quarantined_with_reasons(demo, tmp_path):
    tree = tmp_path / "in"
    tree.mkdir()
    stacks = copy.deepcopy(demo["CT"]["enhanced"])
    stacks.PerFrameFunctionalGroupsSequence[0].FrameContentSequence[0].StackID = "2"
    stacks.save_as(tree / "two_stacks.dcm")
    no_groups = copy.deepcopy(demo["CT"]["enhanced"])
    no_groups.SeriesInstanceUID = generate_uid()
    del no_groups.PerFrameFunctionalGroupsSequence
    no_groups.save_as(tree / "no_groups.dcm")
    short = copy.deepcopy(demo["MR"]["enhanced"])
    short.PixelData = short.PixelData[: len(short.PixelData) // 2]
    short.save_as(tree / "short.dcm")
    summary = run_ingest(tree, tmp_path / "out", PARAMS, SALT)
    reasons = dict(pd.read_parquet(tmp_path / "out" / "quarantine.parquet")[["path", "reason"]].values)
    assert reasons["two_stacks.dcm"] == "multi-frame object holds 2 stacks (StackID); split it into one stack per object"
    assert reasons["no_groups.dcm"] == "multi-frame CT/MR without per-frame functional groups (no frame geometry)"
    assert reasons["short.dcm"].startswith("pixel data unreadable")
    assert summary["n_series"] == 0 and summary["n_quarantined_files"] == summary["n_files"] == 3


def _echo_object(enhanced: pydicom.Dataset, echo_times: tuple[float, float]) -> pydicom.Dataset:
    """`enhanced` holding two echoes: every frame again at the second echo time, the second echo's
    pixels half the first's, so a volume read shows which frames it took."""
    ds = copy.deepcopy(enhanced)
    ds.SeriesInstanceUID = generate_uid()
    frames = list(ds.PerFrameFunctionalGroupsSequence)
    doubled = [copy.deepcopy(item) for _ in echo_times for item in frames]
    for n, item in enumerate(doubled):
        echo = pydicom.Dataset()
        echo.EffectiveEchoTime = echo_times[n // len(frames)]
        item.MREchoSequence = pydicom.Sequence([echo])
    first = ds.pixel_array
    ds.PerFrameFunctionalGroupsSequence = pydicom.Sequence(doubled)
    ds.NumberOfFrames = len(doubled)
    ds.PixelData = np.concatenate([first, first // 2]).astype(first.dtype).tobytes()
    return ds


def test_enhanced_object_with_two_echoes_is_split_into_two_volumes(demo, tmp_path):
    item = demo["MR"]
    echoes = _echo_object(item["enhanced"], (10.0, 5.0))  # echo 1 is the shorter echo time: the frames' second half
    path = tmp_path / "echoes.dcm"
    echoes.save_as(path)
    original = _volume([item["path"]])
    for stack, expected in (("echo=2", original.array), ("echo=1", original.array // 2)):
        datasets, slices, bad = decode_series([path], frame_stack=stack)
        assert not bad
        volume = build_volume(datasets, slices)
        np.testing.assert_array_equal(volume.array, expected)
        np.testing.assert_allclose(volume.affine, original.affine, atol=1e-6)
    assert decode_series([path])[2] == [(path, "multi-frame object holds 2 volumes (echo=1, echo=2); "
                                               "read it one volume at a time")]

    tree = tmp_path / "in"
    tree.mkdir()
    shutil.copy(path, tree / "echoes.dcm")
    shutil.copy(item["path"], tree / "single.dcm")
    summary = run_ingest(tree, tmp_path / "out", PARAMS, SALT)
    manifest = pd.read_parquet(tmp_path / "out" / "manifest.parquet").set_index("series_id")
    uid = str(echoes.SeriesInstanceUID)
    assert summary["n_series"] == 3 and summary["n_image_files"] == 2 and summary["n_quarantined_files"] == 0
    single = manifest.loc[pseudonym(str(item["enhanced"].SeriesInstanceUID), SALT)]
    for stack in ("echo=1", "echo=2"):
        row = manifest.loc[pseudonym(f"{uid}#{stack}", SALT)]
        assert row["stack_label"] == stack and row["n_slices"] == single["n_slices"] == len(item["files"])
    same, _ = load_nifti(tmp_path / "out" / manifest.loc[pseudonym(f"{uid}#echo=2", SALT), "volume_path"])
    np.testing.assert_array_equal(same, load_nifti(tmp_path / "out" / single["volume_path"])[0])


def test_a_failing_volume_quarantines_its_object_and_keeps_the_others(demo, tmp_path):
    tree = tmp_path / "in"
    tree.mkdir()
    tilted = _echo_object(demo["MR"]["enhanced"], (5.0, 10.0))
    n = len(demo["MR"]["files"])
    frame = tilted.PerFrameFunctionalGroupsSequence[n + 2]  # a frame of echo 2
    frame.PlaneOrientationSequence = copy.deepcopy(tilted.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence)
    frame.PlaneOrientationSequence[0].ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    tilted.save_as(tree / "tilted.dcm")
    same_echo = _echo_object(demo["MR"]["enhanced"], (5.0, 5.0))  # repeats that no attribute explains
    same_echo.save_as(tree / "same_echo.dcm")
    summary = run_ingest(tree, tmp_path / "out", PARAMS, SALT)
    manifest = pd.read_parquet(tmp_path / "out" / "manifest.parquet")
    reasons = dict(pd.read_parquet(tmp_path / "out" / "quarantine.parquet")[["path", "reason"]].values)
    assert manifest["series_id"].tolist() == [pseudonym(f"{tilted.SeriesInstanceUID}#echo=1", SALT)]
    assert reasons == {"tilted.dcm": "volume echo=2: inconsistent ImageOrientationPatient within series",
                       "same_echo.dcm": "duplicate slice positions within series"}
    assert summary["n_files"] == summary["n_quarantined_files"] == 2 and summary["n_image_files"] == 0


@pytest.mark.skipif(not DCM2NIIX.exists(), reason="dcm2niix not installed")
@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_enhanced_geometry_matches_dcm2niix(demo, modality, tmp_path):
    folder = tmp_path / "dicom"
    folder.mkdir()
    shutil.copy(demo[modality]["path"], folder / "enhanced.dcm")
    subprocess.run([str(DCM2NIIX), "-z", "n", "-f", "out", "-o", str(tmp_path), str(folder)], check=True, capture_output=True)
    reference = nib.as_closest_canonical(nib.load(tmp_path / "out.nii"))
    volume = _volume([folder / "enhanced.dcm"])
    ours = nib.as_closest_canonical(nib.Nifti1Image(volume.array, volume.affine))
    assert ours.shape == reference.shape
    np.testing.assert_allclose(ours.affine, reference.affine, atol=1e-3)
    np.testing.assert_allclose(np.asarray(ours.dataobj), reference.get_fdata(), atol=1e-3)
