"""One series, end to end: decode, assemble, harmonize, attach SEG labels, write outputs.

Runs in a worker process; it receives file paths and pseudonyms only, and returns a manifest row
or quarantine reasons, so a bad series never stops the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom

from medsegllm.common.io import save_nifti
from medsegllm.config import IngestParams
from medsegllm.ingest.frames import frame_pixels, frame_views, is_multiframe
from medsegllm.ingest.geometry import SeriesError, Volume, build_volume, pixels, rescale_into, slice_geometry, slice_normal
from medsegllm.ingest.harmonize import harmonize_label, harmonize_volume, histogram, raw_histogram
from medsegllm.ingest.pixels import NativePixels, NativeSlice, dcmread_capped, read_header, read_native
from medsegllm.ingest.rtstruct import rtstruct_label_map
from medsegllm.ingest.seg import SegError, SliceIndex, seg_label_map
from medsegllm.ingest.standardize import landmarks


@dataclass
class SeriesJob:
    files: list[Path]
    native: list[NativeSlice | None]  # the scan's slice record of each file, where it has one
    seg_files: list[Path]
    out_dir: Path
    params: IngestParams
    identity: dict[str, str]  # pseudonyms: series_id, study_id, patient_id, accession_id
    stack: str  # "" for a whole series, else which stack of a split one (scan.group_series)
    modality: str
    manufacturer: str
    model_name: str
    device_id: str
    input_hash: str
    frame_stack: str | None = None  # the volume to read from each multi-volume enhanced file (frames.frame_views)


@dataclass
class SeriesOutcome:
    row: dict | None = None
    quarantine: list[tuple[Path, str]] = field(default_factory=list)
    n_label_files: int = 0


UNREADABLE = "pixel data unreadable ({}; truncated file or unsupported transfer syntax)"


@dataclass
class _File:
    """One file whose header was read: its slices' header views and where its pixel data lies."""

    path: Path
    views: list[pydicom.Dataset]
    native: NativePixels | None


def decode_series(files: list[Path], known: Sequence[NativeSlice | None] = (), frame_stack: str | None = None
                  ) -> tuple[list[pydicom.Dataset], np.ndarray | list[np.ndarray], list[tuple[Path, str]]]:
    """One (dataset, slice) pair per slice: a classic file is one slice, an enhanced file one per frame
    (per frame of volume `frame_stack`, when the file holds several volumes).

    Headers come first: from `known` (the scan's record of each file, parallel to `files`) where
    there is one, else read here, so each file is parsed once. The datasets are then those records
    (what geometry needs, not the full header). When every file holds native pixel data on
    one grid, the slices are sorted by position right away and each goes straight into its plane of
    the volume, returned as an (N, X, Y) view with the datasets in the same order, so build_volume
    copies nothing. Otherwise every file is decoded by itself (pydicom where not native) into its
    own (X, Y) planes. Bad files come back with their quarantine reason, in input order.
    """
    readable, bad = [], []
    for path, record in zip(files, list(known) or [None] * len(files), strict=True):
        if record is not None:
            readable.append(_File(path, [record.view], record.native))
            continue
        try:
            ds, native = read_header(path)
            views = frame_views(ds, frame_stack) if is_multiframe(ds) else [ds]
            if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
                raise SeriesError("not a grayscale image")
            readable.append(_File(path, views, native if native is not None and native.shape[0] == len(views) else None))
        except Exception as exc:  # a truncated or undecodable file is quarantined, not raised
            bad.append((path, _reason(exc)))
    # Only when every file's pixel data was checked to be there: a corrupt Rows/Columns must not
    # reserve gigabytes (pydicom then fails such files one by one, as they would alone).
    views = [view for item in readable for view in item.views]
    grid = _common_grid(views) if all(item.native is not None for item in readable) else None
    if grid is None:
        datasets, slices = _decode_each(readable, bad)
    else:
        datasets, slices = _decode_sorted(readable, grid, bad)
    position = {path: i for i, path in enumerate(files)}
    bad.sort(key=lambda entry: position[entry[0]])
    return datasets, slices, bad


def _reason(exc: Exception) -> str:
    return str(exc) if isinstance(exc, SeriesError) else UNREADABLE.format(type(exc).__name__)


def _common_grid(views: list[pydicom.Dataset]) -> tuple[int, int] | None:
    """(rows, columns) when every slice declares the same grid, else None (build_volume reports it)."""
    grids = {(int(view.Rows), int(view.Columns)) for view in views}
    return grids.pop() if len(grids) == 1 else None


def _decode_each(readable: list[_File], bad: list[tuple[Path, str]]) -> tuple[list[pydicom.Dataset], list[np.ndarray]]:
    datasets, planes, scratch = [], [], None
    for item in readable:
        try:
            decoded, scratch = _decode(item, scratch)
        except Exception as exc:  # as in decode_series
            bad.append((item.path, _reason(exc)))
            continue
        datasets += item.views
        planes += [plane.T for plane in decoded]
    return datasets, planes


def _decode_sorted(readable: list[_File], grid: tuple[int, int],
                   bad: list[tuple[Path, str]]) -> tuple[list[pydicom.Dataset], np.ndarray | list[np.ndarray]]:
    """Slices in position order, each rescaled straight into its plane of the (Z, rows, columns) volume."""
    slots = [(item, frame) for item in readable for frame in range(len(item.views))]
    try:
        order = slice_geometry([item.views[frame] for item, frame in slots])[3]
    except Exception:  # bad geometry: keep input order; build_volume raises the same error with the reason
        order = list(range(len(slots)))
    volume = np.empty((len(slots), *grid), np.float32)
    multiframe: dict[Path, np.ndarray] = {}  # the decoded frames of each enhanced file
    failed: dict[Path, str] = {}
    scratch = None
    for z, (item, frame) in enumerate(slots[i] for i in order):
        if item.path in failed:
            continue
        try:
            if len(item.views) == 1:
                scratch = _decode(item, scratch, volume[z : z + 1])[1]
            else:
                if item.path not in multiframe:
                    multiframe[item.path] = _decode(item, None)[0]
                volume[z] = multiframe[item.path][frame]
        except Exception as exc:  # as in decode_series
            failed[item.path] = _reason(exc)
    bad += failed.items()
    kept = [z for z, i in enumerate(order) if slots[i][0].path not in failed]
    datasets = [slots[order[z]][0].views[slots[order[z]][1]] for z in kept]
    if failed:  # keep datasets and slices paired (the caller rejects the series anyway)
        return datasets, [volume[z].T for z in kept]
    return datasets, volume.transpose(0, 2, 1)


def _decode(item: _File, scratch: np.ndarray | None, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """The file's rescaled float32 (frames, rows, columns), into `out` when given; native pixel data
    is read from the file through `scratch` (returned for reuse), anything else goes to pydicom."""
    native = item.native
    if native is not None:
        if scratch is None or scratch.shape != native.shape or scratch.dtype != native.dtype:
            scratch = np.empty(native.shape, native.dtype)
        if read_native(item.path, native, scratch):
            out = np.empty(native.shape, np.float32) if out is None else out
            for plane, stored, view in zip(out, scratch, item.views):
                rescale_into(plane, stored, view)
            return out, scratch
    ds = dcmread_capped(item.path, force=True)
    decoded = np.stack([xy.T for xy in (frame_pixels(ds, item.views) if is_multiframe(ds) else [pixels(ds)])])
    if out is not None:
        out[...] = decoded
    return (decoded if out is None else out), scratch


def slice_index(datasets: list[pydicom.Dataset], volume: Volume) -> SliceIndex:
    normal = slice_normal(datasets[0])
    ordered = [datasets[i] for i in volume.order]
    along = np.asarray([np.asarray([float(v) for v in ds.ImagePositionPatient]) @ normal for ds in ordered])
    sop_to_z = {str(ds.SOPInstanceUID): z for z, ds in enumerate(ordered) if ds.get("SOPInstanceUID")}
    return SliceIndex(sop_to_z, along, normal, volume.array.shape, volume.affine)


def name_volume(frame_stack: str | None, rows: list[tuple[Path, str]]) -> list[tuple[Path, str]]:
    """Quarantine rows of one volume of an enhanced object that holds several say which volume failed
    (its other volumes may be fine, and the file has one row that joins the reasons)."""
    return rows if frame_stack is None else [(path, f"volume {frame_stack}: {why}") for path, why in rows]


def _reject(job: SeriesJob, reason: str, specific: list[tuple[Path, str]] = ()) -> SeriesOutcome:
    named = {path for path, _ in specific}
    rows = name_volume(job.frame_stack, list(specific) + [(p, reason) for p in job.files if p not in named])
    rows += [(p, "label object (SEG/RTSTRUCT) references a quarantined series") for p in job.seg_files]
    return SeriesOutcome(quarantine=rows)


def process_series(job: SeriesJob) -> SeriesOutcome:
    """Build, harmonize and write one series and its labels; quarantine it whole if its geometry fails."""
    datasets, slices, bad = decode_series(job.files, job.native, job.frame_stack)
    if bad:
        return _reject(job, "series contains an unreadable file", bad)
    try:
        volume = build_volume(datasets, slices)
    except SeriesError as exc:
        return _reject(job, str(exc))
    except Exception as exc:  # a geometry value of the wrong type or an undecodable VR (pydicom raises many kinds)
        return _reject(job, f"malformed geometry attributes ({type(exc).__name__})")
    params = job.params
    series_id = job.identity["series_id"]
    harmonized, affine = harmonize_volume(volume.array, volume.affine, job.modality, params)
    volume_path = f"volumes/{series_id}.nii.gz"
    save_nifti(job.out_dir / volume_path, harmonized, affine)
    outcome = SeriesOutcome()
    label = _labels(job, datasets, volume, outcome)
    label_path = None
    if label is not None:
        label_grid, label_affine = harmonize_label(label, volume.affine, params)
        if label_grid.shape != harmonized.shape or not np.allclose(label_affine, affine, atol=1e-4):
            raise AssertionError("label and volume grids differ after harmonization")
        label_path = f"labels/{series_id}.nii.gz"
        save_nifti(job.out_dir / label_path, label_grid, affine)
    outcome.row = {
        **job.identity,
        "stack_label": job.stack,
        "modality": job.modality,
        "device_id": job.device_id,
        "manufacturer": job.manufacturer,
        "model_name": job.model_name,
        "n_slices": int(volume.array.shape[2]),
        "source_spacing": [float(s) for s in volume.spacing],
        "shape": [int(s) for s in harmonized.shape],
        "spacing": [float(s) for s in params.target_spacing],
        "volume_path": volume_path,
        "label_path": label_path,
        "has_label": label_path is not None,
        "input_hash": job.input_hash,
        "raw_histogram": raw_histogram(volume.array, job.modality, params.histogram_bins).tolist(),
        "histogram": histogram(harmonized, (0.0, 1.0), params.histogram_bins).tolist(),
        "mr_landmarks": landmarks(harmonized, params.mr_standardization.landmarks) if job.modality == "MR" else None,
        "mr_map": None,  # set by the standardization pass over all series (ingest/standardize.py)
    }
    return outcome


def _labels(job: SeriesJob, datasets: list[pydicom.Dataset], volume: Volume, outcome: SeriesOutcome) -> np.ndarray | None:
    """Merge every SEG and RTSTRUCT of the series; the class order of SEG_CLASSES makes the maximum the override."""
    if not job.seg_files:
        return None
    index = slice_index(datasets, volume)
    merged = None
    for path in job.seg_files:
        kind = "label object"
        try:
            ds = dcmread_capped(path, force=True)
            kind = "RTSTRUCT" if str(ds.get("Modality", "")).strip().upper() == "RTSTRUCT" else "SEG"
            label = rtstruct_label_map(ds, index) if kind == "RTSTRUCT" else seg_label_map(ds, index)
        except Exception as exc:  # a bad label object loses its label, not the series
            outcome.quarantine.append((path, f"{kind} not usable: {exc if isinstance(exc, SegError) else type(exc).__name__}"))
            continue
        outcome.n_label_files += 1
        merged = label if merged is None else np.maximum(merged, label)
    return merged
