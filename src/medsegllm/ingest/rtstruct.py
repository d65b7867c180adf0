"""DICOM RTSTRUCT -> a label map on the referenced series' (X, Y, Z) grid, classes from SEG_CLASSES.

Radiotherapy planning systems export their organ and lesion outlines as structure sets: per ROI,
closed planar polygons in patient millimetres. Each contour is put on the slice it references
(ContourImageSequence), else on the slice at its plane's position, and filled by voxel centre: a
voxel belongs to the ROI when its centre lies inside the polygon. Contours of one ROI on one slice
combine even-odd, so a contour inside another is a hole. ROIs map to classes by name (see
`class_of_name`) and are painted in SEG_CLASSES order, so a lesion overrides the organ it sits in.
"""

from __future__ import annotations

import logging

import numpy as np
import pydicom

from medsegllm.ingest.geometry import LPS_TO_RAS
from medsegllm.ingest.seg import SegError, SliceIndex, class_of_name

log = logging.getLogger(__name__)
PLANE_TOLERANCE = 0.25  # voxels: how far a contour point may sit off the slice plane it is drawn on


def rtstruct_references(ds: pydicom.Dataset) -> tuple[set[str], set[str]]:
    """Series UIDs and image SOP instance UIDs the structure set was drawn on."""
    series, sops = set(), set()
    for frame in ds.get("ReferencedFrameOfReferenceSequence", []):
        for study in frame.get("RTReferencedStudySequence", []):
            for item in study.get("RTReferencedSeriesSequence", []):
                if "SeriesInstanceUID" in item:
                    series.add(str(item.SeriesInstanceUID))
                sops |= {str(image.ReferencedSOPInstanceUID) for image in item.get("ContourImageSequence", [])}
    for roi in ds.get("ROIContourSequence", []):
        for contour in roi.get("ContourSequence", []):
            sops |= {str(image.ReferencedSOPInstanceUID) for image in contour.get("ContourImageSequence", [])}
    return series, sops


def _roi_classes(ds: pydicom.Dataset) -> dict[int, int]:
    """ROINumber -> class index; ROIs named outside the vocabulary are skipped with a warning."""
    classes = {}
    for roi in ds.get("StructureSetROISequence", []):
        cls = class_of_name(str(roi.get("ROIName", "")))
        if cls is None:
            log.warning("RTSTRUCT ROI %s has a name outside the class vocabulary; skipped", roi.get("ROINumber"))
        else:
            classes[int(roi.ROINumber)] = cls
    return classes


def _contour_slice(contour: pydicom.Dataset, z_of_points: np.ndarray, index: SliceIndex) -> int:
    """The referenced slice, else the one the points lie on; the points must lie on it either way."""
    z = None
    for image in contour.get("ContourImageSequence", []):
        z = index.sop_to_z.get(str(image.ReferencedSOPInstanceUID), z)
    if z is None:
        z = int(np.rint(np.median(z_of_points)))
        if not 0 <= z < index.shape[2]:
            raise SegError("contour plane matches no slice of the series")
    if np.abs(z_of_points - z).max() > PLANE_TOLERANCE:
        raise SegError("contour does not lie in the plane of a slice of the series")
    return z


def _fill(polygon: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Boolean (X, Y) mask of the voxel centres inside `polygon` ((N, 2) voxel coordinates)."""
    from matplotlib.path import Path as Polygon

    mask = np.zeros(shape, dtype=bool)
    low = np.maximum(np.floor(polygon.min(axis=0)).astype(int), 0)
    high = np.minimum(np.ceil(polygon.max(axis=0)).astype(int), np.asarray(shape) - 1)
    if (high < low).any():
        return mask  # entirely outside the image
    xs, ys = np.meshgrid(np.arange(low[0], high[0] + 1), np.arange(low[1], high[1] + 1), indexing="ij")
    inside = Polygon(polygon).contains_points(np.column_stack([xs.ravel(), ys.ravel()]))
    mask[low[0] : high[0] + 1, low[1] : high[1] + 1] = inside.reshape(xs.shape)
    return mask


def rtstruct_label_map(ds: pydicom.Dataset, index: SliceIndex) -> np.ndarray:
    """uint8 (X, Y, Z) label map of one structure set on the series described by `index`."""
    to_voxel = np.linalg.inv(index.affine) @ LPS_TO_RAS
    classes = _roi_classes(ds)
    masks = {c: np.zeros(index.shape, dtype=bool) for c in set(classes.values())}
    for roi in ds.get("ROIContourSequence", []):
        cls = classes.get(int(roi.ReferencedROINumber))
        if cls is None:
            continue
        for contour in roi.get("ContourSequence", []):
            kind = str(contour.get("ContourGeometricType", "")).strip()
            if kind != "CLOSED_PLANAR":
                log.warning("RTSTRUCT contour of type %s is not an area; skipped", kind or "unknown")
                continue
            points = np.asarray([float(v) for v in contour.ContourData], dtype=np.float64)
            if points.size < 9 or points.size % 3 or not np.isfinite(points).all():
                raise SegError("malformed ContourData")
            voxels = (to_voxel @ np.column_stack([points.reshape(-1, 3), np.ones(points.size // 3)]).T)[:3].T
            z = _contour_slice(contour, voxels[:, 2], index)
            masks[cls][:, :, z] ^= _fill(voxels[:, :2], index.shape[:2])
    label = np.zeros(index.shape, dtype=np.uint8)
    for cls in sorted(masks):
        label[masks[cls]] = cls
    return label
