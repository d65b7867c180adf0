"""Nyul-style MR histogram standardization per device, after the robust normalization.

Robust normalization already maps each series' p_low/p_high (`ingest.mr_percentiles`) to 0 and 1,
Nyul's end points. What it leaves is the shape in between: a scanner's contrast bends the
intensity profile. Each series gets landmarks (foreground percentiles, `mr_standardization.landmarks`,
foreground = voxels above 0); a device's profile is the mean of its series' landmarks; the
standard scale is the mean profile of the training devices (those not in `split.holdout_devices`,
so held-out devices stay unseen). Every device, in training or not, is mapped by the piecewise-linear
function through (0, 0), (its profile, the standard scale), (1, 1); a device never seen in training
thus gets its map from its own images' landmarks, without labels.

The map runs as a pass over the written volumes once all series are known (a device's profile
depends on all its series). Each manifest row records the map applied to its volume (`mr_map`), so
a rerun or a merge whose profiles changed inverts the old map first: the maps are strictly increasing
bijections of [0, 1].
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa

from medsegllm.common.io import load_nifti, save_nifti, write_parquet
from medsegllm.common.schemas import MANIFEST
from medsegllm.config import MRStandardizationParams
from medsegllm.ingest.harmonize import histogram

STANDARDIZATION_FILE = "mr_standardization.json"
MIN_STEP = 1e-6  # knots must be strictly increasing for the map to be invertible


def landmarks(volume: np.ndarray, percentiles: Sequence[float]) -> list[float] | None:
    """Foreground percentiles of a robust-normalized MR volume (values in [0, 1], air at 0); None without foreground."""
    foreground = volume[volume > 0]
    return [float(v) for v in np.percentile(foreground, list(percentiles))] if foreground.size else None


def knots(profile: Sequence[float]) -> np.ndarray:
    """(0, profile, 1), forced strictly increasing inside [0, 1]."""
    inner = np.clip(np.asarray(profile, dtype=np.float64), 0.0, 1.0)
    points = np.concatenate([[0.0], inner, [1.0]])
    points = np.maximum.accumulate(points) + MIN_STEP * np.arange(points.size)
    return points / points[-1]


def apply_map(volume: np.ndarray, mapping: Sequence[Sequence[float]] | None, inverse: bool = False) -> np.ndarray:
    """Apply (or invert) a map given as [[x, y], ...] knots; None is the identity."""
    if mapping is None:
        return volume
    x, y = np.asarray(mapping, dtype=np.float64).T
    if inverse:
        x, y = y, x
    return np.interp(volume, x, y).astype(np.float32)


def learn(rows: list[dict], params: MRStandardizationParams, holdout_devices: Sequence[str]) -> dict:
    """Device profiles, the standard scale of the training devices and each device's map (JSON-ready)."""
    by_device: dict[str, list[list[float]]] = defaultdict(list)
    for row in rows:
        if row["modality"] == "MR" and row.get("mr_landmarks") is not None:
            by_device[row["device_id"]].append(list(row["mr_landmarks"]))
    held_out = set(holdout_devices)
    profiles = {device: np.mean(values, axis=0) for device, values in sorted(by_device.items())}
    training = [device for device in profiles if device not in held_out]
    standard = knots(np.mean([profiles[d] for d in training], axis=0)) if training else None
    devices = {
        device: {
            "n_series": len(by_device[device]),
            "in_training": device in training,
            "landmarks": [float(v) for v in profile],
            "map": [[float(x), float(y)] for x, y in zip(knots(profile), standard)] if standard is not None else None,
        }
        for device, profile in profiles.items()
    }
    return {
        "enabled": params.enabled,
        "percentiles": list(params.landmarks),
        "training_devices": training,
        "standard_scale": [float(v) for v in standard[1:-1]] if standard is not None else None,
        "devices": devices,
        "note": None if standard is not None else "no MR series from a training device: no standard scale, maps not applied",
    }


def standardize(rows: list[dict], out_dir: Path, params: MRStandardizationParams, holdout_devices: Sequence[str],
                bins: int) -> dict:
    """Bring every MR volume under `out_dir` to its device's current map (the identity when disabled);
    update the rows' `mr_map` and `histogram` in place; return the learned model for the JSON output.

    Before a volume that already carries a map is rewritten, the manifest is rewritten without its row,
    so an interrupted pass leaves that series to be rebuilt from DICOM, never inverted with a stale map.
    """
    model = learn(rows, params, holdout_devices)
    changes = []
    for row in rows:
        device = model["devices"].get(row["device_id"]) if row["modality"] == "MR" else None
        target = device["map"] if params.enabled and device is not None else None
        if target != row.get("mr_map"):
            changes.append((row, target))
    stale = {row["series_id"] for row, _ in changes if row.get("mr_map") is not None}
    if stale:
        kept = [row for row in rows if row["series_id"] not in stale]
        write_parquet(Path(out_dir) / "manifest.parquet", pa.Table.from_pylist(kept, schema=MANIFEST))
    for row, target in changes:
        path = Path(out_dir) / row["volume_path"]
        volume, affine = load_nifti(path)
        volume = apply_map(apply_map(volume, row.get("mr_map"), inverse=True), target)
        save_nifti(path, volume, affine)
        row["mr_map"] = target
        row["histogram"] = histogram(volume, (0.0, 1.0), bins).tolist()
    return model


def load_standardization(ingest_dir: Path) -> dict | None:
    """The map ingest learned (its `mr_standardization.json`), None when ingest wrote none."""
    path = Path(ingest_dir) / STANDARDIZATION_FILE
    return json.loads(path.read_text()) if path.exists() else None


def series_map(model: dict | None, device: str, volume: np.ndarray) -> list[list[float]] | None:
    """The map ingest gave (or would give) this device's MR series, for inference on a new series.

    A device ingest learned keeps its learned map, so inference sees what training saw; a device it
    never saw is mapped from this series' own landmarks. None (identity) when disabled or unlearned.
    """
    if not model or not model.get("enabled") or model.get("standard_scale") is None:
        return None
    known = model["devices"].get(device)
    if known is not None:
        return known["map"]
    own = landmarks(volume, model["percentiles"])
    if own is None:
        return None
    standard = [0.0, *model["standard_scale"], 1.0]
    return [[float(x), float(y)] for x, y in zip(knots(own), standard)]

