"""Stacks: one SeriesInstanceUID that holds several volumes, told apart as dcm2niix tells them apart.

Multi-echo MR writes every echo at the same positions, magnitude and phase come as one series, a
tri-plane localizer mixes orientations, and a 4D series (dynamic contrast, perfusion, cardiac phases)
repeats the volume once per time point. Assembled as one volume each of these fails the geometry
checks (duplicate positions, mixed orientation), so the series is split into stacks first; a series
with one stack is left exactly as it was.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import pydicom

from medsegllm.ingest.geometry import SAME_ORIENTATION, repeats_position
from medsegllm.ingest.values import header_get

if TYPE_CHECKING:
    from medsegllm.ingest.scan import ImageHeader


# ImageHeader field -> attribute, for the plain text ones
TEXT_ATTRIBUTES = {"echo": "EchoNumbers", "temporal": "TemporalPositionIdentifier", "trigger": "TriggerTime",
                   "acquisition": "AcquisitionNumber"}
# Told apart only where slice positions repeat and the attribute explains every repeat: a 3D series may
# carry a different trigger time or acquisition number on every slice (gated or sequential scans).
REPEAT_SPLITS = (("trigger", "trigger"), ("acq", "acquisition"))
COMPLEX_PARTS = {"M", "P", "R", "I", "MAGNITUDE", "PHASE", "REAL", "IMAGINARY"}


def stack_attributes(ds: pydicom.Dataset) -> dict:
    """What tells the stacks of one series apart; a malformed value counts as absent (geometry reports it)."""
    found: dict = {}
    for name, keyword in TEXT_ATTRIBUTES.items():
        try:
            value = header_get(ds, keyword)
            found[name] = "" if value is None else str(value).strip()  # not `or ""`: a trigger time of 0 is a value
        except Exception:  # an undecodable value: no split on it, the file is still an image
            pass
    try:
        image_type = [str(v).strip().upper() for v in (header_get(ds, "ImageType") or [])]
        found["complex_part"] = next((v for v in image_type[2:] if v in COMPLEX_PARTS), "")
    except Exception:  # as above
        pass
    for name, keyword, size in (("orientation", "ImageOrientationPatient", 6), ("position", "ImagePositionPatient", 3)):
        try:
            value = header_get(ds, keyword)
            if value is not None and len(value) == size:
                found[name] = tuple(float(v) for v in value)
        except Exception:  # as above
            pass
    return found


def group_series(images: list[ImageHeader]) -> dict[str, list[ImageHeader]]:
    """Image headers by series, and a series that holds several stacks split into them, as dcm2niix does:
    echoes (EchoNumbers), magnitude/phase (ImageType), slice planes (a tri-plane localizer), time points
    (TemporalPositionIdentifier), and, where positions still repeat, TriggerTime or AcquisitionNumber
    if it tells every repeat apart. One stack keeps the SeriesInstanceUID as its key; stacks get `uid#label` (label also in `stack`).
    An enhanced object that holds several volumes gives one stack per volume (`frame_stack` picks its frames)."""
    by_uid: dict[str, list[ImageHeader]] = defaultdict(list)
    groups: dict[str, list[ImageHeader]] = {}
    for header in images:
        if header.volumes:
            for label in header.volumes:
                groups.setdefault(f"{header.series_uid}#{label}", []).append(replace(header, stack=label, frame_stack=label))
            continue
        by_uid[header.series_uid].append(header)
    for uid, headers in by_uid.items():
        labels = _stack_labels(headers)
        if len(set(labels)) == 1:
            groups[uid] = headers
            continue
        for header, label in zip(headers, labels):
            header.stack = label
            groups.setdefault(f"{uid}#{label}", []).append(header)
    return groups


def _stack_labels(headers: list[ImageHeader]) -> list[str]:
    """Per header, the attributes that differ within its series, e.g. "echo=2,type=P,plane=1"."""
    planes = _planes([h.orientation for h in headers])
    columns = [("echo", [h.echo for h in headers]), ("type", [h.complex_part for h in headers]), ("plane", planes),
               ("time", [h.temporal for h in headers])]
    varying = [(name, values) for name, values in columns if len(set(values)) > 1]
    labels = [",".join(f"{name}={values[i]}" for name, values in varying) for i in range(len(headers))]
    for name, field_name in REPEAT_SPLITS:
        if not _repeats(headers, labels):
            break
        values = [getattr(h, field_name) for h in headers]
        split = [f"{label},{name}={value}".lstrip(",") for label, value in zip(labels, values)]
        if len(set(values)) > 1 and not _repeats(headers, split):
            labels = split
    return labels


def _repeats(headers: list[ImageHeader], labels: list[str]) -> bool:
    """Whether any stack holds two slices at one position; slices without one are left to geometry."""
    placed = [(label, h.position) for h, label in zip(headers, labels) if h.position is not None]
    return repeats_position([label for label, _ in placed], [position for _, position in placed])


def _planes(orientations: list[tuple[float, ...] | None]) -> list[str]:
    """Plane number (1, 2, ... in sorted orientation order) of each slice; slices within SAME_ORIENTATION share one.
    No split where a slice's orientation is missing: geometry then quarantines the series with the reason."""
    if any(o is None for o in orientations):
        return ["" for _ in orientations]
    centres: list[np.ndarray] = []
    for orientation in sorted(set(orientations)):
        if not any(np.abs(np.asarray(orientation) - c).max() <= SAME_ORIENTATION for c in centres):
            centres.append(np.asarray(orientation))
    if len(centres) < 2:
        return ["" for _ in orientations]
    return [next(str(n) for n, c in enumerate(centres, 1) if np.abs(np.asarray(o) - c).max() <= SAME_ORIENTATION)
            for o in orientations]
