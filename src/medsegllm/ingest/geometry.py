"""Assemble single-frame slices into a volume and its RAS affine, from the DICOM geometry only.

Slices are ordered by their position along the slice normal (never by InstanceNumber, which
scanners number in either direction or restart). Axes follow nibabel/dcm2niix: x = column index,
y = row index, z = slice along the increasing normal; the affine maps them to RAS millimetres.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pydicom

GAP_TOLERANCE = 0.10  # relative deviation of a slice gap from the median gap
DUPLICATE_MM = 1e-3
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# Largest plausible field of view (bores are under 1 m; a whole body under 2.5 m): beyond it the
# geometry is corrupt, and resampling it to the target spacing would try to allocate gigabytes.
MAX_FOV_MM = (1000.0, 1000.0, 2500.0)


class SeriesError(ValueError):
    """A series whose geometry cannot be trusted; the message is the quarantine reason."""


@dataclass
class Volume:
    array: np.ndarray  # float32 (X, Y, Z), rescale applied
    affine: np.ndarray  # 4x4 RAS
    spacing: tuple[float, float, float]  # column, row, slice spacing in mm
    order: list[int]  # input index of each slice, in z order


def _floats(ds: pydicom.Dataset, keyword: str, n: int) -> np.ndarray:
    value = ds.get(keyword)
    if value is None or len(value) != n:
        raise SeriesError(f"missing or malformed {keyword}")
    values = np.asarray([float(v) for v in value], dtype=np.float64)
    if not np.isfinite(values).all():
        raise SeriesError(f"non-finite {keyword}")
    return values


def slice_geometry(datasets: list[pydicom.Dataset]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int], float]:
    """Check one orientation, grid and spacing; return (row dir, col dir, origin, z order, slice step)."""
    orientations = np.stack([_floats(ds, "ImageOrientationPatient", 6) for ds in datasets])
    if np.abs(orientations - orientations[0]).max() > 1e-4:
        raise SeriesError("inconsistent ImageOrientationPatient within series")
    grids = {(int(ds.Rows), int(ds.Columns)) for ds in datasets}
    if len(grids) > 1:
        raise SeriesError("inconsistent Rows/Columns within series")
    spacings = np.stack([_floats(ds, "PixelSpacing", 2) for ds in datasets])
    if np.abs(spacings - spacings[0]).max() > 1e-4:
        raise SeriesError("inconsistent PixelSpacing within series")
    row_dir, col_dir = orientations[0, :3], orientations[0, 3:]
    normal = np.cross(row_dir, col_dir)
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-3):
        raise SeriesError("ImageOrientationPatient is not orthonormal")
    positions = np.stack([_floats(ds, "ImagePositionPatient", 3) for ds in datasets])
    along = positions @ normal
    order = [int(i) for i in np.argsort(along, kind="stable")]
    along = along[order]
    if len(datasets) == 1:
        thickness = float(datasets[0].get("SliceThickness") or 0) or float(spacings[0].min())
        return row_dir, col_dir, positions[order[0]], order, thickness
    gaps = np.diff(along)
    if gaps.min() < DUPLICATE_MM:
        raise SeriesError("duplicate slice positions within series")
    median = float(np.median(gaps))
    if np.abs(gaps - median).max() > GAP_TOLERANCE * median:
        raise SeriesError("non-uniform slice spacing (missing slices or mixed stacks)")
    return row_dir, col_dir, positions[order[0]], order, float((along[-1] - along[0]) / (len(along) - 1))


def ras_affine(row_dir: np.ndarray, col_dir: np.ndarray, origin: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Voxel (column, row, slice) -> RAS mm: the DICOM LPS affine with x and y negated."""
    normal = np.cross(row_dir, col_dir)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * spacing[0]
    lps[:3, 1] = col_dir * spacing[1]
    lps[:3, 2] = normal * spacing[2]
    lps[:3, 3] = origin
    return LPS_TO_RAS @ lps


def rescaled(plane: np.ndarray, header: pydicom.Dataset) -> np.ndarray:
    """A stored (rows, columns) plane times the header's RescaleSlope plus RescaleIntercept, float32, (X, Y)."""
    slope = float(header.get("RescaleSlope", 1) or 1)
    intercept = float(header.get("RescaleIntercept", 0) or 0)
    return (plane.astype(np.float32) * np.float32(slope) + np.float32(intercept)).T


def pixels(ds: pydicom.Dataset) -> np.ndarray:
    """One slice in stored units times RescaleSlope plus RescaleIntercept, float32, (X, Y)."""
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise SeriesError("not a grayscale image")
    data = ds.pixel_array
    if data.ndim != 2:
        raise SeriesError("pixel data is not one 2-D plane")
    return rescaled(data, ds)


def build_volume(datasets: list[pydicom.Dataset], slices: list[np.ndarray]) -> Volume:
    """Sorted (X, Y, Z) volume of the decoded `slices` and its RAS affine; raises SeriesError on bad geometry."""
    row_dir, col_dir, origin, order, step = slice_geometry(datasets)
    pixel_spacing = _floats(datasets[0], "PixelSpacing", 2)
    spacing = (float(pixel_spacing[1]), float(pixel_spacing[0]), float(step))
    if min(spacing) <= 0:
        raise SeriesError("non-positive pixel or slice spacing")
    fov = np.asarray([int(datasets[0].Columns), int(datasets[0].Rows), len(order)]) * np.asarray(spacing)
    if (fov > np.asarray(MAX_FOV_MM)).any():
        raise SeriesError(f"implausible field of view {np.round(fov).tolist()} mm (limit {list(MAX_FOV_MM)})")
    array = np.stack([slices[i] for i in order], axis=-1)
    return Volume(array, ras_affine(row_dir, col_dir, origin, spacing), spacing, order)


def slice_normal(ds: pydicom.Dataset) -> np.ndarray:
    """The LPS slice normal: cross product of the row and column direction cosines."""
    orientation = _floats(ds, "ImageOrientationPatient", 6)
    return np.cross(orientation[:3], orientation[3:])
