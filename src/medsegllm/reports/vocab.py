"""Term matchers built from the knowledge base, so extraction can only name what it knows.

Each matcher returns mentions as (start, end, value) over the text it is given; values are knowledge
keys (organ, (organ, sublocation), subtype key). Built once per process, on first use.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from medsegllm.knowledge import ORGANS, SUBTYPES

Mention = tuple[int, int, object]

# Organs that come in pairs, where laterality is part of the location.
PAIRED_ORGANS: tuple[str, ...] = tuple(organ for organ, entry in ORGANS.items() if entry["bodies"] == 2)

# Nouns that name a focal lesion without a subtype.
_GENERIC_LESION = r"lesions?|mass(?:es)?|tumou?rs?|nodules?|neoplasms?|malignanc(?:y|ies)|carcinomas?|cancers?"

_NUM = r"\d+(?:[.,]\d+)?"
_UNIT = r"(?:mm|cm|millimet(?:er|re)s?|centimet(?:er|re)s?)(?![a-z])"
_SIZE = re.compile(
    rf"(?<![\w.,]){_NUM}(?:\s*{_UNIT})?(?:\s*(?:x|×|by|\*)\s*{_NUM}(?:\s*{_UNIT})?){{0,2}}", re.I
)
_SIZE_PART = re.compile(rf"({_NUM})\s*({_UNIT})?", re.I)
# A size that follows these words is an earlier measurement, not the current one.
_PRIOR_SIZE = re.compile(r"(?:previous(?:ly)?|prior|formerly|from|was|were|compared (?:to|with))\W+(?:\w+\W+){0,2}$", re.I)
_LATERALITY = re.compile(r"\b(left|right)\b", re.I)


@dataclass(frozen=True)
class _Matcher:
    pattern: re.Pattern
    values: dict[str, object]

    def find(self, text: str) -> list[Mention]:
        return [(m.start(), m.end(), self.values[_norm(m.group("t"))]) for m in self.pattern.finditer(text)]


def _norm(term: str) -> str:
    return re.sub(r"\s+", " ", term.lower().strip())


def _matcher(values: dict[str, object], plural: str = "s?") -> _Matcher:
    """Longest synonym first, whole words only, optional plural ending."""
    terms = sorted(values, key=len, reverse=True)
    alternation = "|".join(r"\s+".join(map(re.escape, t.split())) for t in terms)
    return _Matcher(re.compile(rf"\b(?P<t>{alternation})(?:{plural})\b", re.I), values)


@functools.cache
def organ_matcher() -> _Matcher:
    return _matcher({_norm(s): organ for organ, entry in ORGANS.items() for s in entry["synonyms"]})


@functools.cache
def location_matcher() -> _Matcher:
    return _matcher(
        {
            _norm(s): (organ, key)
            for organ, entry in ORGANS.items()
            for key, synonyms in entry["sublocations"].items()
            for s in synonyms
        },
        plural="",
    )


@functools.cache
def subtype_matcher() -> _Matcher:
    return _matcher({_norm(s): key for key, entry in SUBTYPES.items() for s in entry["synonyms"]}, plural="s|es|")


@functools.cache
def generic_lesion_pattern() -> re.Pattern:
    return re.compile(rf"\b(?:{_GENERIC_LESION})\b", re.I)


def find_sizes(text: str) -> list[tuple[int, int, float, bool]]:
    """Sizes in mm as (start, end, max diameter, is_prior_measurement); bare numbers are skipped."""
    out = []
    for m in _SIZE.finditer(text):
        parts = _SIZE_PART.findall(m.group())
        if not parts[-1][1]:
            continue
        values, unit = [], parts[-1][1]
        for number, own_unit in reversed(parts):
            unit = own_unit or unit
            values.append(float(number.replace(",", ".")) * (10.0 if unit.lower().startswith("c") else 1.0))
        prior = bool(_PRIOR_SIZE.search(text[max(0, m.start() - 40) : m.start()]))
        out.append((m.start(), m.end(), round(max(values), 1), prior))
    return out


def find_lateralities(text: str, exclude: list[Mention]) -> list[Mention]:
    """left/right words that are not part of a sublocation name ("right lobe")."""
    return [
        (m.start(), m.end(), m.group(1).lower())
        for m in _LATERALITY.finditer(text)
        if not any(s <= m.start() < e for s, e, _ in exclude)
    ]


def supports(pattern_terms: list[str], text: str) -> bool:
    """Whether any of the terms occurs in the text as whole words (the hallucination guard's test)."""
    return any(re.search(r"\b" + r"\s+".join(map(re.escape, t.split())), text, re.I) for t in pattern_terms)
