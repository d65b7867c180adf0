"""The hallucination guard: a finding keeps only values the knowledge base allows and the text supports.

Shared by the rule extractor and the LLM backends, so no backend can add an organ, location,
subtype, laterality or size that the report does not state: `check_sentence` re-reads each sentence
an LLM writes with the same extractor and accepts it only when it says exactly the grounded lesion.
"""

from __future__ import annotations

from medsegllm.knowledge import LATERALITIES, ORGANS, SUBTYPES
from medsegllm.reports import vocab

CERTAINTIES: tuple[str, ...] = ("possible", "probable", "definite")
NEGATED = "negated"
MAX_SENTENCE_CHARS = 300
LESION_FIELDS: tuple[str, ...] = ("organ", "location", "laterality", "size_mm", "subtype", "certainty")


def ground(candidate: dict, text: str, negated: bool = False) -> tuple[dict | None, int]:
    """Keep the values the knowledge base allows and the text supports; return the rest as a count.

    A positive lesion without a grounded organ is dropped whole (one count): the segmentation classes
    only know liver and kidney lesions. Negated findings may lack an organ ("no metastasis").
    """
    dropped = 0
    organ = candidate.get("organ")
    if organ is not None and (organ not in ORGANS or not vocab.supports(_organ_terms(organ), text)):
        organ, dropped = None, dropped + 1
    if organ is None and not negated:
        return None, max(dropped, 1)
    location = candidate.get("location")
    if location is not None and (
        organ is None
        or location not in ORGANS[organ]["sublocations"]
        or not vocab.supports(ORGANS[organ]["sublocations"][location], text)
    ):
        location, dropped = None, dropped + 1
    laterality = candidate.get("laterality")
    if laterality is not None and (
        laterality not in LATERALITIES or organ not in vocab.PAIRED_ORGANS or not vocab.supports([laterality], text)
    ):
        laterality, dropped = None, dropped + 1
    subtype = candidate.get("subtype")
    if subtype is not None and (
        subtype not in SUBTYPES
        or (organ is not None and organ not in SUBTYPES[subtype]["organs"])
        or not vocab.supports(SUBTYPES[subtype]["synonyms"], text)
    ):
        subtype, dropped = None, dropped + 1
    size = candidate.get("size_mm")
    if size is not None and not _size_supported(size, text):
        size, dropped = None, dropped + 1
    certainty = candidate.get("certainty")
    allowed = (NEGATED,) if negated else CERTAINTIES
    if certainty not in allowed:
        certainty, dropped = (NEGATED if negated else "possible"), dropped + 1
    return entry(organ, location, laterality, size, subtype, certainty), dropped


def _organ_terms(organ: str) -> list[str]:
    """Words that name an organ: its synonyms, its sublocations, subtypes that occur only there."""
    known = ORGANS[organ]
    implied_by_subtype = [s for st in SUBTYPES.values() if st["organs"] == [organ] for s in st["synonyms"]]
    return known["synonyms"] + [s for syns in known["sublocations"].values() for s in syns] + implied_by_subtype


def _size_supported(size: float, text: str) -> bool:
    try:
        value = float(size)
    except (TypeError, ValueError):
        return False
    return 0.5 <= value <= 300.0 and any(abs(found - value) < 0.05 for _, _, found, _ in vocab.find_sizes(text))


def entry(
    organ: str | None,
    location: str | None,
    laterality: str | None,
    size_mm: float | None,
    subtype: str | None,
    certainty: str,
) -> dict:
    """The lesion record every stage reads from lesions_json / negated_json."""
    return {
        "organ": organ,
        "location": location,
        "laterality": laterality,
        "size_mm": None if size_mm is None else float(size_mm),
        "subtype": subtype,
        "certainty": certainty,
    }


def check_sentence(sentence: str, lesion: dict | None) -> str | None:
    """Why an LLM sentence does not state exactly one grounded lesion (None: it does).

    `lesion` None stands for a report without lesions: the sentence must then negate and name no
    lesion, subtype or size. Otherwise the sentence, read by the rule extractor, must give exactly one
    lesion whose every field equals the grounded one, and mention no other organ, subtype or size.
    """
    from medsegllm.reports.extract import extract_findings  # extract imports this module

    text = sentence.strip()
    if not text or len(text) > MAX_SENTENCE_CHARS or "\n" in text:
        return "shape"
    found = extract_findings(text)
    if found.skipped_sentences:
        return "instruction"
    organs = {v for _, _, v in vocab.organ_matcher().find(text)} | {v[0] for _, _, v in vocab.location_matcher().find(text)}
    subtypes = {v for _, _, v in vocab.subtype_matcher().find(text)}
    sizes = {size for _, _, size, _ in vocab.find_sizes(text)}
    if lesion is None:
        if found.lesions or subtypes or sizes or not found.negated:
            return "negative"
        return None
    if found.negated or len(found.lesions) != 1:
        return "lesion_count"
    if organs - {lesion["organ"]} or subtypes - {lesion["subtype"]} or sizes - {lesion["size_mm"]}:
        return "extra_mention"
    got = found.lesions[0]
    return next((key for key in LESION_FIELDS if got[key] != lesion[key]), None)
