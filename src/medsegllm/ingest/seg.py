"""DICOM SEG -> a label map on the referenced series' (X, Y, Z) grid, classes from SEG_CLASSES.

(RTSTRUCT, the other label object, is in rtstruct.py; both use this module's SliceIndex and names.)

Frames are matched to slices by ReferencedSOPInstanceUID, else by plane position along the slice
normal. Classes are painted in SEG_CLASSES order, so a lesion overrides the organ it sits in.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pydicom

from medsegllm.knowledge import SEG_CLASSES

log = logging.getLogger(__name__)


class SegError(ValueError):
    """A SEG that cannot be placed on its series; the message is the quarantine reason."""


@dataclass
class SliceIndex:
    """Where each source slice sits in the assembled volume."""

    sop_to_z: dict[str, int]
    along: np.ndarray  # position of each z slice along the normal, mm
    normal: np.ndarray  # LPS
    shape: tuple[int, int, int]
    affine: np.ndarray  # voxel (X, Y, Z) -> RAS mm, the assembled volume's

    def z_at(self, position: Sequence[float]) -> int | None:
        """The slice a plane through `position` (LPS mm) lies on: the nearest one, if within a quarter
        of the smallest slice gap; None otherwise."""
        along = float(np.asarray(position, dtype=np.float64) @ self.normal)
        distances = np.abs(self.along - along)
        z = int(np.argmin(distances))
        tolerance = 0.25 * (float(np.min(np.diff(self.along))) if len(self.along) > 1 else 1.0)
        return z if distances[z] <= tolerance else None


def class_of_name(name: str) -> int | None:
    """The SEG_CLASSES index a segment or ROI name denotes: the class name itself, or as the first word
    of a longer name ("Kidney_L", "liver 2", "Lesion-1"); None for anything else (e.g. "GTV", "Couch")."""
    words = re.split(r"[^a-z]+", name.strip().lower())
    first = next((word for word in words if word), "")
    return SEG_CLASSES.index(first) if first in SEG_CLASSES[1:] else None


def _frame_item(seg, frame: int, keyword: str):
    groups = seg.PerFrameFunctionalGroupsSequence[frame]
    if keyword in groups:
        return getattr(groups, keyword)[0]
    shared = seg.get("SharedFunctionalGroupsSequence")
    if shared and keyword in shared[0]:
        return getattr(shared[0], keyword)[0]
    return None


def _frame_slice(seg, frame: int, index: SliceIndex) -> int:
    derivation = _frame_item(seg, frame, "DerivationImageSequence")
    if derivation is not None:
        for source in derivation.get("SourceImageSequence", []):
            z = index.sop_to_z.get(str(source.ReferencedSOPInstanceUID))
            if z is not None:
                return z
    plane = _frame_item(seg, frame, "PlanePositionSequence")
    if plane is None:
        raise SegError("SEG frame references no slice of the series and has no plane position")
    z = index.z_at([float(v) for v in plane.ImagePositionPatient])
    if z is None:
        raise SegError("SEG frame position matches no slice of the series")
    return z


def seg_label_map(ds: pydicom.Dataset, index: SliceIndex) -> np.ndarray:
    """uint8 (X, Y, Z) label map of one SEG; segments named outside the vocabulary are skipped with a warning."""
    import highdicom as hd

    seg = hd.seg.Segmentation.from_dataset(ds, copy=False)
    numbers_to_class: dict[int, int] = {}
    for item in seg.SegmentSequence:
        cls = class_of_name(str(item.SegmentLabel))
        if cls is not None:
            numbers_to_class[int(item.SegmentNumber)] = cls
        else:
            log.warning("SEG segment %d has a label outside the class vocabulary; skipped", int(item.SegmentNumber))
    frames = seg.pixel_array
    frames = frames[None] if frames.ndim == 2 else frames
    if frames.shape[1:] != (index.shape[1], index.shape[0]):
        raise SegError("SEG frame size differs from the referenced series")
    threshold = float(seg.get("MaximumFractionalValue", 2)) / 2 if seg.SegmentationType == "FRACTIONAL" else 0.5
    masks = {c: np.zeros(index.shape, dtype=bool) for c in set(numbers_to_class.values())}
    for frame in range(frames.shape[0]):
        ident = _frame_item(seg, frame, "SegmentIdentificationSequence")
        cls = numbers_to_class.get(int(ident.ReferencedSegmentNumber)) if ident is not None else None
        if cls is None:
            continue
        masks[cls][:, :, _frame_slice(seg, frame, index)] |= frames[frame].T >= threshold
    label = np.zeros(index.shape, dtype=np.uint8)
    for cls in sorted(masks):
        label[masks[cls]] = cls
    return label
