"""Cross-device Jensen-Shannon divergence of intensities and of model features.

Pairs are compared only within one modality: CT and MR intensities (and the features they
produce) differ by physics, not by scanner, and would swamp the scanner effect we measure.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd
from scipy.spatial.distance import jensenshannon

EPS = 1e-10


def js_divergence(p: np.ndarray, q: np.ndarray, eps: float = EPS) -> float:
    """JS divergence in bits (in [0, 1]) of two histograms; smoothing keeps empty bins finite."""
    p = np.asarray(p, dtype=float) + eps
    q = np.asarray(q, dtype=float) + eps
    return float(jensenshannon(p / p.sum(), q / q.sum(), base=2) ** 2)


def mean_pairwise_js(histograms_by_device: dict[str, np.ndarray], groups: dict[str, str] | None = None) -> float:
    """Mean JS over device pairs in the same group (modality); NaN when no pair exists."""
    devices = sorted(histograms_by_device)
    values = [
        js_divergence(histograms_by_device[a], histograms_by_device[b])
        for a, b in combinations(devices, 2)
        if groups is None or groups.get(a) == groups.get(b)
    ]
    return float(np.mean(values)) if values else float("nan")


def device_histograms(manifest: pd.DataFrame, column: str) -> dict[str, np.ndarray]:
    """Sum a manifest histogram column per device, so each device weighs its voxels, not its series."""
    return {
        str(device): np.sum(np.stack([np.asarray(h, dtype=float) for h in group[column]]), axis=0)
        for device, group in manifest.groupby("device_id", sort=True)
    }


def feature_js(
    features_by_device: dict[str, np.ndarray],
    groups: dict[str, str] | None = None,
    n_components: int = 4,
    bins: int = 16,
) -> float:
    """Mean pairwise JS of devices' feature distributions on the leading principal components.

    PCA is fitted on all devices pooled so every device is projected on the same axes, and each
    component is histogrammed over shared bin edges; the per-component divergences are averaged.
    """
    devices = sorted(d for d, f in features_by_device.items() if len(f))
    if len(devices) < 2:
        return float("nan")
    pooled = np.concatenate([np.asarray(features_by_device[d], dtype=float) for d in devices])
    mean = pooled.mean(axis=0)
    _, _, vt = np.linalg.svd(pooled - mean, full_matrices=False)
    axes = vt[: min(n_components, vt.shape[0])].T  # (F, k)
    projected = {d: (np.asarray(features_by_device[d], dtype=float) - mean) @ axes for d in devices}
    all_projected = (pooled - mean) @ axes
    per_component = []
    for k in range(axes.shape[1]):
        lo, hi = all_projected[:, k].min(), all_projected[:, k].max()
        edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
        hists = {d: np.histogram(projected[d][:, k], bins=edges)[0] for d in devices}
        per_component.append(mean_pairwise_js(hists, groups))
    finite = [v for v in per_component if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def within_device_js(parts_by_device: dict[str, list[np.ndarray]], **kwargs) -> float:
    """`feature_js` between parts of each device's own features (halves of its series, two sessions of the
    same subjects), never across devices: the divergence a device shows with itself. NaN without two parts."""
    parts = {f"{device}#{i}": part for device, device_parts in parts_by_device.items() for i, part in enumerate(device_parts)}
    return feature_js(parts, {key: key.rsplit("#", 1)[0] for key in parts}, **kwargs)


def split_half_js(features_by_series: dict[str, list[np.ndarray]], **kwargs) -> float:
    """`within_device_js` between two halves of each device's own series (alternate series).

    Two halves of one scanner's patients differ only by which patients they hold, so this is the
    feature JS that patient sampling alone gives on this validation set: a cross-device figure near
    it says the devices differ no more than their patients do. NaN when no device has two series.
    """
    halves = {device: [np.concatenate(series[0::2]), np.concatenate(series[1::2])]
              for device, series in features_by_series.items() if len(series) >= 2}
    return within_device_js(halves, **kwargs)
