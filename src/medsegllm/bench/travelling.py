"""Cross-device feature JS on travelling subjects: the same bodies scanned on every demo scanner.

The validate stage's `js_features` compares devices on whatever patients each device happened to
scan. With one to five validation series per device that figure is mostly patient sampling: two
halves of one device's series already differ by JS ~0.4 (session 13, `make run`'s model), so no
domain module can bring it down by 80 %. Harmonization studies measure scanner effects on
travelling subjects instead, and the demo can do that exactly: each synthetic subject is rendered
by every scanner under one protocol (field of view, scan range), with its own tissue values kept,
so devices differ only by their physics (calibration, noise, blur, resolution, slice thickness, MR
contrast and bias field). A second session on each scanner (new noise and bias field, same
subject) gives the test-retest floor that no model can go below.

Volumes are rendered in memory and harmonized exactly as ingest does (`harmonize_volume`, then the
cohort's MR standardization map), with no DICOM round trip: ingest's DICOM reading is tested
against dcm2niix elsewhere, and the figure here is about the model's features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from medsegllm.config import IngestParams
from medsegllm.validate.divergence import feature_js, within_device_js

PROTOCOL_FOV_MM = 320.0  # one in-plane field of view for every scanner (their own range: 310-340 mm)
PROTOCOL_RANGE_MM = 150.0  # one scan range along z, centred on the subject (theirs: 120-156 mm)
_STREAM = 0x7A5E1  # random streams of their own, apart from the cohort's


@dataclass(frozen=True)
class TravellingScan:
    subject: int
    session: int  # 0: the scan compared across devices; 1: the same-device rescan (test-retest floor)
    device_id: str
    modality: str
    volume: np.ndarray  # harmonized (X, Y, Z) in [0, 1], as ingest writes volumes


def _protocol_grid(scanner, z_mid: float):
    """The scanner's own matrix and slice thickness over the shared protocol's field of view and range."""
    from medsegllm.synth.phantom import Grid

    d = PROTOCOL_FOV_MM / scanner.matrix
    dz = scanner.slice_thickness_mm
    n = int(round(PROTOCOL_RANGE_MM / dz))
    half = (scanner.matrix - 1) / 2 * d
    return Grid((-half, -half + 7.5, z_mid - (n - 1) / 2 * dz), (d, d, dz), (scanner.matrix, scanner.matrix, n))


def travelling_scans(n_subjects: int, seed: int, ingest: IngestParams, mr_standardization: dict | None,
                     sessions: int = 2) -> list[TravellingScan]:
    """Each subject on each demo scanner, `sessions` times; tumour-free, like volunteers."""
    from medsegllm.ingest.harmonize import harmonize_volume
    from medsegllm.ingest.standardize import apply_map, series_map
    from medsegllm.synth.phantom import make_phantom, sample_anatomy
    from medsegllm.synth.render import render, to_stored
    from medsegllm.synth.scanners import SCANNERS

    scans = []
    for subject in range(n_subjects):
        anatomy = sample_anatomy(np.random.default_rng([seed, _STREAM, subject]))
        for index, scanner in enumerate(SCANNERS):
            grid = _protocol_grid(scanner, anatomy.z_mid)
            phantom = make_phantom(anatomy, grid, [])
            for session in range(sessions):
                patient = np.random.default_rng([seed, _STREAM, subject])  # same tissue values on every scan
                noise = np.random.default_rng([seed, _STREAM, subject, index, session])
                stored = to_stored(render(phantom, grid, scanner, patient, session_rng=noise), scanner)
                array = stored.astype(np.float32) - (1024.0 if scanner.modality == "CT" else 0.0)  # as ingest rescales
                volume, _ = harmonize_volume(array, grid.affine_ras(), scanner.modality, ingest)
                if scanner.modality == "MR":
                    volume = apply_map(volume, series_map(mr_standardization, scanner.device_id, volume))
                scans.append(TravellingScan(subject, session, scanner.device_id, scanner.modality, volume))
    return scans


def travelling_js(model: nn.Module, scans: list[TravellingScan]) -> dict[str, float]:
    """`js_travel`: mean pairwise feature JS between devices of one modality on the first sessions;
    `js_travel_retest`: the same measure between each device's two sessions (its floor)."""
    from medsegllm.model.inference import bottleneck_features

    by_session: dict[str, dict[int, list[np.ndarray]]] = {}
    for scan in scans:
        by_session.setdefault(scan.device_id, {}).setdefault(scan.session, []).append(
            bottleneck_features(model, scan.volume, scan.device_id))
    sessions = {device: [np.concatenate(f) for _, f in sorted(s.items())] for device, s in by_session.items()}
    modality = {scan.device_id: scan.modality for scan in scans}
    result = {"js_travel": feature_js({device: parts[0] for device, parts in sessions.items()}, modality)}
    if len({scan.session for scan in scans}) > 1:
        result["js_travel_retest"] = within_device_js(sessions)
    return result
