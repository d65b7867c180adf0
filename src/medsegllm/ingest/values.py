"""Header values as `Dataset.get` returns them, without pydicom's per-access bookkeeping.

The scan reads about twenty attributes from every file. Through `Dataset.get` each access converts
the raw element and then stores, re-reads and re-checks it (about 40 us, more than the parse of
the whole header); `pydicom.values.convert_value` on the raw element is the same conversion
without that. Only plain values take this path: sequences, ambiguous VRs, values pydicom has
already converted and any value whose conversion raises go through `Dataset.get`, so every
value, and every error a malformed value raises, is exactly pydicom's.
"""

from __future__ import annotations

from typing import Any

import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.multival import MultiValue
from pydicom.valuerep import AMBIGUOUS_VR
from pydicom.values import convert_value

CHARSET_TAG = 0x00080005  # SpecificCharacterSet: pydicom decodes it with the default encoding
_TAGS: dict[str, int] = {}
_FAST_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "SH", "SL", "SS", "TM", "UI", "UL", "US",
                       "FL", "FD"})
_CHARSET_VRS = frozenset({"LO", "SH"})  # of those, the ones decoded with the file's character set


def header_get(ds: pydicom.Dataset, keyword: str, default: Any = None) -> Any:
    """`ds.get(keyword, default)` for a standard keyword, with the same value and the same errors."""
    tag = _tag(keyword)
    if tag is None:  # not a plain keyword (a repeating group's, a typo): pydicom decides
        return ds.get(keyword, default)
    raw = ds.get_item(tag)
    if raw is None:
        return default
    # what Dataset.__getitem__ decodes text with; a dataset built in memory (no file) has none of its own
    encodings = ds.original_character_set
    if isinstance(raw, RawDataElement) and raw.value is not None and tag != CHARSET_TAG:
        vr = raw.VR or _dictionary_vr(tag)
        if vr in _FAST_VRS and vr not in AMBIGUOUS_VR and (encodings or vr not in _CHARSET_VRS):
            try:
                value = convert_value(vr, raw, encodings)
            except Exception:  # pydicom's own path below raises (or warns) exactly as it would
                pass
            else:
                return value
    return ds.get(keyword, default)


def header_floats(ds: pydicom.Dataset, keyword: str) -> list[float] | None:
    """`[float(v) for v in ds.get(keyword)]` (None when absent), parsing a decimal string's bytes
    directly: pydicom builds and validates a DSfloat per value first. Anything unusual goes the
    pydicom way, so errors stay pydicom's."""
    tag = _tag(keyword)
    raw = ds.get_item(tag) if tag is not None else None
    if isinstance(raw, RawDataElement) and raw.value and (raw.VR or _dictionary_vr(tag)) == "DS":
        try:
            return [float(v) for v in raw.value.decode("ascii").split("\\")]
        except (UnicodeDecodeError, ValueError):  # pydicom's path below decides
            pass
    value = header_get(ds, keyword)
    if value is None:
        return None
    return [float(v) for v in (value if isinstance(value, (list, MultiValue)) else [value])]


def _tag(keyword: str) -> int | None:
    """The keyword's tag, looked up once (None for a repeating group's keyword or a typo)."""
    if keyword not in _TAGS:
        _TAGS[keyword] = tag_for_keyword(keyword)
    return _TAGS[keyword]


def _dictionary_vr(tag: int) -> str | None:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None
