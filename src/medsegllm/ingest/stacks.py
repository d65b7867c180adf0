"""Stacks: one SeriesInstanceUID that holds several volumes, told apart as dcm2niix tells them apart.

Multi-echo MR writes every echo at the same positions, magnitude and phase come as one series, and
a tri-plane localizer mixes orientations. Assembled as one volume each of these fails the geometry
checks (duplicate positions, mixed orientation), so the series is split into stacks first; a series
with one stack is left exactly as it was.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

import numpy as np
import pydicom

from medsegllm.ingest.geometry import SAME_ORIENTATION

if TYPE_CHECKING:
    from medsegllm.ingest.scan import ImageHeader


COMPLEX_PARTS = {"M", "P", "R", "I", "MAGNITUDE", "PHASE", "REAL", "IMAGINARY"}


def stack_attributes(ds: pydicom.Dataset) -> dict:
    """What tells the stacks of one series apart; a malformed value counts as absent (geometry reports it)."""
    found: dict = {}
    try:
        found["echo"] = str(ds.get("EchoNumbers", "") or "").strip()
    except Exception:  # an undecodable value: no echo split, the file is still an image
        pass
    try:
        image_type = [str(v).strip().upper() for v in (ds.get("ImageType") or [])]
        found["complex_part"] = next((v for v in image_type[2:] if v in COMPLEX_PARTS), "")
    except Exception:  # as above
        pass
    try:
        orientation = ds.get("ImageOrientationPatient")
        if orientation is not None and len(orientation) == 6:
            found["orientation"] = tuple(float(v) for v in orientation)
    except Exception:  # as above
        pass
    return found


def group_series(images: list[ImageHeader]) -> dict[str, list[ImageHeader]]:
    """Image headers by series, and a series that holds several stacks split into them, as dcm2niix does:
    echoes (EchoNumbers), magnitude/phase (ImageType) and slice planes (a tri-plane localizer). One
    stack keeps the SeriesInstanceUID as its key; stacks get `uid#label` (label also in `stack`)."""
    by_uid: dict[str, list[ImageHeader]] = defaultdict(list)
    for header in images:
        by_uid[header.series_uid].append(header)
    groups: dict[str, list[ImageHeader]] = {}
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
    columns = [("echo", [h.echo for h in headers]), ("type", [h.complex_part for h in headers]), ("plane", planes)]
    varying = [(name, values) for name, values in columns if len(set(values)) > 1]
    return [",".join(f"{name}={values[i]}" for name, values in varying) for i in range(len(headers))]


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
