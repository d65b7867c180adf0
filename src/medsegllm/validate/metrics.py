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


def lesion_detection(pred_mask: np.ndarray, ref_mask: np.ndarray) -> tuple[int, int]:
    """(reference lesions, detected ones): a lesion counts as found if any predicted voxel overlaps it."""
    labelled, n_ref = ndimage.label(np.asarray(ref_mask, dtype=bool))
    if n_ref == 0:
        return 0, 0
    hit = np.unique(labelled[np.asarray(pred_mask, dtype=bool) & (labelled > 0)])
    return int(n_ref), int(hit.size)


def cohen_kappa(a: np.ndarray, b: np.ndarray) -> float:
    """Agreement of two binary raters beyond chance; NaN when chance agreement is already total."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.size == 0:
        return float("nan")
    observed = float(np.mean(a == b))
    chance = float(a.mean() * b.mean() + (1 - a.mean()) * (1 - b.mean()))
    if chance >= 1.0:
        return float("nan")
    return (observed - chance) / (1.0 - chance)


def nanmean(values: np.ndarray) -> float:
    """Mean of the finite entries; NaN (not a warning) when there are none."""
    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def bootstrap_ci(rows: np.ndarray, n_resamples: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile CI of the mean of all entries, resampling rows (series) with replacement.

    Rows are series and columns classes, so the interval reflects between-series variation.
    """
    rows = np.asarray(rows, dtype=float).reshape(len(rows), -1)
    if len(rows) == 0 or not np.isfinite(rows).any():
        return float("nan"), float("nan")
    if n_resamples == 0 or len(rows) == 1:
        point = nanmean(rows)
        return point, point
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(rows), size=(n_resamples, len(rows)))
    sample = rows[idx]  # (B, n, k)
    finite = np.isfinite(sample)
    counts = finite.sum(axis=(1, 2))
    sums = np.where(finite, sample, 0.0).sum(axis=(1, 2))
    means = sums[counts > 0] / counts[counts > 0]
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def aggregate(per_series: pd.DataFrame, by: str, dice_columns: list[str], n_resamples: int, seed: int) -> pd.DataFrame:
    """Per group: series count, mean foreground Dice with its bootstrap CI, and lesion Dice."""
    records = []
    for key, group in per_series.groupby(by, sort=True):
        rows = group[dice_columns].to_numpy(dtype=float)
        low, high = bootstrap_ci(rows, n_resamples, seed)
        records.append(
            {
                by: key,
                "n": len(group),
                "dice_mean": nanmean(rows),
                "ci_low": low,
                "ci_high": high,
                "dice_lesion": nanmean(group["dice_lesion"].to_numpy()) if "dice_lesion" in group else float("nan"),
            }
        )
    return pd.DataFrame.from_records(records, columns=[by, "n", "dice_mean", "ci_low", "ci_high", "dice_lesion"])
