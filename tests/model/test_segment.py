"""`segment`: checkpoint or MLflow model in, per-series DICOM SEG + NIfTI on the source grid out."""

from __future__ import annotations

import copy
import json
import logging
import shutil
from collections import defaultdict
from pathlib import Path

import highdicom as hd
import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest
import torch
from typer.testing import CliRunner

import medsegllm
from medsegllm.cli import app
from medsegllm.common.deid import pseudonym
from medsegllm.common.io import load_nifti
from medsegllm.config import IngestParams, Params, SynthParams, TrainParams
from medsegllm.ingest.geometry import build_volume, pixels
from medsegllm.ingest.harmonize import harmonize_label
from medsegllm.ingest.quarantine import pseudonymize_path
from medsegllm.knowledge import SEG_CLASSES
from medsegllm.segment import run as segment_run
from medsegllm.segment.run import run_segment, to_source_grid
from medsegllm.segment.source import ModelUnavailable, load_segmenter

REAL_CT = Path("/work/shared/testdata/real/dcmqi_ge_ct_liver/ct")
SALT = "test-salt"


def _tiny_model():
    from medsegllm.model.network import build_model

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    train = TrainParams(channels=[4, 8], roi_size=(64, 64))
    return build_model(train, ["siemens_somatom_force"], rng.normal(size=(4, 384)), rng.normal(size=(3, 384)))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from medsegllm.model.checkpoint import model_meta, save_checkpoint

    model = _tiny_model()
    return save_checkpoint(tmp_path_factory.mktemp("model") / "model.pt", model, model_meta(model, list(SEG_CLASSES)))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    from medsegllm.synth.cohort import generate_cohort

    root = tmp_path_factory.mktemp("cohort")
    generate_cohort(root, SynthParams(n_studies=4), seed=0)
    return root / "dicom"


def _source_series(folder: Path) -> dict[str, list[pydicom.Dataset]]:
    """CT/MR datasets per SeriesInstanceUID, read independently of the code under test."""
    series = defaultdict(list)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        ds = pydicom.dcmread(path)
        if ds.Modality in ("CT", "MR"):
            series[str(ds.SeriesInstanceUID)].append(ds)
    return series


def _check_outputs(summary: dict, input_dir: Path, out_dir: Path) -> None:
    """NIfTI on the source grid; SEG reads back, references the source series, one frame per
    (segment, slice containing it)."""
    sources = _source_series(input_dir)
    assert summary["n_series"] == len(sources)
    by_id = {pseudonym(uid, SALT): (uid, datasets) for uid, datasets in sources.items()}
    for row in summary["series"]:
        uid, datasets = by_id[row["series_id"]]
        volume = build_volume(datasets, [pixels(ds) for ds in datasets])
        label, affine = load_nifti(out_dir / row["nifti"])
        assert label.dtype == np.uint8 and label.shape == volume.array.shape
        np.testing.assert_allclose(affine, volume.affine, atol=1e-4)
        present = [v for v in range(1, len(SEG_CLASSES)) if (label == v).any()]
        if not present:
            assert row["seg"] is None and row["status"] == "no foreground"
            continue
        seg = hd.seg.segread(out_dir / row["seg"])
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uid
        assert [d.SegmentLabel for d in seg.SegmentSequence] == [SEG_CLASSES[v] for v in present]
        assert all(d.SegmentAlgorithmType == "AUTOMATIC" for d in seg.SegmentSequence)
        algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("medsegllm", medsegllm.__version__)
        expected_frames = sum(int((label == v).any(axis=(0, 1)).sum()) for v in present)
        assert seg.NumberOfFrames == expected_frames == row["n_frames"]
        assert row["slices_per_s"] > 0 and row["seconds"] > 0
    written = {p.name for p in out_dir.iterdir()}
    assert not any(uid in name for name in written for uid in sources)  # names carry pseudonyms only
    saved = json.loads((out_dir / "segment_summary.json").read_text())
    assert saved["n_series"] == summary["n_series"] and saved["seconds"] > 0


def test_cohort_checkpoint(checkpoint: Path, cohort: Path, tmp_path: Path):
    out = tmp_path / "out"
    summary = run_segment(str(checkpoint), cohort, out, Params(), SALT)
    _check_outputs(summary, cohort, out)
    assert summary["n_quarantined_files"] == 0 and summary["n_failed_series"] == 0
    assert summary["n_skipped_files"] == 2  # the cohort's reference SEGs are inputs, not images
    assert {r["modality"] for r in summary["series"]} == {"CT", "MR"}


def test_device_ids_are_ingests_with_station_tokens(checkpoint: Path, cohort: Path, tmp_path: Path):
    """With ingest.device_station, a scanner seen in training must keep its station-token id at inference."""
    from medsegllm.ingest.run import run_ingest

    params = Params.model_validate({"ingest": {"device_station": True}})
    ingested = run_ingest(cohort, tmp_path / "ingested", params.ingest, SALT)
    assert ingested["n_series"] > 0
    manifest = pq.read_table(tmp_path / "ingested" / "manifest.parquet").to_pylist()
    expected = {row["series_id"]: row["device_id"] for row in manifest}
    assert all("_st" in device for device in expected.values())  # the demo's scanners all name a station
    summary = run_segment(str(checkpoint), cohort, tmp_path / "out", params, SALT)
    assert {r["series_id"]: r["device_id"] for r in summary["series"]} == expected


def test_real_ct(checkpoint: Path, tmp_path: Path):
    out = tmp_path / "out"
    summary = run_segment(str(checkpoint), REAL_CT, out, Params(), SALT)
    assert summary["n_series"] == 1 and summary["series"][0]["shape"] == [512, 512, 3]
    _check_outputs(summary, REAL_CT, out)


def test_forced_labels_bad_files_and_empty_series(checkpoint: Path, tmp_path: Path, monkeypatch):
    """A known prediction checks frame counts exactly; junk is quarantined; all-background gets no SEG."""
    data = tmp_path / "in"
    shutil.copytree(REAL_CT, data / "ct")
    (data / "notes.txt").write_text("not dicom")
    first = sorted((data / "ct").iterdir())[0].read_bytes()
    (data / "broken" / "x.dcm").parent.mkdir()
    (data / "broken" / "x.dcm").write_bytes(first[: len(first) // 2])  # same series, truncated pixels

    mirrored: list[bool] = []

    def lesion_in_liver_on_middle_slice(model, volume, device_id, mirror):
        """Liver on the middle slice with a lesion inside it: big enough and in an organ, so post-processing keeps it."""
        mirrored.append(mirror)
        probs = np.zeros((len(SEG_CLASSES), *volume.shape), dtype=np.float32)
        probs[0] = 1.0
        z, (nx, ny) = volume.shape[2] // 2, volume.shape[:2]
        probs[0, :, :, z] = 0.0
        probs[SEG_CLASSES.index("liver"), :, :, z] = 1.0
        probs[SEG_CLASSES.index("lesion"), nx // 4 : 3 * nx // 4, ny // 4 : 3 * ny // 4, z] = 2.0
        return probs

    monkeypatch.setattr(segment_run, "predict_volume", lesion_in_liver_on_middle_slice)
    summary = run_segment(str(checkpoint), data, tmp_path / "bad", Params(), SALT)
    reasons = {r["path"]: r["reason"] for r in pq.read_table(tmp_path / "bad" / "quarantine.parquet").to_pylist()}
    named = {"notes.txt", "broken/x.dcm", "ct/01.dcm", "ct/02.dcm", "ct/03.dcm"}
    assert summary["n_series"] == 0 and set(reasons) == {pseudonymize_path(p, SALT) for p in named}  # no real path written

    summary = run_segment(str(checkpoint), REAL_CT, tmp_path / "forced", Params(), SALT)
    row = summary["series"][0]
    assert row["segments"] == ["liver", "lesion"] and row["n_frames"] >= 2
    assert mirrored == [True] and summary["mirror"] is True  # the model's train.inference.mirror (default on)
    _check_outputs(summary, REAL_CT, tmp_path / "forced")
    assert run_segment(str(checkpoint), REAL_CT, tmp_path / "plain", Params(), SALT, mirror=False)["mirror"] is False
    assert mirrored == [True, False]  # `segment --no-mirror` overrides it

    monkeypatch.setattr(segment_run, "predict_volume", lambda m, v, d, mirror: np.stack([np.ones_like(v), *[np.zeros_like(v)] * 3]))
    summary = run_segment(str(checkpoint), REAL_CT, tmp_path / "empty", Params(), SALT)
    assert summary["n_no_foreground"] == 1 and summary["n_seg"] == 0
    assert not list((tmp_path / "empty").glob("*.seg.dcm"))


def test_to_source_grid_inverts_harmonization():
    """LPS-stored source at the target spacing: harmonize (reorient to RAS) then back is exact."""
    rng = np.random.default_rng(0)
    label = rng.integers(0, 4, size=(10, 12, 6)).astype(np.uint8)
    affine = np.array([[-4.0, 0, 0, 30], [0, -4.0, 0, 20], [0, 0, 5.0, -10], [0, 0, 0, 1]])
    grid, grid_affine = harmonize_label(label, affine, IngestParams())
    np.testing.assert_array_equal(to_source_grid(grid, grid_affine, label.shape, affine), label)


def test_cli_prints_latency_and_uses_monai_sliding_window(checkpoint: Path, tmp_path: Path, monkeypatch):
    from medsegllm.model import inference

    calls = []
    real = inference.sliding_window_inference

    def spy(inputs, roi_size, *args, **kwargs):
        calls.append(tuple(roi_size))
        return real(inputs, roi_size, *args, **kwargs)

    monkeypatch.setattr(inference, "sliding_window_inference", spy)
    monkeypatch.setenv("MEDSEGLLM_SALT", SALT)
    result = CliRunner().invoke(app, ["segment", "--model", str(checkpoint), "--input", str(REAL_CT),
                                      "--out", str(tmp_path / "out"), "--params", str(tmp_path / "none.yaml")])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["latency_s_per_series"] > 0 and summary["predict_slices_per_s"] >= summary["slices_per_s"] > 0
    assert f"{summary['n_slices']} slices" in result.stderr and "slices/s" in result.stderr and "latency" in result.stderr
    assert calls and set(calls) == {(64, 64)}  # the 512x512 slices are windowed at the model's ROI


def test_cli_compile_falls_back_to_eager_with_the_reason(checkpoint: Path, tmp_path: Path, monkeypatch, caplog):
    from medsegllm.model import compiled

    monkeypatch.setattr(compiled, "compile_blocker", lambda device: "no C++ compiler for inductor (test)")
    monkeypatch.setenv("MEDSEGLLM_SALT", SALT)
    with caplog.at_level(logging.WARNING, logger="medsegllm.segment.run"):
        result = CliRunner().invoke(app, ["segment", "--model", str(checkpoint), "--input", str(REAL_CT), "--compile",
                                          "--out", str(tmp_path / "out"), "--params", str(tmp_path / "none.yaml")])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["compiled"] is False and summary["not_compiled_because"] == "no C++ compiler for inductor (test)"
    assert summary["n_series"] == 1 and "compile" not in result.stderr.split("model load")[1]
    assert "segment --compile: no C++ compiler for inductor (test); running eagerly" in caplog.text


def test_model_with_other_classes_is_refused(tmp_path: Path):
    from medsegllm.model.checkpoint import model_meta, save_checkpoint

    model = _tiny_model()
    other = save_checkpoint(tmp_path / "model.pt", model, model_meta(model, ["background", "spleen", "kidney", "lesion"]))
    with pytest.raises(ModelUnavailable, match="knowledge base"):
        run_segment(str(other), REAL_CT, tmp_path / "out", Params(), SALT)


def test_cli_help():
    result = CliRunner().invoke(app, ["segment", "--help"])
    assert result.exit_code == 0 and "--model" in result.output and "champion" in result.output


def test_mlflow_champion_uri(tmp_path: Path, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    from medsegllm.register.export import ExportedSegmenter
    from medsegllm.register.run import tracking_uri_set

    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    model = _tiny_model().eval()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("segment-test", artifact_location=(tmp_path / "artifacts").as_uri())
    with tracking_uri_set(uri), mlflow.start_run(experiment_id=experiment):
        info = mlflow.pytorch.log_model(ExportedSegmenter(model), name="model", serialization_format="pickle",
                                        pip_requirements=["torch"], registered_model_name="medsegllm")
    client.set_registered_model_alias("medsegllm", "champion", str(info.registered_model_version))

    params = Params.model_validate({"register": {"tracking_uri": uri}})
    network, meta = load_segmenter("models:/medsegllm@champion", params)
    assert meta["device_ids"] == ["siemens_somatom_force"]
    for name, value in model.state_dict().items():
        torch.testing.assert_close(network.state_dict()[name], value)
    summary = run_segment("models:/medsegllm@champion", REAL_CT, tmp_path / "out", params, SALT)
    assert summary["n_series"] == 1 and (tmp_path / "out" / summary["series"][0]["nifti"]).exists()
    with pytest.raises(ModelUnavailable, match="does not exist"):
        load_segmenter(str(tmp_path / "missing.pt"), params)


def test_mr_series_reach_the_model_as_ingest_wrote_them(cohort: Path, tmp_path: Path, monkeypatch):
    """The model's MR standardization (ingest's maps, in its metadata) is applied at inference, so
    `segment` feeds the network exactly the volume training and validation saw for that series."""
    from medsegllm.ingest.run import run_ingest
    from medsegllm.ingest.standardize import STANDARDIZATION_FILE
    from medsegllm.model.checkpoint import model_meta, save_checkpoint

    params = Params.model_validate({"split": {"holdout_devices": []}})
    ingested = tmp_path / "ingested"
    run_ingest(cohort, ingested, params.ingest, SALT, holdout_devices=[])
    standardization = json.loads((ingested / STANDARDIZATION_FILE).read_text())
    manifest = pq.read_table(ingested / "manifest.parquet").to_pandas()
    mr = manifest[manifest["modality"] == "MR"]
    assert len(mr) and standardization["standard_scale"] is not None
    assert any(row["mr_map"] is not None for _, row in mr.iterrows())  # the maps are not the identity
    model = _tiny_model()
    checkpoint = save_checkpoint(tmp_path / "model.pt", model, model_meta(
        model, list(SEG_CLASSES), {"mr_standardization": standardization}))
    seen = {}
    real = segment_run.predict_volume

    def spy(net, volume, device_id, *args, **kwargs):
        seen[len(seen)] = (device_id, volume.copy())
        return real(net, volume, device_id, *args, **kwargs)

    monkeypatch.setattr(segment_run, "predict_volume", spy)
    summary = run_segment(str(checkpoint), cohort, tmp_path / "out", params, SALT)
    inputs = {row["series_id"]: seen[i][1] for i, row in enumerate(summary["series"])}
    for _, row in mr.iterrows():
        expected, _ = load_nifti(ingested / row["volume_path"])
        np.testing.assert_allclose(inputs[row["series_id"]], expected, atol=1e-5)


def test_enhanced_multiframe_source_gets_a_seg_on_its_frames(checkpoint: Path, cohort: Path, tmp_path: Path, monkeypatch):
    """A Legacy Converted Enhanced CT (one file, frames in reverse position order) gets the same label
    map as its classic slices, and a SEG whose frames reference the source frames they were drawn on."""
    from highdicom.legacy import LegacyConvertedEnhancedCTImage

    classic = next(files for files in _source_series(cohort).values() if files[0].Modality == "CT")
    classic = sorted(classic, key=lambda ds: -float(ds.ImagePositionPatient[2]))  # frames from head to foot
    enhanced = LegacyConvertedEnhancedCTImage(classic, series_instance_uid=hd.UID(), series_number=99,
                                              sop_instance_uid=hd.UID(), instance_number=1)
    (tmp_path / "enhanced").mkdir()
    enhanced.save_as(tmp_path / "enhanced" / "ct.dcm")
    (tmp_path / "classic").mkdir()
    for n, ds in enumerate(classic):
        ds.save_as(tmp_path / "classic" / f"{n}.dcm")

    def liver_on_two_slices(model, volume, device_id, mirror):  # two, so the SEG has several frames at any slice thickness
        probs = np.zeros((len(SEG_CLASSES), *volume.shape), dtype=np.float32)
        probs[0] = 1.0
        z = volume.shape[2] // 3
        probs[SEG_CLASSES.index("liver"), 10:30, 15:40, z:z + 2] = 2.0
        return probs

    monkeypatch.setattr(segment_run, "predict_volume", liver_on_two_slices)
    rows = {}
    for name in ("classic", "enhanced"):
        summary = run_segment(str(checkpoint), tmp_path / name, tmp_path / f"out_{name}", Params(), SALT)
        assert summary["n_series"] == 1 and summary["n_failed_series"] == 0, name
        rows[name] = summary["series"][0]
    label, _ = load_nifti(tmp_path / "out_enhanced" / rows["enhanced"]["nifti"])
    np.testing.assert_array_equal(label, load_nifti(tmp_path / "out_classic" / rows["classic"]["nifti"])[0])
    labelled = np.flatnonzero(label.any(axis=(0, 1)))  # source slices (position order) the liver reaches
    seg = hd.seg.segread(tmp_path / "out_enhanced" / rows["enhanced"]["seg"])
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == enhanced.SeriesInstanceUID
    assert seg.NumberOfFrames == len(labelled) > 1
    frames = seg.pixel_array.reshape(seg.NumberOfFrames, seg.Rows, seg.Columns)  # pydicom drops the axis of one frame
    seen = []
    for i, group in enumerate(seg.PerFrameFunctionalGroupsSequence):
        source = group.DerivationImageSequence[0].SourceImageSequence[0]
        assert source.ReferencedSOPInstanceUID == enhanced.SOPInstanceUID
        z = len(classic) - int(source.ReferencedFrameNumber)  # 1-based frames run against position order
        np.testing.assert_array_equal(frames[i].astype(bool), label[:, :, z].T == SEG_CLASSES.index("liver"))
        seen.append(z)
    assert sorted(seen) == list(labelled)


def _two_echo_object(cohort: Path) -> tuple[pydicom.Dataset, list[pydicom.Dataset]]:
    """A demo MR series as one Enhanced MR object holding two echoes (5 and 10 ms) at the same positions,
    and the per-frame items of one echo."""
    from highdicom.legacy import LegacyConvertedEnhancedMRImage

    classic = sorted(next(files for files in _source_series(cohort).values() if files[0].Modality == "MR"),
                     key=lambda ds: float(ds.ImagePositionPatient[2]))
    enhanced = LegacyConvertedEnhancedMRImage(classic, series_instance_uid=hd.UID(), series_number=99,
                                              sop_instance_uid=hd.UID(), instance_number=1)
    frames = list(enhanced.PerFrameFunctionalGroupsSequence)
    doubled = [copy.deepcopy(item) for _ in range(2) for item in frames]
    for n, item in enumerate(doubled):
        echo = pydicom.Dataset()
        echo.EffectiveEchoTime = 5.0 if n < len(frames) else 10.0
        item.MREchoSequence = pydicom.Sequence([echo])
    enhanced.PerFrameFunctionalGroupsSequence = pydicom.Sequence(doubled)
    enhanced.NumberOfFrames = len(doubled)
    enhanced.PixelData = enhanced.PixelData * 2
    return enhanced, frames


def _liver_on_one_slice(model, volume, device_id, mirror):
    probs = np.zeros((len(SEG_CLASSES), *volume.shape), dtype=np.float32)
    probs[0] = 1.0
    probs[SEG_CLASSES.index("liver"), 10:30, 15:40, volume.shape[2] // 3] = 2.0
    return probs


def test_failing_echo_is_quarantined_by_name_and_the_other_segmented(cohort: Path, checkpoint: Path, tmp_path: Path,
                                                                     monkeypatch):
    enhanced, frames = _two_echo_object(cohort)
    tilted = enhanced.PerFrameFunctionalGroupsSequence[len(frames) + 2]  # a frame of echo 2
    tilted.PlaneOrientationSequence = copy.deepcopy(enhanced.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence)
    tilted.PlaneOrientationSequence[0].ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    (tmp_path / "in").mkdir()
    enhanced.save_as(tmp_path / "in" / "echoes.dcm")
    monkeypatch.setattr(segment_run, "predict_volume", _liver_on_one_slice)
    summary = run_segment(str(checkpoint), tmp_path / "in", tmp_path / "out", Params(), SALT)
    uid = str(enhanced.SeriesInstanceUID)
    assert [row["series_id"] for row in summary["series"]] == [pseudonym(f"{uid}#echo=1", SALT)]
    assert summary["series"][0]["status"] == "ok" and summary["n_quarantined_files"] == 1
    [row] = pq.read_table(tmp_path / "out" / "quarantine.parquet").to_pylist()
    assert row["reason"] == "volume echo=2: inconsistent ImageOrientationPatient within series"


def test_enhanced_object_with_two_echoes_gets_one_series_and_seg_per_echo(checkpoint: Path, cohort: Path, tmp_path: Path,
                                                                          monkeypatch):
    """An Enhanced MR holding two echoes is read as two series, as ingest splits it; each SEG covers
    every frame at the labelled position, both echoes' (a SEG on a multi-frame image has one plane per
    source frame, and the echoes show the same anatomy)."""
    enhanced, frames = _two_echo_object(cohort)
    (tmp_path / "in").mkdir()
    enhanced.save_as(tmp_path / "in" / "echoes.dcm")
    monkeypatch.setattr(segment_run, "predict_volume", _liver_on_one_slice)
    summary = run_segment(str(checkpoint), tmp_path / "in", tmp_path / "out", Params(), SALT)
    assert summary["n_series"] == 2 and summary["n_failed_series"] == 0 and summary["n_quarantined_files"] == 0
    uid = str(enhanced.SeriesInstanceUID)
    assert {row["series_id"] for row in summary["series"]} == {pseudonym(f"{uid}#echo={e}", SALT) for e in (1, 2)}
    frame_positions = np.array([item.PlanePositionSequence[0].ImagePositionPatient for item in frames], dtype=float)
    for row in summary["series"]:
        label, affine = load_nifti(tmp_path / "out" / row["nifti"])
        seg = hd.seg.segread(tmp_path / "out" / row["seg"])
        labelled = np.flatnonzero(label.any(axis=(0, 1)))
        assert seg.NumberOfFrames == len(labelled) > 0
        planes = seg.pixel_array.reshape(seg.NumberOfFrames, seg.Rows, seg.Columns).astype(bool)
        slice_positions = [(affine @ [0.0, 0.0, k, 1.0])[:3] * [-1, -1, 1] for k in range(label.shape[2])]  # RAS -> LPS
        for plane, group in zip(planes, seg.PerFrameFunctionalGroupsSequence):
            position = np.array(group.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
            frame = int(np.argmin(np.abs(frame_positions - position).sum(axis=1)))  # the source frame there, echo 1
            np.testing.assert_allclose(frame_positions[frame], position, atol=1e-3)
            referenced = sorted(int(source.ReferencedFrameNumber)
                                for source in group.DerivationImageSequence[0].SourceImageSequence)
            assert referenced == [frame + 1, frame + 1 + len(frames)]  # both echoes' frames at that position
            z = int(np.argmin([np.abs(p - position).sum() for p in slice_positions]))  # the label's slice there
            assert z in labelled
            np.testing.assert_array_equal(plane, label[:, :, z].T > 0)


def _organs_without_lesions(model, volume, device_id, mirror):
    """A network that finds a liver and a kidney but no lesion, as the demo's CPU-trained model does."""
    x, y = volume.shape[:2]
    probs = np.zeros((len(SEG_CLASSES), *volume.shape), dtype=np.float32)
    probs[0] = 1.0
    probs[0, x // 10 : x // 2, y // 4 : 3 * y // 4] = 0.0
    probs[SEG_CLASSES.index("liver"), x // 10 : x // 2, y // 4 : 3 * y // 4] = 1.0
    return probs


def _report_lesions(cohort: Path) -> dict[str, tuple[int, int]]:
    """(grounded lesions, liver lesions) per accession number of the cohort's reports (the reports stage's extractor)."""
    from medsegllm.reports.extract import extract_findings

    rows = [json.loads(line) for line in (cohort.parent / "reports.jsonl").read_text().splitlines()]
    found = {row["accession_number"]: extract_findings(row["report_text"]).lesions for row in rows}
    return {key: (len(lesions), sum(item["organ"] == "liver" for item in lesions)) for key, lesions in found.items()}


def test_reports_place_the_lesions_the_model_misses(checkpoint: Path, cohort: Path, tmp_path: Path, monkeypatch):
    """`--reports`: a reported study's lesions appear in its label map and SEG, a lesion-free report's
    series gets none, and a report keyed by StudyInstanceUID finds its series as well as one keyed by
    AccessionNumber; without reports the same model's maps hold no lesion."""
    monkeypatch.setattr(segment_run, "predict_volume", _organs_without_lesions)
    lesion = SEG_CLASSES.index("lesion")
    expected = _report_lesions(cohort)
    assert {liver > 0 for _, liver in expected.values()} == {True, False}  # the cohort has both kinds of study
    accession_of = {pseudonym(uid, SALT): str(datasets[0].AccessionNumber) for uid, datasets in _source_series(cohort).items()}

    plain = run_segment(str(checkpoint), cohort, tmp_path / "plain", Params(), SALT)
    assert plain["n_report_guided"] == 0 and all(r["report_lesions"] is None for r in plain["series"])
    for row in plain["series"]:
        assert not (load_nifti(tmp_path / "plain" / row["nifti"])[0] == lesion).any()

    by_study = tmp_path / "by_study.jsonl"
    study_of = {str(ds[0].AccessionNumber): str(ds[0].StudyInstanceUID) for ds in _source_series(cohort).values()}
    by_study.write_text("".join(json.dumps({"study_instance_uid": study_of[row["accession_number"]],
                                            "report_text": row["report_text"]}) + "\n"
                                for row in map(json.loads, (cohort.parent / "reports.jsonl").read_text().splitlines())
                                if row["accession_number"] in study_of))
    for reports in (cohort.parent / "reports.jsonl", by_study):
        out = tmp_path / reports.stem
        summary = run_segment(str(checkpoint), cohort, out, Params(), SALT, reports=reports)
        assert summary["n_report_guided"] == summary["n_series"] > 0
        for row in summary["series"]:
            n_reported, n_liver = expected[accession_of[row["series_id"]]]
            assert row["report_lesions"] == n_reported
            label = load_nifti(out / row["nifti"])[0]
            assert (label == lesion).any() == (n_liver > 0), row["series_id"]  # the stand-in network finds no kidney
            if n_liver:
                assert "lesion" in row["segments"]  # the SEG carries it too


def test_cli_refuses_unreadable_reports(checkpoint: Path, cohort: Path, tmp_path: Path):
    missing = CliRunner().invoke(app, ["segment", "--model", str(checkpoint), "--input", str(cohort), "--out",
                                       str(tmp_path / "out"), "--reports", str(tmp_path / "none.jsonl")])
    assert missing.exit_code == 1 and "not found" in missing.output
    keyless = tmp_path / "keyless.jsonl"
    keyless.write_text(json.dumps({"report_text": "Liver: a 20 mm metastasis."}) + "\n")
    bad = CliRunner().invoke(app, ["segment", "--model", str(checkpoint), "--input", str(cohort), "--out",
                                   str(tmp_path / "out2"), "--reports", str(keyless)])
    assert bad.exit_code == 1 and "accession_number" in bad.output
    assert not (tmp_path / "out2" / "segment_summary.json").exists()
