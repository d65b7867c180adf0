"""Assemble single-frame slices into a volume and its RAS affine, from the DICOM geometry only.

Slices are ordered by their position along the slice normal (never by InstanceNumber, which
scanners number in either direction or restart). Axes follow nibabel/dcm2niix: x = column index,
y = row index, z = slice along the increasing normal; the affine maps them to RAS millimetres.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pydicom

from medsegllm.ingest.values import header_floats, header_get

GAP_TOLERANCE = 0.10  # relative deviation of a slice gap from the median gap
DUPLICATE_MM = 1e-3
SAME_ORIENTATION = 1e-4  # largest direction-cosine difference between slices of one stack
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# Largest plausible field of view (bores are under 1 m; a whole body under 2.5 m): beyond it the
# geometry is corrupt, and resampling it to the target spacing would try to allocate gigabytes.
MAX_FOV_MM = (1000.0, 1000.0, 2500.0)


class SeriesError(ValueError):
    """A series whose geometry cannot be trusted; the message is the quarantine reason."""


@dataclass
class Volume:
    array: np.ndarray  # float32 (X, Y, Z), rescale applied; F-contiguous (stored slices stacked, see stack_slices)
    affine: np.ndarray  # 4x4 RAS
    spacing: tuple[float, float, float]  # column, row, slice spacing in mm
    order: list[int]  # input index of each slice, in z order


def repeats_position(labels: Sequence[str], positions: Sequence[Sequence[float]]) -> bool:
    """Whether two slices with one label sit at one position (rounded to 0.01 mm): the test for whether
    a series' (or a multi-frame object's) labels split it into volumes that each have distinct positions."""
    keys = [(label, tuple(round(float(v), 2) for v in position)) for label, position in zip(labels, positions, strict=True)]
    return len(set(keys)) < len(keys)


def _floats(ds: pydicom.Dataset, keyword: str, n: int) -> np.ndarray:
    value = header_floats(ds, keyword)
    if value is None or len(value) != n:
        raise SeriesError(f"missing or malformed {keyword}")
    values = np.asarray(value, dtype=np.float64)
    if not np.isfinite(values).all():
        raise SeriesError(f"non-finite {keyword}")
    return values


def slice_geometry(datasets: list[pydicom.Dataset]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int], float]:
    """Check one orientation, grid and spacing; return (row dir, col dir, origin, z order, slice step)."""
    orientations = np.stack([_floats(ds, "ImageOrientationPatient", 6) for ds in datasets])
    if np.abs(orientations - orientations[0]).max() > SAME_ORIENTATION:
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


def rescale_into(out: np.ndarray, plane: np.ndarray, header: pydicom.Dataset) -> None:
    """`out` (float32, rows x columns) = stored `plane` times RescaleSlope plus RescaleIntercept, in float32
    arithmetic, written in place so a slice goes from its stored integers to the volume in one pass."""
    slope = np.float32(float(header_get(header, "RescaleSlope", 1) or 1))
    intercept = np.float32(float(header_get(header, "RescaleIntercept", 0) or 0))
    if slope == 1:  # x * 1 is exact, so skipping it changes no value
        np.add(plane, intercept, out=out, dtype=np.float32, casting="unsafe")
    else:
        np.multiply(plane, slope, out=out, dtype=np.float32, casting="unsafe")
        np.add(out, intercept, out=out)


def rescaled(plane: np.ndarray, header: pydicom.Dataset) -> np.ndarray:
    """A stored (rows, columns) plane times the header's RescaleSlope plus RescaleIntercept, float32, (X, Y)."""
    out = np.empty(plane.shape, np.float32)
    rescale_into(out, plane, header)
    return out.T


def pixels(ds: pydicom.Dataset) -> np.ndarray:
    """One slice in stored units times RescaleSlope plus RescaleIntercept, float32, (X, Y)."""
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise SeriesError("not a grayscale image")
    data = ds.pixel_array
    if data.ndim != 2:
        raise SeriesError("pixel data is not one 2-D plane")
    return rescaled(data, ds)


def stack_slices(slices: Sequence[np.ndarray] | np.ndarray, order: list[int]) -> np.ndarray:
    """Float32 (X, Y, Z) of the (X, Y) `slices` taken in `order`, F-contiguous: every slice stays one
    contiguous stored (row-major) plane, the layout NIfTI files hold and nibabel loads, so assembling
    never transposes the volume (harmonize resamples this layout as it is). No copy when `slices` is
    already that volume in order (decode_series's (N, X, Y) output)."""
    if isinstance(slices, np.ndarray) and slices.dtype == np.float32 and order == list(range(len(slices))):
        volume = slices.transpose(1, 2, 0)
        if volume.flags.f_contiguous:
            return volume
    out = np.empty((len(order), *slices[0].shape[::-1]), np.float32)  # (Z, Y, X): stored planes
    for z, index in enumerate(order):
        out[z] = slices[index].T
    return out.transpose(2, 1, 0)


def build_volume(datasets: list[pydicom.Dataset], slices: Sequence[np.ndarray] | np.ndarray) -> Volume:
    """Sorted (X, Y, Z) volume of the decoded `slices` (one (X, Y) plane per dataset, as a list or an
    (N, X, Y) array) and its RAS affine; raises SeriesError on bad geometry."""
    row_dir, col_dir, origin, order, step = slice_geometry(datasets)
    pixel_spacing = _floats(datasets[0], "PixelSpacing", 2)
    spacing = (float(pixel_spacing[1]), float(pixel_spacing[0]), float(step))
    if min(spacing) <= 0:
        raise SeriesError("non-positive pixel or slice spacing")
    fov = np.asarray([int(datasets[0].Columns), int(datasets[0].Rows), len(order)]) * np.asarray(spacing)
    if (fov > np.asarray(MAX_FOV_MM)).any():
        raise SeriesError(f"implausible field of view {np.round(fov).tolist()} mm (limit {list(MAX_FOV_MM)})")
    array = stack_slices(slices, order)
    return Volume(array, ras_affine(row_dir, col_dir, origin, spacing), spacing, order)


def slice_normal(ds: pydicom.Dataset) -> np.ndarray:
    """The LPS slice normal: cross product of the row and column direction cosines."""
    orientation = _floats(ds, "ImageOrientationPatient", 6)
    return np.cross(orientation[:3], orientation[3:])
