"""Ingest on small DICOMs built in the test: sorting, geometry checks, bad files, accounting."""

from __future__ import annotations

import multiprocessing
import random
import re
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medsegllm.common.deid import pseudonym
from medsegllm.config import IngestParams
from medsegllm.ingest.geometry import build_volume, pixels
from medsegllm.ingest.identity import device_id, station_token
from medsegllm.ingest.run import run_ingest
from medsegllm.ingest.scan import ScanResult, scan

PARAMS = IngestParams(target_spacing=(2.0, 2.0, 2.0), pseudonymize_paths=False)  # reasons checked by file name
SALT = "unit-salt"


def make_slice(series: str, z: float, instance: int, sop_class: str = "1.2.840.10008.5.1.4.1.1.2", modality: str = "CT",
               value: int = 100, slope: float = 1.0, intercept: float = -1024.0) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = modality, series, "1.2.3.4"
    ds.PatientName, ds.PatientID, ds.AccessionNumber = "Doe^Jane", "PID-SECRET-77", "ACC-SECRET-99"
    ds.Manufacturer, ds.ManufacturerModelName = "GE MEDICAL SYSTEMS", "SIGNA Artist"
    ds.InstanceNumber = instance
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [-10.0, -20.0, z]
    ds.PixelSpacing = [2.0, 1.5]
    ds.SliceThickness = 2.0
    ds.Rows, ds.Columns = 6, 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    pixels_ = np.full((6, 8), value, dtype=np.uint16)
    pixels_[0, 0] = value + instance  # marks the slice and the row/column order
    ds.PixelData = pixels_.tobytes()
    return ds


def write_series(folder: Path, zs: list[float], series: str | None = None, **kw) -> str:
    series = series or generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    numbers = list(range(1, len(zs) + 1))
    random.Random(0).shuffle(numbers)  # InstanceNumber must not drive the order
    for i, (z, n) in enumerate(zip(zs, numbers)):
        make_slice(series, z, n, **kw).save_as(folder / f"img{i}", enforce_file_format=True)
    return series


def tables(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.read_parquet(out / "manifest.parquet"), pd.read_parquet(out / "quarantine.parquet")


def test_sorted_by_position_not_instance_number():
    datasets = [make_slice("1.2", z, n, value=10 * n) for z, n in [(4.0, 1), (0.0, 3), (2.0, 2)]]
    volume = build_volume(datasets, [pixels(ds) for ds in datasets])
    assert volume.array.shape == (8, 6, 3)
    assert [float(ds.ImagePositionPatient[2]) for ds in (datasets[i] for i in volume.order)] == [0.0, 2.0, 4.0]
    assert volume.spacing == (1.5, 2.0, 2.0)
    # x = column (1.5 mm along L->R, negated into RAS), y = row, z = +S
    np.testing.assert_allclose(volume.affine[:3, :3], np.diag([-1.5, -2.0, 2.0]))
    np.testing.assert_allclose(volume.affine[:3, 3], [10.0, 20.0, 0.0])


def test_rescale_applied():
    ds = make_slice("1.2", 0.0, 1, value=1000, slope=2.0, intercept=-1024.0)
    assert pixels(ds)[1, 1] == pytest.approx(2.0 * 1000 - 1024.0)
    assert pixels(ds).dtype == np.float32


@pytest.mark.parametrize(
    ("manufacturer", "model", "expected"),
    [("GE MEDICAL SYSTEMS", "SIGNA Artist", "ge_medical_systems_signa_artist"), ("Siemens Healthineers", "MAGNETOM  Vida-Fit", "siemens_healthineers_magnetom_vida_fit"),
     ("", "", "unknown"), ("TOSHIBA", "", "toshiba_unknown")],
)
def test_device_slug(manufacturer: str, model: str, expected: str):
    assert device_id(manufacturer, model) == expected


def test_station_token_tells_two_scanners_of_one_model_apart(tmp_path: Path):
    uids = {}
    for station in ("CT-ROOM-3 ST MARY", "MR2OC", ""):
        folder = tmp_path / "in" / (station or "none")
        uids[station] = write_series(folder, [0.0, 2.0])
        for path in folder.iterdir():
            ds = dcmread(path)
            ds.StationName = station
            ds.save_as(path, enforce_file_format=True)
    out = tmp_path / "out"
    run_ingest(tmp_path / "in", out, PARAMS, SALT)
    assert set(tables(out)[0].device_id) == {"ge_medical_systems_signa_artist"}
    summary = run_ingest(tmp_path / "in", out, PARAMS.model_copy(update={"device_station": True}), SALT)
    devices = tables(out)[0].set_index("series_id").device_id
    assert summary["n_reused_series"] == 1  # only the series without a station keeps its id; no row is reused with an old one
    base = "ge_medical_systems_signa_artist"
    assert devices[pseudonym(uids[""], SALT)] == base
    tokens = {station: devices[pseudonym(uids[station], SALT)] for station in ("CT-ROOM-3 ST MARY", "MR2OC")}
    assert len(set(tokens.values())) == 2 and all(re.fullmatch(base + "_st[0-9a-f]{6}", t) for t in tokens.values())
    assert tokens["MR2OC"] == f"{base}_st{station_token('MR2OC', SALT)}" != f"{base}_st{station_token('MR2OC', 'other')}"
    blob = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())
    assert b"ST MARY" not in blob and b"MR2OC" not in blob


def write_bad_batch(root: Path) -> tuple[str, str]:
    """A tree with good series and every kind of bad file and bad series; the UIDs of a 4-slice and a 1-slice good series."""
    good = write_series(root / "a" / "b" / "good", [0.0, 2.0, 4.0, 6.0])
    write_series(root / "dup", [0.0, 2.0, 2.0])
    write_series(root / "gap", [0.0, 2.0, 4.0, 10.0])
    single = write_series(root / "single", [0.0])
    tilt = root / "orient"
    uid = write_series(tilt, [0.0, 2.0])
    ds = make_slice(uid, 4.0, 9)
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    ds.save_as(tilt / "odd.dcm", enforce_file_format=True)
    (root / "empty.dcm").write_bytes(b"")
    (root / "notes.txt").write_text("not dicom at all")
    full = root / "a" / "b" / "good" / "img0"
    (root / "header_cut.dcm").write_bytes(full.read_bytes()[:400])
    write_series(root / "cut", [0.0, 2.0])
    (root / "cut" / "img1").write_bytes((root / "cut" / "img1").read_bytes()[:-40])
    rt = make_slice(generate_uid(), 0.0, 1, sop_class="1.2.840.10008.5.1.4.1.1.481.3", modality="RTSTRUCT")
    rt.save_as(root / "rt.dcm", enforce_file_format=True)
    sr = make_slice(generate_uid(), 0.0, 1, sop_class="1.2.840.10008.5.1.4.1.1.88.11", modality="SR")
    sr.save_as(root / "report", enforce_file_format=True)
    mf = make_slice(generate_uid(), 0.0, 1)
    mf.NumberOfFrames = 2
    mf.save_as(root / "multiframe.dcm", enforce_file_format=True)
    return good, single


def test_batch_with_bad_files_and_bad_series(tmp_path: Path):
    root = tmp_path / "in"
    good, single = write_bad_batch(root)

    out = tmp_path / "out"
    summary = run_ingest(root, out, PARAMS, SALT)
    manifest, quarantine = tables(out)
    reasons = dict(zip(quarantine.path, quarantine.reason))

    assert summary["n_files"] == 4 + 3 + 4 + 1 + 3 + 2 + 6
    assert summary["n_series"] == 4 and summary["n_image_files"] == 8  # good, single, orient's two planes
    assert summary["n_report_files"] == 1 and summary["n_label_files"] == 0
    assert summary["n_quarantined_files"] == len(quarantine) == 3 + 4 + 2 + 5
    assert all(reasons[f"dup/img{i}"] == "duplicate slice positions within series" for i in range(3))
    assert reasons["gap/img3"].startswith("non-uniform slice spacing")
    planes = manifest[manifest.stack_label != ""].set_index("stack_label").n_slices.to_dict()
    assert planes == {"plane=1": 1, "plane=2": 2}  # mixed orientations: one stack per plane, as dcm2niix
    assert reasons["empty.dcm"] == "unreadable: empty file"
    assert reasons["notes.txt"] == "unreadable: not a DICOM file"
    assert reasons["header_cut.dcm"] == "not a CT/MR image: no modality"
    assert reasons["cut/img1"].startswith("pixel data unreadable")
    assert reasons["cut/img0"] == "series contains an unreadable file"
    assert reasons["rt.dcm"] == "RTSTRUCT references no image series in the input"
    assert reasons["multiframe.dcm"] == "multi-frame CT/MR without per-frame functional groups (no frame geometry)"

    row = manifest.set_index("series_id").loc[pseudonym(good, SALT)]
    assert row.n_slices == 4 and row.device_id == "ge_medical_systems_signa_artist"
    image = nib.load(out / row.volume_path)
    assert list(image.shape) == list(row["shape"]) and image.get_data_dtype() == np.float32
    np.testing.assert_allclose(np.abs(np.diag(image.affine)[:3]), PARAMS.target_spacing)
    assert sum(row.histogram) == pytest.approx(1.0, abs=1e-5) and len(row.raw_histogram) == PARAMS.histogram_bins
    assert np.asarray(image.dataobj).min() >= 0 and np.asarray(image.dataobj).max() <= 1
    single = manifest.set_index("series_id").loc[pseudonym(single, SALT)]
    assert list(single.source_spacing) == [1.5, 2.0, 2.0]  # z spacing from SliceThickness

    blob = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())
    for secret in (b"Doe^Jane", b"PID-SECRET-77", b"ACC-SECRET-99", good.encode()):
        assert secret not in blob

    again = run_ingest(root, out, PARAMS, SALT)
    assert again["n_reused_series"] == 4 and again["n_quarantined_files"] == summary["n_quarantined_files"]
    assert tables(out)[0].equals(manifest)


def _scanned(result: ScanResult) -> tuple:
    images = [(h.path, h.series_uid, h.sop_uid, h.echo, h.orientation, h.native and h.native.native,
               h.native and dict(h.native.view.items())) for h in result.images]
    return result.n_files, images, [(s.path, s.referenced_series, s.kind) for s in result.segs], result.reports, result.quarantine


def test_scan_in_worker_chunks_equals_the_serial_scan(tmp_path: Path):
    write_bad_batch(tmp_path / "in")
    serial = scan(tmp_path / "in")
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        chunked = scan(tmp_path / "in", pool, chunk_files=4)
    assert serial.n_files == 23 and len(serial.quarantine) == 3 and serial.reports and len(serial.images) > 12
    assert _scanned(chunked) == _scanned(serial)


def test_two_workers_write_what_one_writes(tmp_path: Path):
    write_bad_batch(tmp_path / "in")
    for workers in (1, 2):
        run_ingest(tmp_path / "in", tmp_path / f"out{workers}", PARAMS, SALT, workers=workers)
    (m1, q1), (m2, q2) = tables(tmp_path / "out1"), tables(tmp_path / "out2")
    assert m1.drop(columns="ingested_utc", errors="ignore").equals(m2.drop(columns="ingested_utc", errors="ignore"))
    assert q1.equals(q2)


def test_empty_input_writes_empty_tables(tmp_path: Path):
    (tmp_path / "in").mkdir()
    summary = run_ingest(tmp_path / "in", tmp_path / "out", PARAMS, SALT)
    manifest, quarantine = tables(tmp_path / "out")
    assert summary["n_files"] == 0 and manifest.empty and quarantine.empty
    assert list(quarantine.columns) == ["path", "reason"]
