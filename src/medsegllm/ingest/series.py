"""One series, end to end: decode, assemble, harmonize, attach SEG labels, write outputs.

Runs in a worker process; it receives file paths and pseudonyms only, and returns a manifest row
or quarantine reasons, so a bad series never stops the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom

from medsegllm.common.io import save_nifti
from medsegllm.config import IngestParams
from medsegllm.ingest.frames import frame_pixels, frame_views, is_multiframe
from medsegllm.ingest.geometry import SeriesError, Volume, build_volume, pixels, slice_normal
from medsegllm.ingest.harmonize import harmonize_label, harmonize_volume, histogram, raw_histogram
from medsegllm.ingest.scan import dcmread_capped
from medsegllm.ingest.seg import SegError, SliceIndex, seg_label_map
from medsegllm.ingest.standardize import landmarks


@dataclass
class SeriesJob:
    files: list[Path]
    seg_files: list[Path]
    out_dir: Path
    params: IngestParams
    identity: dict[str, str]  # pseudonyms: series_id, study_id, patient_id, accession_id
    modality: str
    manufacturer: str
    model_name: str
    device_id: str
    input_hash: str


@dataclass
class SeriesOutcome:
    row: dict | None = None
    quarantine: list[tuple[Path, str]] = field(default_factory=list)
    n_label_files: int = 0


def decode_series(files: list[Path]) -> tuple[list[pydicom.Dataset], list[np.ndarray], list[tuple[Path, str]]]:
    """One (dataset, slice) pair per slice: a classic file is one slice, an enhanced file one per frame."""
    datasets, slices, bad = [], [], []
    for path in files:
        try:
            ds = dcmread_capped(path, force=True)
            if is_multiframe(ds):  # an enhanced object: its frames are the series' slices
                views = frame_views(ds)
                slices += frame_pixels(ds, views)
                datasets += views
            else:
                slices.append(pixels(ds))
                datasets.append(ds)
        except SeriesError as exc:
            bad.append((path, str(exc)))
        except Exception as exc:  # a truncated or undecodable file is quarantined, not raised
            bad.append((path, f"pixel data unreadable ({type(exc).__name__}; truncated file or unsupported transfer syntax)"))
    return datasets, slices, bad


def slice_index(datasets: list[pydicom.Dataset], volume: Volume) -> SliceIndex:
    normal = slice_normal(datasets[0])
    ordered = [datasets[i] for i in volume.order]
    along = np.asarray([np.asarray([float(v) for v in ds.ImagePositionPatient]) @ normal for ds in ordered])
    sop_to_z = {str(ds.SOPInstanceUID): z for z, ds in enumerate(ordered) if ds.get("SOPInstanceUID")}
    return SliceIndex(sop_to_z, along, normal, volume.array.shape)


def _reject(job: SeriesJob, reason: str, specific: list[tuple[Path, str]] = ()) -> SeriesOutcome:
    named = {path for path, _ in specific}
    rows = list(specific) + [(p, reason) for p in job.files if p not in named]
    rows += [(p, "SEG references a quarantined series") for p in job.seg_files]
    return SeriesOutcome(quarantine=rows)


def process_series(job: SeriesJob) -> SeriesOutcome:
    """Build, harmonize and write one series and its labels; quarantine it whole if its geometry fails."""
    datasets, slices, bad = decode_series(job.files)
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
    """Merge every SEG of the series; the class order of SEG_CLASSES makes the maximum the override."""
    if not job.seg_files:
        return None
    index = slice_index(datasets, volume)
    merged = None
    for path in job.seg_files:
        try:
            label = seg_label_map(path, index)
        except Exception as exc:  # a bad SEG loses its label, not the series
            outcome.quarantine.append((path, f"SEG not usable: {exc if isinstance(exc, SegError) else type(exc).__name__}"))
            continue
        outcome.n_label_files += 1
        merged = label if merged is None else np.maximum(merged, label)
    return merged
