"""Segmentation metrics per series and their aggregation with bootstrap confidence intervals.

A class absent from both reference and prediction carries no information about the model, so its
Dice is NaN (left out of means) rather than a flattering 1.0.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance
from scipy import ndimage

from medsegllm.model.postprocess import equivalent_diameter_mm


def one_hot(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """A label map (X,Y,Z) as a one-hot batch (1,C,X,Y,Z), the layout MONAI metrics expect."""
    tensor = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    return torch.nn.functional.one_hot(tensor, n_classes).movedim(-1, 0).unsqueeze(0).float()


def dice_per_class(pred: np.ndarray, ref: np.ndarray, n_classes: int) -> np.ndarray:
    """Dice of each foreground class; NaN where the class is absent in both label maps."""
    p, r = one_hot(pred, n_classes), one_hot(ref, n_classes)
    dice = compute_dice(p, r, include_background=False, ignore_empty=False)[0].numpy().astype(float)
    both_empty = (p[0, 1:].flatten(1).sum(1) == 0) & (r[0, 1:].flatten(1).sum(1) == 0)
    dice[both_empty.numpy()] = np.nan
    return dice


def hd95_per_class(pred: np.ndarray, ref: np.ndarray, n_classes: int, spacing: tuple[float, ...]) -> np.ndarray:
    """95th-percentile Hausdorff distance in mm per foreground class; NaN when either side is empty."""
    p, r = one_hot(pred, n_classes), one_hot(ref, n_classes)
    empty = ((p[0, 1:].flatten(1).sum(1) == 0) | (r[0, 1:].flatten(1).sum(1) == 0)).numpy()
    if empty.all():
        return np.full(n_classes - 1, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns about the empty classes we mask below
        hd = compute_hausdorff_distance(p, r, include_background=False, percentile=95, spacing=list(spacing))
    hd = hd[0].numpy().astype(float)
    hd[empty | ~np.isfinite(hd)] = np.nan
    return hd


def lesion_table(pred_mask: np.ndarray, ref_mask: np.ndarray, spacing: tuple[float, ...]) -> tuple[list[dict], int]:
    """(one row per reference lesion, number of false-positive predicted lesions).

    Lesions are 26-connected components. A reference lesion counts as detected if any predicted
    voxel overlaps it; its size is the diameter of the sphere of equal volume, in mm, so it is
    comparable across voxel spacings (and cannot fall below one voxel's worth).
    """
    structure = np.ones((3,) * np.ndim(ref_mask), dtype=bool)
    pred_mask, ref_mask = np.asarray(pred_mask, dtype=bool), np.asarray(ref_mask, dtype=bool)
    ref_labels, n_ref = ndimage.label(ref_mask, structure)
    pred_labels, n_pred = ndimage.label(pred_mask, structure)
    voxel_mm3 = float(np.prod(spacing))
    sizes = ndimage.sum_labels(ref_mask, ref_labels, index=np.arange(1, n_ref + 1)) if n_ref else np.zeros(0)
    hit = set(np.unique(ref_labels[pred_mask & (ref_labels > 0)]).tolist())
    rows = [
        {"volume_mm3": float(n) * voxel_mm3, "diameter_mm": equivalent_diameter_mm(float(n) * voxel_mm3), "detected": k in hit}
        for k, n in enumerate(sizes, start=1)
    ]
    true_pred = np.unique(pred_labels[ref_mask & (pred_labels > 0)])
    return rows, int(n_pred - true_pred.size)


def size_bin_labels(edges: list[float]) -> list[str]:
    """Readable names of the half-open size bins [e0, e1), ..., [ek, inf)."""
    bounds = [*edges, float("inf")]
    return [f"{lo:g}-{hi:g} mm" if np.isfinite(hi) else f">={lo:g} mm" for lo, hi in zip(bounds[:-1], bounds[1:])]


def sensitivity_by_size(lesions: pd.DataFrame, edges: list[float]) -> pd.DataFrame:
    """Per lesion-size bin: lesions, detected, sensitivity and its Wilson 95 % interval."""
    from scipy.stats import binomtest

    names = size_bin_labels(edges)
    which = np.digitize(lesions["diameter_mm"].to_numpy(dtype=float), edges) - 1 if len(lesions) else np.zeros(0, int)
    records = []
    for k, name in enumerate(names):
        detected = lesions["detected"].to_numpy(dtype=bool)[which == k] if len(lesions) else np.zeros(0, bool)
        n, hits = int(detected.size), int(detected.sum())
        low, high = binomtest(hits, n).proportion_ci(method="wilson") if n else (float("nan"), float("nan"))
        records.append({"size_bin": name, "lesions": n, "detected": hits,
                        "sensitivity": hits / n if n else float("nan"), "ci_low": float(low), "ci_high": float(high)})
    return pd.DataFrame.from_records(records)


def cohen_kappa(a: np.ndarray, b: np.ndarray) -> float:
    """Agreement of two binary raters beyond chance (scikit-learn); NaN when it is undefined."""
    from sklearn.metrics import cohen_kappa_score

    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.size == 0:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns when both raters give one label only
        return float(cohen_kappa_score(a, b, labels=[False, True], replace_undefined_by=np.nan))


def kappa_ci(a: np.ndarray, b: np.ndarray, n_resamples: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of Cohen's kappa over the rated units (studies)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.size < 2 or n_resamples == 0:
        point = cohen_kappa(a, b)
        return point, point
    idx = np.random.default_rng(seed).integers(0, a.size, size=(n_resamples, a.size))
    values = np.array([cohen_kappa(a[i], b[i]) for i in idx])
    values = values[np.isfinite(values)]
    if not values.size:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def nanmean(values: np.ndarray) -> float:
    """Mean of the finite entries; NaN (not a warning) when there are none."""
    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def bootstrap_ci(
    rows: np.ndarray, n_resamples: int, seed: int, groups: np.ndarray | None = None, level: float = 0.95
) -> tuple[float, float]:
    """Percentile CI of the mean of all finite entries, resampling clusters with replacement.

    Rows are series and columns classes; `groups` (one study id per row) makes the study the
    resampled unit, since series of one study are not independent. Without it each row is a unit.
    """
    rows = np.asarray(rows, dtype=float).reshape(len(rows), -1)
    if len(rows) == 0 or not np.isfinite(rows).any():
        return float("nan"), float("nan")
    _, cluster = np.unique(np.arange(len(rows)) if groups is None else np.asarray(groups), return_inverse=True)
    finite = np.isfinite(rows)
    sums = np.bincount(cluster, weights=np.where(finite, rows, 0.0).sum(1))
    counts = np.bincount(cluster, weights=finite.sum(1))
    if n_resamples == 0 or len(sums) == 1:
        point = nanmean(rows)
        return point, point
    idx = np.random.default_rng(seed).integers(0, len(sums), size=(n_resamples, len(sums)))
    total, n = sums[idx].sum(1), counts[idx].sum(1)
    means = total[n > 0] / n[n > 0]
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def aggregate(per_series: pd.DataFrame, by: str, classes: list[str], n_resamples: int, seed: int) -> pd.DataFrame:
    """Per group: series and study counts, mean foreground Dice and each class's Dice with study
    bootstrap CIs, mean HD95, and lesion sensitivity."""
    dice_cols = [f"dice_{c}" for c in classes]
    hd_cols = [f"hd95_{c}" for c in classes if f"hd95_{c}" in per_series]
    records = []
    for key, group in per_series.groupby(by, sort=True):
        studies = group["study_id"].to_numpy() if "study_id" in group else None
        rows = group[dice_cols].to_numpy(dtype=float)
        low, high = bootstrap_ci(rows, n_resamples, seed, studies)
        record = {by: key, "n": len(group), "n_studies": len(set(studies)) if studies is not None else len(group),
                  "dice_mean": nanmean(rows), "ci_low": low, "ci_high": high}
        for c in classes:
            values = group[f"dice_{c}"].to_numpy(dtype=float)
            c_low, c_high = bootstrap_ci(values, n_resamples, seed, studies)
            record.update({f"dice_{c}": nanmean(values), f"dice_{c}_ci_low": c_low, f"dice_{c}_ci_high": c_high})
        record["hd95_mean"] = nanmean(group[hd_cols].to_numpy(dtype=float)) if hd_cols else float("nan")
        if "lesions" in group:
            lesions = group["lesions"].sum()
            record["lesions"] = int(lesions)
            record["lesion_sensitivity"] = group["lesions_detected"].sum() / lesions if lesions else float("nan")
        records.append(record)
    return pd.DataFrame.from_records(records)
