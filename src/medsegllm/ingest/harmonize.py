"""One resampling path for images, SEG labels and truth masks, so their grids always agree.

Reorientation to RAS and resampling to the target spacing use MONAI on a MetaTensor carrying the
affine; two arrays on the same source grid therefore land on the same output grid, whatever their
dtype. Intensities are then mapped to [0, 1]: CT through a fixed HU window, MR through robust
percentiles of the body, because MR units differ per scanner while HU do not.
"""

from __future__ import annotations

import numpy as np

from medsegllm.config import IngestParams

# Raw histograms use fixed absolute ranges, so a scanner's gain or offset shift stays visible.
RAW_RANGES: dict[str, tuple[float, float]] = {"CT": (-1024.0, 1024.0), "MR": (0.0, 4096.0)}
BODY_FRACTION = 0.05  # MR voxels above this share of the p99.9 intensity count as body, not air


REVERSED = [2, 1, 0, 3]  # affine columns of the (Z, Y, X) axes


def _resample(array: np.ndarray, affine: np.ndarray, spacing: tuple[float, float, float], mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(X, Y, Z) `array` to RAS at `spacing`: a C-contiguous (X, Y, Z) array as it is; an F-contiguous one
    (stacked slices, as ingest assembles them) as its C-contiguous (Z, Y, X) transpose with the affine's
    axes swapped, to SAR at the reversed spacing, then the small result transposed back. Torch resamples
    a strided tensor far slower than a contiguous one, and this way the full-resolution volume is never
    transposed; both ways give the same grid, the same labels and intensities equal to float rounding."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Orientation, Spacing

    reverse = array.flags.f_contiguous and not array.flags.c_contiguous
    data, affine = (array.T, affine[:, REVERSED]) if reverse else (array, affine)
    image = MetaTensor(torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))[None],
                       affine=torch.as_tensor(affine, dtype=torch.float64))
    image = Orientation(axcodes="SAR" if reverse else "RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(image)
    image = Spacing(pixdim=tuple(spacing)[::-1] if reverse else spacing, mode=mode,
                    padding_mode="border" if mode == "bilinear" else "zeros", dtype=np.float32)(image)
    out, out_affine = image[0].numpy(), np.asarray(image.affine, dtype=np.float64)
    return (np.ascontiguousarray(out.T), out_affine[:, REVERSED]) if reverse else (out, out_affine)


def mr_range(array: np.ndarray, percentiles: tuple[float, float]) -> tuple[float, float]:
    """Robust low/high of the body voxels (air excluded, else the low percentile is just air)."""
    top = float(np.percentile(array, 99.9))
    body = array[array > BODY_FRACTION * top]
    values = body if body.size else array.ravel()
    low, high = np.percentile(values, percentiles)
    return float(low), float(high)


def harmonize_volume(array: np.ndarray, affine: np.ndarray, modality: str, params: IngestParams) -> tuple[np.ndarray, np.ndarray]:
    """RAS, target spacing, float32 in [0, 1]: CT by params.ct_window, MR by params.mr_percentiles."""
    data, out_affine = _resample(array, affine, params.target_spacing, "bilinear")
    if modality == "CT":
        low, high = params.ct_window
    elif modality == "MR":
        low, high = mr_range(data, params.mr_percentiles)
    else:
        raise ValueError(f"unsupported modality {modality!r}")
    scaled = (data - low) / max(high - low, 1e-6)
    return np.clip(scaled, 0.0, 1.0).astype(np.float32), out_affine


def harmonize_label(mask: np.ndarray, affine: np.ndarray, params: IngestParams) -> tuple[np.ndarray, np.ndarray]:
    """The image path with nearest-neighbour interpolation: uint8 labels on the harmonized grid."""
    data, out_affine = _resample(mask.astype(np.float32), affine, params.target_spacing, "nearest")
    return np.rint(data).astype(np.uint8), out_affine


def histogram(values: np.ndarray, value_range: tuple[float, float], bins: int) -> np.ndarray:
    """Normalized histogram; values outside the range fall in the edge bins so every voxel counts."""
    clipped = np.clip(values.ravel(order="K"), value_range[0], value_range[1])  # K: no copy of an F-ordered volume
    counts, _ = np.histogram(clipped, bins=bins, range=value_range)
    return (counts / max(counts.sum(), 1)).astype(np.float32)


def raw_histogram(array: np.ndarray, modality: str, bins: int) -> np.ndarray:
    """Before harmonization: CT over [-1024, 1024] HU, MR over [0, 4096] stored units."""
    return histogram(array, RAW_RANGES[modality], bins)
