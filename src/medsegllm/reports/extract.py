"""Rule-based structured findings from scrubbed report text, grounded in the knowledge base.

A report is read sentence by sentence, each sentence clause by clause. Negation cues mark spans
whose lesion mentions go to the negated list; uncertainty cues set a lesion's certainty but keep it
a finding. Every candidate passes `guard.ground` before it is kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from medsegllm.knowledge import SUBTYPES
from medsegllm.reports import vocab
from medsegllm.reports.guard import CERTAINTIES, NEGATED, entry, ground

_INSTRUCTION = re.compile(
    r"\b(?:ignore|disregard|instructions?|system\s+prompt|you\s+are|assistant|override|pretend)\b", re.I
)
_ABBREVIATIONS = {"dr", "mr", "mrs", "ms", "st", "prof", "approx", "e.g", "i.e", "vs", "fig", "no"}
_SENTENCE_END = re.compile(r"\n+|[.!?](?=\s|$)")
_HEADING = re.compile(r"^\s*[A-Za-z][A-Za-z /&-]*:\s*$")
_CLAUSE_BREAK = re.compile(
    r";|\b(?:but|however|although|though|whereas|while|except|apart\s+from|aside\s+from|"
    r"with\s+the\s+exception\s+of)\b|,?\s+and\s+(?=(?:a|an|another|one|two|several|multiple|the|no)\b)|"
    r",?\s+as\s+well\s+as\b",
    re.I,
)
# Uncertainty is read first and hidden from the negation rules ("cannot be excluded" is no negation).
_POSSIBLE = (
    r"can\s*not\s+(?:be\s+)?(?:excluded?|ruled\s+out)|not\s+(?:be\s+)?excluded|possibl[ey]|suspicious\s+(?:for|of)|"
    r"suspected|concerning\s+for|questionable|equivocal|indeterminate|(?:may|might|could)\s+represent"
)
_PROBABLE = r"most\s+likely|likely|probabl[ey]|suggestive\s+of|favou?red|presumed"
_UNCERTAIN = re.compile(rf"\b(?:(?P<possible>{_POSSIBLE})|(?P<probable>{_PROBABLE}))\b", re.I)
_PSEUDO_NEGATION = re.compile(r"\bno\s+(?:significant\s+|interval\s+)?change\b", re.I)
_PRE_NEGATION = re.compile(
    r"\b(?:no|without|negative\s+for|free\s+of|absence\s+of)\b", re.I
)
_POST_NEGATION = re.compile(
    r"\b(?:unremarkable|unlikely|not\s+(?:seen|identified|visuali[sz]ed|demonstrated|present|detected|appreciated)|"
    r"(?:is|are|was|were|has\s+been|have\s+been)\s+(?:excluded|ruled\s+out)|"
    r"(?:normal|absent)(?=\s*(?:[.,;]|$)))",
    re.I,
)
_NOT_ALL_NORMAL = re.compile(r"\b(?:otherwise|remainder|rest\s+of)\b", re.I)
# A comma followed by one of these ends a negation's scope ("without washout, likely metastasis").
_SCOPE_END = re.compile(
    rf",\s*(?:{_PROBABLE}|{_POSSIBLE}|consistent|in\s+keeping|compatible|suggest|which|representing)\b", re.I
)
_BENIGN = re.compile(r"\b(?:cysts?|cystic|ha?emangiomas?|angiomyolipomas?|benign|granulomas?)\b", re.I)

Span = tuple[int, int]


@dataclass
class Findings:
    """One report's grounded findings and what the guard refused."""

    lesions: list[dict] = field(default_factory=list)
    negated: list[dict] = field(default_factory=list)
    dropped_fields: int = 0
    skipped_sentences: int = 0

    @property
    def tumour_present(self) -> bool:
        return bool(self.lesions)

    def largest(self) -> dict | None:
        """The lesion with the largest size (unsized lesions rank last); the first on ties."""
        if not self.lesions:
            return None
        return max(self.lesions, key=lambda lesion: lesion["size_mm"] if lesion["size_mm"] is not None else -1.0)

    @property
    def max_size_mm(self) -> float | None:
        sizes = [lesion["size_mm"] for lesion in self.lesions if lesion["size_mm"] is not None]
        return max(sizes) if sizes else None

    def as_dict(self) -> dict:
        largest = self.largest()
        return {
            "tumour_present": self.tumour_present,
            "subtype": largest["subtype"] if largest else None,
            "organ": largest["organ"] if largest else None,
            "max_size_mm": self.max_size_mm,
            "lesions": self.lesions,
            "negated": self.negated,
            "dropped_fields": self.dropped_fields,
            "skipped_sentences": self.skipped_sentences,
        }


def split_sentences(text: str) -> list[str]:
    """Sentences and lines; a period after an abbreviation ("Dr.") or inside a number does not split."""
    out, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        if m.group() == "." and _previous_word(text, m.start()) in _ABBREVIATIONS:
            continue
        piece = text[start : m.end()].strip()
        if piece:
            out.append(piece)
        start = m.end()
    if text[start:].strip():
        out.append(text[start:].strip())
    return out


def _previous_word(text: str, end: int) -> str:
    match = re.search(r"([A-Za-z.]+)$", text[:end])
    return match.group(1).lower().strip(".") if match else ""


def extract_findings(text: str) -> Findings:
    """Grounded lesions and negated findings of one scrubbed report."""
    findings = Findings()
    section, section_organs = 0, []
    candidates: list[tuple[dict, int]] = []
    negated: list[dict] = []
    for sentence in split_sentences(text):
        if _INSTRUCTION.search(sentence):
            findings.skipped_sentences += 1
            continue
        reader = _SentenceReader(sentence, section_organs)
        if _HEADING.match(sentence):
            section, section_organs = section + 1, reader.organs_in([(0, len(sentence))])
        lesions, negs = reader.read()
        candidates += [(lesion, section) for lesion in lesions]
        negated += negs
    sections: list[int] = []
    for candidate, candidate_section in candidates:
        lesion, dropped = ground(candidate, text)
        findings.dropped_fields += dropped
        if lesion is not None:
            _merge_into(findings.lesions, sections, lesion, candidate_section)
    for candidate in negated:
        entry, dropped = ground(candidate, text, negated=True)
        findings.dropped_fields += dropped
        if entry is not None and entry not in findings.negated:
            findings.negated.append(entry)
    return findings


class _SentenceReader:
    """All mentions of one sentence by position, read clause by clause."""

    def __init__(self, sentence: str, section_organs: list[str]):
        self.text = sentence
        self.section_organs = section_organs
        self.subtypes = vocab.subtype_matcher().find(sentence)
        self.locations = vocab.location_matcher().find(sentence)
        # "renal" inside "renal cell carcinoma" names the subtype, not where the lesion is.
        self.organs = [m for m in vocab.organ_matcher().find(sentence) if not _inside(m, self.subtypes)]
        generic = [(m.start(), m.end(), None) for m in vocab.generic_lesion_pattern().finditer(sentence)]
        self.anchors = sorted(self.subtypes + [g for g in generic if not _inside(g, self.subtypes)])
        self.sizes = vocab.find_sizes(sentence)
        self.lateralities = vocab.find_lateralities(sentence, self.locations)

    def read(self) -> tuple[list[dict], list[dict]]:
        lesions: list[dict] = []
        negated: list[dict] = []
        for clause in _clauses(self.text):
            negated_spans = self._negated_spans(clause)
            positive = _subtract(clause, negated_spans)
            for span in negated_spans:
                negated += self._negated_entries(span, positive)
            certainty = _certainty(self.text[clause[0] : clause[1]])
            for group in self._lesion_groups(positive):
                lesions.append(self._lesion(group, positive, certainty))
        return [lesion for lesion in lesions if lesion is not None], negated

    def _negated_spans(self, clause: Span) -> list[Span]:
        start, end = clause
        raw = self.text[start:end]
        text = _mask(_UNCERTAIN, _mask(_PSEUDO_NEGATION, raw))
        spans = []
        for m in _PRE_NEGATION.finditer(text):
            stop = _SCOPE_END.search(raw, m.end())
            spans.append((start + m.start(), start + (stop.start() if stop else len(text))))
        if not _NOT_ALL_NORMAL.search(text):
            for m in _POST_NEGATION.finditer(text):
                comma = text.rfind(",", 0, m.start())
                spans.append((start + comma + 1, start + m.end()))
        return _union(spans)

    def _negated_entries(self, span: Span, positive: list[Span]) -> list[dict]:
        """Negated organ/subtype combinations of a span; the organ may come from the clause's lead-in."""
        anchors = _within(self.anchors, [span])
        organs = self.organs_in([span])
        is_post = bool(_POST_NEGATION.search(self.text[span[0] : span[1]]))
        if not anchors and not (is_post and organs):
            return []
        if not organs and not _within(self.anchors, positive):
            organs = self.organs_in(positive) or self.section_organs
        subtypes = [v for _, _, v in _within(self.subtypes, [span])] or [None]
        sides = [v for _, _, v in _within(self.lateralities, [span])]
        entries = []
        for organ in organs or [None]:
            for subtype in dict.fromkeys(subtypes):
                side = sides[0] if organ in vocab.PAIRED_ORGANS and len(set(sides)) == 1 else None
                entries.append(entry(organ, None, side, None, subtype, NEGATED))
        return entries

    def _lesion_groups(self, positive: list[Span]) -> list[list[Span]]:
        """Comma parts of the clause's positive text, one group per lesion.

        A part starts a new lesion only when it names a lesion and has its own size, location or organ;
        otherwise it describes the lesion before it ("mass in segment VI, likely HCC").
        """
        groups: list[list[Span]] = []
        prefix: list[Span] = []
        for part in _comma_parts(self.text, positive):
            has_anchor = bool(_within(self.anchors, [part]))
            own = _within(self.sizes, [part]) or _within(self.locations, [part]) or _within(self.organs, [part])
            if not has_anchor:
                (groups[-1] if groups else prefix).append(part)
            elif groups and not own:
                groups[-1].append(part)
            else:
                groups.append(prefix + [part])
                prefix = []
        return groups

    def _lesion(self, group: list[Span], positive: list[Span], certainty: str) -> dict | None:
        group_text = " ".join(self.text[s:e] for s, e in group)
        subtypes = [v for _, _, v in _within(self.subtypes, group)]
        if _BENIGN.search(group_text) and not subtypes:
            return None
        anchor = _within(self.anchors, group)[0][0]
        locations = _nearest(_within(self.locations, group) or _within(self.locations, positive), anchor)
        organ = self._organ(group, positive, subtypes, locations, anchor)
        location = locations[0][1] if locations else None
        sizes = [m for m in _within(self.sizes, group) if not m[3]]
        size = min(sizes, key=lambda m: abs(m[0] - anchor))[2] if sizes else None
        side = None
        if organ in vocab.PAIRED_ORGANS:
            for scope in (group, positive, [(0, len(self.text))]):
                sides = {v for _, _, v in _within(self.lateralities, scope)}
                if sides:
                    side = sides.pop() if len(sides) == 1 else None
                    break
        allowed = [s for s in subtypes if organ in SUBTYPES[s]["organs"]]
        subtype = (allowed or subtypes or [None])[0]
        return entry(organ, location, side, size, subtype, certainty)

    def _organ(
        self, group: list[Span], positive: list[Span], subtypes: list[str], locations: list, anchor: int
    ) -> str | None:
        """Nearest organ word, else the organ a sublocation or subtype implies, else the sentence's or section's."""
        found = _nearest(_within(self.organs, group), anchor)
        if found:
            return found[0]
        if locations:
            return locations[0][0]
        found = _nearest(_within(self.organs, positive), anchor)
        if found:
            return found[0]
        implied = {o for s in subtypes for o in SUBTYPES[s]["organs"]}
        if len(implied) == 1:
            return implied.pop()
        found = _nearest(self.organs + [(s, e, v[0]) for s, e, v in self.locations], anchor)
        if found:
            return found[0]
        return self.section_organs[0] if len(self.section_organs) == 1 else None

    def organs_in(self, spans: list[Span]) -> list[str]:
        found = _within(self.organs, spans) + [(s, e, v[0]) for s, e, v in _within(self.locations, spans)]
        return list(dict.fromkeys(v for _, _, v in sorted(found)))


def _merge_into(lesions: list[dict], sections: list[int], new: dict, section: int) -> None:
    """Fold a repeat mention (the impression restating a finding) into the lesion it repeats.

    Two mentions are one lesion when they share the organ and no attribute contradicts. Two sized
    mentions in the same report section are two lesions (a findings list); across sections (findings
    vs impression) they are one when the sizes agree within 10 %. The merged lesion keeps every known
    attribute and the lower certainty.
    """
    keys = ("location", "laterality", "subtype")
    for i, lesion in enumerate(lesions):
        if lesion["organ"] != new["organ"] or any(lesion[k] and new[k] and lesion[k] != new[k] for k in keys):
            continue
        a, b = lesion["size_mm"], new["size_mm"]
        if a is not None and b is not None and (sections[i] == section or abs(a - b) > max(1.0, 0.1 * max(a, b))):
            continue
        for key in (*keys, "size_mm"):
            if lesion[key] is None:
                lesion[key] = new[key]
        lesion["certainty"] = min(lesion["certainty"], new["certainty"], key=CERTAINTIES.index)
        return
    lesions.append(new)
    sections.append(section)


def _certainty(clause: str) -> str:
    found = {name for m in _UNCERTAIN.finditer(clause) for name, value in m.groupdict().items() if value}
    return "possible" if "possible" in found else "probable" if "probable" in found else "definite"


def _clauses(sentence: str) -> list[Span]:
    spans, start = [], 0
    for m in _CLAUSE_BREAK.finditer(sentence):
        spans.append((start, m.start()))
        start = m.end()
    spans.append((start, len(sentence)))
    return [s for s in spans if s[1] > s[0]]


def _comma_parts(text: str, spans: list[Span]) -> list[Span]:
    parts = []
    for start, end in spans:
        cursor = start
        for m in re.finditer(r",(?!\d)", text[start:end]):
            parts.append((cursor, start + m.start()))
            cursor = start + m.end()
        parts.append((cursor, end))
    return [p for p in parts if text[p[0] : p[1]].strip()]


def _mask(pattern: re.Pattern, text: str) -> str:
    """Blank matches out, keeping positions."""
    return pattern.sub(lambda m: " " * len(m.group()), text)


def _inside(mention: tuple, spans: list) -> bool:
    return any(s <= mention[0] and mention[1] <= e for s, e, *_ in spans)


def _within(mentions: list, spans: list[Span]) -> list:
    return [m for m in mentions if any(s <= m[0] and m[1] <= e for s, e in spans)]


def _nearest(mentions: list, position: int) -> list:
    """Mention values ordered by distance from a position."""
    return [m[2] for m in sorted(mentions, key=lambda m: min(abs(m[0] - position), abs(m[1] - position)))]


def _union(spans: list[Span]) -> list[Span]:
    out: list[Span] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _subtract(clause: Span, holes: list[Span]) -> list[Span]:
    out, cursor = [], clause[0]
    for start, end in holes:
        if start > cursor:
            out.append((cursor, start))
        cursor = max(cursor, end)
    if cursor < clause[1]:
        out.append((cursor, clause[1]))
    return out
