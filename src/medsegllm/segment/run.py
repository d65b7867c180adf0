"""`run_segment`: a trained model labels every CT/MR series of a DICOM folder; SEG + NIfTI out.

Each series goes through ingest's own code (scan, decode, geometry, harmonization), so the model
sees exactly the grid and intensities it was trained on; the label map is then resampled back to
the source slices, because a DICOM SEG must align with the images it references. Output files are
named by the salted series pseudonym only; the SEG itself references the source UIDs (it has to,
to be displayed over them), so the out folder belongs in the hospital's PACS, not in a data export.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pydicom
import torch
from scipy.ndimage import affine_transform
from torch import nn

from medsegllm.common.deid import pseudonym
from medsegllm.common.io import remove_partials, save_nifti, spacing_of, write_json, write_parquet
from medsegllm.config import Params
from medsegllm.ingest.frames import is_multiframe
from medsegllm.ingest.geometry import SeriesError, Volume, build_volume
from medsegllm.ingest.harmonize import harmonize_volume
from medsegllm.ingest.quarantine import one_row_per_file, quarantine_table
from medsegllm.ingest.identity import header_device_id
from medsegllm.ingest.scan import ImageHeader, scan
from medsegllm.ingest.stacks import group_series
from medsegllm.ingest.series import decode_series, name_volume, slice_index
from medsegllm.ingest.standardize import apply_map, series_map
from medsegllm.knowledge import SEG_CLASSES
from medsegllm.model.compiled import compile_for_inference
from medsegllm.model.inference import predict_volume, resolve_mirror
from medsegllm.model.postprocess import label_map
from medsegllm.segment.dicomseg import present_classes, write_seg
from medsegllm.segment.guided import guided_label, report_findings, series_findings
from medsegllm.segment.source import ModelUnavailable, load_segmenter

log = logging.getLogger(__name__)
NO_FOREGROUND = "no foreground"


def to_source_grid(label: np.ndarray, label_affine: np.ndarray, source_shape: tuple[int, ...], source_affine: np.ndarray) -> np.ndarray:
    """Nearest-neighbour resampling of a label map onto the source grid: the inverse of harmonization.

    Each source voxel looks up the harmonized voxel at the same RAS position; outside the
    harmonized grid is background.
    """
    source_to_label = np.linalg.inv(label_affine) @ source_affine
    resampled = affine_transform(
        label, source_to_label[:3, :3], offset=source_to_label[:3, 3], output_shape=tuple(source_shape),
        order=0, mode="constant", cval=0, prefilter=False,
    )
    return resampled.astype(np.uint8)


def segment_series(model: nn.Module, headers: list[ImageHeader], series_id: str, device: str, out_dir: Path,
                   params: Params, mr_standardization: dict | None, mirror: bool,
                   findings: dict | None = None) -> tuple[dict, list[tuple[Path, str]]]:
    """Read, harmonize, predict (with test-time mirroring if `mirror`) and write one series; (summary row,
    quarantine rows).

    With its study's report `findings`, the report places the lesions (`guided_label`). A series that
    ingest would reject is quarantined whole, with ingest's reasons.
    """
    start = time.perf_counter()
    first = headers[0]
    files = [h.path for h in headers]
    datasets, slices, bad = decode_series(files, frame_stack=first.frame_stack)
    if bad:
        named = {path for path, _ in bad}
        return {}, bad + [(p, "series contains an unreadable file") for p in files if p not in named]
    try:
        volume = build_volume(datasets, slices)
    except SeriesError as exc:
        return {}, [(p, str(exc)) for p in files]
    harmonized, affine = harmonize_volume(volume.array, volume.affine, first.modality, params.ingest)
    if first.modality == "MR":  # the training data's MR standardization (the model's metadata)
        harmonized = apply_map(harmonized, series_map(mr_standardization, device, harmonized))
    predict_start = time.perf_counter()
    probs = predict_volume(model, harmonized, device, mirror=mirror)
    predict_seconds = time.perf_counter() - predict_start
    postprocess = model.train_params.postprocess
    label = (label_map(probs, tuple(spacing_of(affine)), postprocess) if findings is None
             else guided_label(probs, harmonized, affine, findings, postprocess, params.pseudolabel))
    label = to_source_grid(label, affine, volume.array.shape, volume.affine)
    nifti = f"{series_id}.nii.gz"
    save_nifti(out_dir / nifti, label, volume.affine)
    row = {
        "series_id": series_id,
        "modality": first.modality,
        "device_id": device,
        "n_slices": int(volume.array.shape[2]),
        "shape": [int(s) for s in volume.array.shape],
        "nifti": nifti,
        "seg": None,
        "segments": [],
        "n_frames": 0,
        "status": NO_FOREGROUND,
        "report_lesions": None if findings is None else len(findings["lesions"]),
    }
    if present_classes(label):
        source, seg_label, positions = _seg_source(files, datasets, volume, label, first.frame_stack)
        seg = write_seg(out_dir / f"{series_id}.seg.dcm", seg_label, source, plane_positions=positions)
        row.update(seg=f"{series_id}.seg.dcm", status="ok", **seg)
    seconds = time.perf_counter() - start
    row.update(seconds=round(seconds, 3), predict_seconds=round(predict_seconds, 3),
               slices_per_s=round(row["n_slices"] / max(seconds, 1e-9), 2))
    return row, []


def _seg_source(files: list[Path], datasets: list[pydicom.Dataset], volume: Volume, label: np.ndarray,
                frame_stack: str | None) -> tuple[list[pydicom.Dataset], np.ndarray, list[list[float]] | None]:
    """What the SEG references, its label planes in that order, and their positions where the source's
    own cannot be used: the sorted slices of a classic series, or the frames of an enhanced
    multi-frame file (frame i of the SEG derives from frame i of the source, so the planes go back
    from position order to the file's frame order, which decode kept as each view's `frame_index`).
    For one volume (`frame_stack`) of an object that holds several (echoes at the same positions),
    the planes stay in position order at that volume's positions and
    each references every source frame there, the other volumes' too (highdicom matches them)."""
    ordered = [datasets[i] for i in volume.order]
    if len(files) > 1:
        return ordered, label, None
    source = pydicom.dcmread(files[0], stop_before_pixels=True, force=True)  # just decoded: its lengths are sane
    if not is_multiframe(source):
        return ordered, label, None
    if frame_stack is not None:
        return [source], label, [[float(v) for v in view.ImagePositionPatient] for view in ordered]
    index = slice_index(datasets, volume)
    z_of_frame = {view.frame_index: index.z_at([float(v) for v in view.ImagePositionPatient]) for view in datasets}
    if len(z_of_frame) != int(source.NumberOfFrames) or None in z_of_frame.values():  # the volume was built from these very frames
        raise AssertionError("a source frame lies on no slice of its own volume")
    return [source], label[:, :, [z_of_frame[i] for i in range(len(z_of_frame))]], None


def run_segment(model: str, input_dir: Path, out_dir: Path, params: Params, salt: str, base_dir: Path | None = None,
                compile: bool = False, mirror: bool | None = None, reports: Path | None = None) -> dict:
    """Segment every CT/MR series under `input_dir`; write `<series_id>.nii.gz`, `<series_id>.seg.dcm`,
    `quarantine.parquet` and `segment_summary.json` in `out_dir`, and return the summary.

    `model` is a checkpoint path or an MLflow URI (see `load_segmenter`). A series with no
    foreground gets its NIfTI but no SEG (a SEG needs a segment) and status "no foreground". A
    series that fails is quarantined, logged and counted, never raised, so one bad series does
    not stop the batch. SEG, RTSTRUCT and SR files in the input are skipped (counted, not segmented).
    `compile` builds the network with torch.compile first (`compile_for_inference`): for folders with
    many series, where the one-off compile pays for itself (BENCHMARKS.md, inference). `mirror` overrides
    the model's test-time mirroring (`train.inference.mirror`): off, a series predicts about 4x faster.
    With `reports` (JSONL, CSV or DICOM SR, as the reports stage reads), a series whose study has a
    report gets the report's lesions (`segment/guided.py`); its summary row says how many
    (`report_lesions`; null without a report).
    """
    start = time.perf_counter()
    input_dir, out_dir = Path(input_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_partials(out_dir)
    findings = report_findings(reports, salt) if reports is not None else {}  # unreadable reports fail before the model loads
    network, meta = load_segmenter(model, params, base_dir)
    if tuple(meta.get("classes") or SEG_CLASSES) != SEG_CLASSES:
        raise ModelUnavailable(f"{model} segments {meta['classes']}, not the knowledge base's classes {SEG_CLASSES}")
    if torch.cuda.is_available():
        network = network.to("cuda")
    load_seconds = time.perf_counter() - start
    mirror = resolve_mirror(network.train_params, mirror)
    not_compiled = compile_for_inference(network) if compile else "not asked"
    if compile and not_compiled:
        log.warning("segment --compile: %s; running eagerly", not_compiled)
    compile_seconds = time.perf_counter() - start - load_seconds
    scanned = scan(input_dir)
    series = group_series(scanned.images)
    rows, quarantine, n_failed = [], list(scanned.quarantine), 0
    for key in sorted(series):
        headers = sorted(series[key], key=lambda h: str(h.path))
        series_id = pseudonym(key, salt)
        try:
            device = header_device_id(headers[0].manufacturer, headers[0].model_name, headers[0].station,
                                      params.ingest.device_station, salt)
            row, rejected = segment_series(network, headers, series_id, device, out_dir, params, meta.get("mr_standardization"),
                                           mirror, series_findings(findings, headers[0].accession, headers[0].study_uid, salt))
        except Exception as exc:  # a failure is a property of this series; the batch goes on
            # the type only: a message or traceback may quote header values (run with -v for it)
            log.error("segment: series %s failed (%s)", series_id, type(exc).__name__)
            log.debug("segment: series %s traceback", series_id, exc_info=True)
            n_failed += 1
            row, rejected = {}, [(h.path, f"segmentation failed ({type(exc).__name__})") for h in headers]
        quarantine += name_volume(headers[0].frame_stack, rejected)  # one volume of several: say which
        if row:
            rows.append(row)
    quarantine_rows = quarantine_table(one_row_per_file(quarantine), input_dir, salt, params.ingest.pseudonymize_paths)
    write_parquet(out_dir / "quarantine.parquet", quarantine_rows)
    total = time.perf_counter() - start
    n_slices = sum(r["n_slices"] for r in rows)
    summary = {
        "model": model,
        "device": str(next(network.parameters()).device),
        "n_files": scanned.n_files,
        "n_series": len(rows),
        "n_seg": sum(r["seg"] is not None for r in rows),
        "n_no_foreground": sum(r["status"] == NO_FOREGROUND for r in rows),
        "n_reports": len(findings),
        "n_report_guided": sum(r["report_lesions"] is not None for r in rows),
        "n_failed_series": n_failed,
        "n_skipped_files": len(scanned.segs) + len(scanned.reports),
        "n_quarantined_files": quarantine_rows.num_rows,
        "n_slices": n_slices,
        "model_load_seconds": round(load_seconds, 3),
        "mirror": mirror,
        "compiled": not_compiled is None,
        "not_compiled_because": not_compiled,
        "compile_seconds": round(compile_seconds, 3),
        "seconds": round(total, 3),
        "slices_per_s": round(n_slices / max(total - load_seconds - compile_seconds, 1e-9), 2),
        "latency_s_per_series": round(float(np.mean([r["seconds"] for r in rows])), 3) if rows else None,
        "predict_slices_per_s": round(n_slices / max(sum(r["predict_seconds"] for r in rows), 1e-9), 2) if rows else None,
        "series": sorted(rows, key=lambda r: r["series_id"]),
    }
    write_json(out_dir / "segment_summary.json", summary)
    log.info("segment: %d series (%d SEG, %d without foreground), %d files quarantined, %.1f s",
             len(rows), summary["n_seg"], summary["n_no_foreground"], quarantine_rows.num_rows, total)
    return summary
