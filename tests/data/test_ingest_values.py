"""The scan's fast header values equal pydicom's `Dataset.get`, value for value and error for error,
on every DICOM file pydicom ships and on the real third-party files."""

from __future__ import annotations

import warnings
from pathlib import Path

import pydicom
import pytest
import pydicom.data

from medsegllm.ingest.values import header_floats, header_get

REAL = Path("/work/shared/testdata/real")


def _files() -> list[Path]:
    files = sorted((Path(pydicom.data.__file__).parent / "test_files").rglob("*.dcm"))  # bundled, no download
    if REAL.exists():
        files += sorted(p for p in REAL.rglob("*.dcm"))[:40]
    return files


def _outcome(get, ds, keyword):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            value = get(ds, keyword)
        except Exception as exc:  # the same failure is part of the contract
            return ("raises", type(exc))
    return ("value", type(value).__name__, value if not hasattr(value, "__iter__") or isinstance(value, str) else list(value))


def _keyword_pairs():
    """(path, fast copy, reference copy, tag, keyword) for every top-level element with a keyword; two
    separate reads, so a conversion on one copy cannot leak into the other."""
    for path in _files():
        try:
            fast, reference = (pydicom.dcmread(path, stop_before_pixels=True, force=True) for _ in range(2))
        except Exception:
            continue
        for tag in list(reference.keys()):
            keyword = pydicom.datadict.keyword_for_tag(tag)
            if keyword:
                yield path, fast, reference, tag, keyword


def test_every_top_level_value_matches_pydicom():
    checked = 0
    for path, fast, reference, _, keyword in _keyword_pairs():
        assert _outcome(header_get, fast, keyword) == _outcome(lambda d, k: d.get(k), reference, keyword), (path.name, keyword)
        checked += 1
    assert checked > 2000  # the bundled files alone hold several thousand values


def _floats_outcome(get, ds, keyword):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return ("value", get(ds, keyword))
        except Exception as exc:
            return ("raises", type(exc))


def _reference_floats(ds, keyword):
    value = ds.get(keyword)
    if value is None:
        return None
    return [float(v) for v in (value if isinstance(value, (list, pydicom.multival.MultiValue)) else [value])]


def test_every_decimal_string_parses_as_pydicom_parses_it():
    checked = 0
    for path, fast, reference, tag, keyword in _keyword_pairs():
        if reference.get_item(tag).VR not in ("DS", None) or pydicom.datadict.dictionary_VR(tag) != "DS":
            continue
        assert _floats_outcome(header_floats, fast, keyword) == _floats_outcome(_reference_floats, reference, keyword), (path.name, keyword)
        checked += 1
    assert checked > 300
