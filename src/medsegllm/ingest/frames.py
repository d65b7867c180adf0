"""Multi-frame (enhanced) CT/MR objects: one file holds the slices, its geometry sits in functional groups.

Each frame becomes a plain single-frame view carrying the attributes the classic code reads
(position, orientation, pixel spacing, rescale), taken from the frame's Per-frame Functional Group,
else from the Shared Functional Group. The frames then go through the same sorting along the slice
normal and the same gap, duplicate and orientation checks as the files of a classic series.

An object that holds several volumes (echoes, time points, cardiac phases or magnitude/phase at
repeated positions) is split into them like a classic series is split into stacks: each frame gets
a volume label ("echo=2", "time=3,type=M"), the scan lists an object's labels, and each volume
becomes its own stack, read through `frame_views(ds, stack)`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from medsegllm.ingest.geometry import SeriesError, repeats_position, rescaled
from medsegllm.ingest.values import header_get

# functional group -> attributes copied from its single item onto each frame view
FRAME_GROUPS = {
    "PlanePositionSequence": ("ImagePositionPatient",),
    "PlaneOrientationSequence": ("ImageOrientationPatient",),
    "PixelMeasuresSequence": ("PixelSpacing", "SliceThickness"),
    "PixelValueTransformationSequence": ("RescaleSlope", "RescaleIntercept"),
}

# Per-frame attributes that make several volumes of one multi-frame object (echoes, time points,
# cardiac phases, magnitude/phase): (stack label, functional group, attribute). Echoes are numbered by
# echo time, as EchoNumbers numbers the echoes of a classic series; the other labels carry the value.
PER_FRAME_SPLITS = (
    ("echo", "MREchoSequence", "EffectiveEchoTime"),
    ("time", "FrameContentSequence", "TemporalPositionIndex"),
    ("trigger", "CardiacSynchronizationSequence", "NominalCardiacTriggerDelayTime"),
    ("type", "MRImageFrameTypeSequence", "ComplexImageComponent"),
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


def frame_geometry(ds: Dataset) -> tuple[list[Dataset], list[str]]:
    """Every frame's header view, in frame order, and the volume each frame belongs to: "" throughout
    when the frames make one volume, else labels such as "echo=2". Raises SeriesError when frame
    geometry is absent."""
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
    for index, item in enumerate(per_frame):
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
        view.frame_index = index  # a plain attribute, not a DICOM element: which plane of the pixel data
        views.append(view)
    if len(stacks) > 1:
        raise SeriesError(f"multi-frame object holds {len(stacks)} stacks (StackID); split it into one stack per object")
    return views, _volume_labels(per_frame, shared, views)


def frame_views(ds: Dataset, stack: str | None = None) -> list[Dataset]:
    """The header views of the frames of volume `stack` (a label of `frame_geometry`), in frame order;
    None: every frame, which must then make one volume."""
    views, labels = frame_geometry(ds)
    if stack is None:
        volumes = sorted(set(labels))
        if len(volumes) > 1:
            raise SeriesError(f"multi-frame object holds {len(volumes)} volumes ({', '.join(volumes)}); "
                              "read it one volume at a time")
        return views
    chosen = [view for view, label in zip(views, labels) if label == stack]
    if not chosen:
        raise SeriesError(f"multi-frame object holds no volume {stack}")
    return chosen


def volume_labels(ds: Dataset) -> tuple[str, ...]:
    """The volumes of a multi-frame object that holds several, in frame order; () for one volume or
    when its frame geometry is unusable (reading the object reports why)."""
    try:
        labels = frame_geometry(ds)[1]
    except Exception:  # malformed functional groups: the decode step quarantines the file with its reason
        return ()
    return tuple(dict.fromkeys(labels)) if len(set(labels)) > 1 else ()


def _volume_labels(per_frame: Sequence, shared: Dataset, views: list[Dataset]) -> list[str]:
    """Per frame, the attributes of PER_FRAME_SPLITS that tell repeated positions apart ("echo=1,type=M").

    No split ("" for every frame) when positions do not repeat, or when the varying attributes leave
    some position repeated within one label: the geometry checks then report the duplicates.
    """
    positions = [view.get("ImagePositionPatient") or () for view in views]
    try:
        if not repeats_position([""] * len(views), positions):
            return [""] * len(views)
    except (TypeError, ValueError):  # malformed positions: geometry reports them
        return [""] * len(views)
    columns = []
    for label, group, attribute in PER_FRAME_SPLITS:
        values = []
        for item in per_frame:
            found = _group(item, shared, group)
            values.append(str(found.get(attribute, "")).strip() if found is not None else "")
        if len(set(values)) > 1:
            columns.append((label, _echo_numbers(values) if label == "echo" else values))
    labels = [",".join(f"{label}={values[i]}" for label, values in columns) for i in range(len(views))]
    return [""] * len(views) if repeats_position(labels, positions) else labels


def _echo_numbers(times: list[str]) -> list[str]:
    """1, 2, ... in order of echo time (a blank time sorts first)."""
    def key(value: str) -> tuple[int, float, str]:
        try:
            return (1, float(value), value)
        except ValueError:
            return (0, 0.0, value)

    order = {value: str(n) for n, value in enumerate(sorted(set(times), key=key), 1)}
    return [order[value] for value in times]


def frame_pixels(ds: pydicom.Dataset, views: list[Dataset]) -> list[np.ndarray]:
    """The frames of `views` (from `frame_views`) in stored units times their RescaleSlope plus
    RescaleIntercept, float32, (X, Y)."""
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise SeriesError("not a grayscale image")
    data = ds.pixel_array
    data = data[None] if data.ndim == 2 else data
    if data.ndim != 3 or data.shape[0] != int(ds.get("NumberOfFrames", 1) or 1):
        raise SeriesError("multi-frame pixel data does not hold one plane per frame")
    return [rescaled(data[view.frame_index], view) for view in views]
