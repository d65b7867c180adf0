"""Multi-frame (enhanced) CT/MR objects: one file holds the slices, its geometry sits in functional groups.

Each frame becomes a plain single-frame view carrying the attributes the classic code reads
(position, orientation, pixel spacing, rescale), taken from the frame's Per-frame Functional Group,
else from the Shared Functional Group. The frames then go through the same sorting along the slice
normal and the same gap, duplicate and orientation checks as the files of a classic series.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from medsegllm.ingest.geometry import SeriesError, rescaled
from medsegllm.ingest.values import header_get

# functional group -> attributes copied from its single item onto each frame view
FRAME_GROUPS = {
    "PlanePositionSequence": ("ImagePositionPatient",),
    "PlaneOrientationSequence": ("ImageOrientationPatient",),
    "PixelMeasuresSequence": ("PixelSpacing", "SliceThickness"),
    "PixelValueTransformationSequence": ("RescaleSlope", "RescaleIntercept"),
}

# Per-frame attributes that make several volumes of one multi-frame object: (what, functional group, attribute)
PER_FRAME_SPLITS = (
    ("echoes", "MREchoSequence", "EffectiveEchoTime"),
    ("time points", "FrameContentSequence", "TemporalPositionIndex"),
    ("cardiac phases", "CardiacSynchronizationSequence", "NominalCardiacTriggerDelayTime"),
    ("image components", "MRImageFrameTypeSequence", "ComplexImageComponent"),
)


def is_multiframe(ds: Dataset) -> bool:
    return "PerFrameFunctionalGroupsSequence" in ds or int(header_get(ds, "NumberOfFrames", 1) or 1) > 1


def _group(item: Dataset, shared: Dataset, keyword: str) -> Dataset | None:
    """The per-frame item of a functional group overrides the shared one (PS3.3 C.7.6.16)."""
    for source in (item, shared):
        sequence = source.get(keyword)
        if sequence:
            return sequence[0]
    return None


def frame_views(ds: Dataset) -> list[Dataset]:
    """One header-only dataset per frame, in frame order; raises SeriesError when frame geometry is absent."""
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if not per_frame:
        raise SeriesError("multi-frame CT/MR without per-frame functional groups (no frame geometry)")
    if len(per_frame) != n_frames:
        raise SeriesError(f"multi-frame object lists {len(per_frame)} frame groups for {n_frames} frames")
    shared_sequence = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_sequence[0] if shared_sequence else Dataset()
    stacks = set()
    views = []
    for item in per_frame:
        view = Dataset()
        view.Rows, view.Columns = ds.Rows, ds.Columns
        view.SamplesPerPixel = ds.get("SamplesPerPixel", 1)
        for keyword, attributes in FRAME_GROUPS.items():
            group = _group(item, shared, keyword)
            for attribute in attributes:
                if group is not None and attribute in group:
                    setattr(view, attribute, group[attribute].value)
        content = _group(item, shared, "FrameContentSequence")
        stacks.add(str(content.get("StackID", "")) if content is not None else "")
        views.append(view)
    if len(stacks) > 1:
        raise SeriesError(f"multi-frame object holds {len(stacks)} stacks (StackID); split it into one stack per object")
    _check_one_volume(per_frame, shared, views)
    return views


def _check_one_volume(per_frame: Sequence, shared: Dataset, views: list[Dataset]) -> None:
    """Frames at repeated positions that a per-frame attribute tells apart (echoes, time points, cardiac
    phases, magnitude/phase) are several volumes in one object: name them, as the classic path would
    split them into stacks. One volume per object is all this reader assembles."""
    try:
        positions = [tuple(round(float(v), 2) for v in view.get("ImagePositionPatient") or ()) for view in views]
    except (TypeError, ValueError):  # malformed positions: geometry reports them
        return
    if len(set(positions)) == len(positions):
        return
    varying = []
    for name, group, attribute in PER_FRAME_SPLITS:
        values = set()
        for item in per_frame:
            found = _group(item, shared, group)
            values.add(str(found.get(attribute, "")) if found is not None else "")
        if len(values) > 1:
            varying.append(f"{len(values)} {name} ({attribute})")
    if varying:
        raise SeriesError(f"multi-frame object holds {' x '.join(varying)} at repeated positions; "
                          "split it into one object per volume")


def frame_pixels(ds: pydicom.Dataset, views: list[Dataset]) -> list[np.ndarray]:
    """Every frame in stored units times its RescaleSlope plus RescaleIntercept, float32, (X, Y)."""
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise SeriesError("not a grayscale image")
    data = ds.pixel_array
    data = data[None] if data.ndim == 2 else data
    if data.ndim != 3 or data.shape[0] != len(views):
        raise SeriesError("multi-frame pixel data does not hold one plane per frame")
    return [rescaled(plane, view) for plane, view in zip(data, views)]
