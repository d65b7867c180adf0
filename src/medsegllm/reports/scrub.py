"""Remove protected health information from free-text reports.

Runs on the raw text before extraction, description or storage sees it, so nothing downstream can
leak an identifier. Rules favour recall: a scrubbed word that was not PHI costs little, a missed name
costs a breach. Each identifier is replaced by a tag that keeps the sentence readable.
"""

from __future__ import annotations

import re

_MONTH = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|"
    r"sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
)
# A capitalised name word or an initial; names in DICOM style (SMITH^JOHN) keep their carets.
# A report keyword or a word followed by a colon is the next field's label ("MRN:"), not part of the name.
_NOT_NAME = (
    r"(?!(?i:signed|dictated|reported|read|reviewed|date|exam|study|findings|impression|history|"
    r"clinical|technique|comparison|indication|was|is|has|age|sex|dob|mrn)\b)"
)
_NAME_WORD = rf"{_NOT_NAME}(?:[A-Z]\.|[A-Z][A-Za-z'\-\^]*+)(?![ \t]*:)"
_NAME = rf"{_NAME_WORD}(?:,?[ \t]+{_NAME_WORD}){{0,3}}"

_EMAIL = re.compile(r"\b[\w.+\-]+@[\w\-]+(?:\.[\w\-]+)+\b")
_INSTITUTION = re.compile(
    r"\b(?:(?:St\.?|Saint)[ \t]+)?(?:[A-Z][\w'&\-.]*[ \t]+(?:(?:of|the|and|&)[ \t]+)*){1,5}"
    r"(?i:hospital|clinic|medical[ \t]+cent(?:er|re)|health(?:care)?(?:[ \t]+system)?|infirmary|"
    r"cancer[ \t]+cent(?:er|re)|imaging[ \t]+cent(?:er|re))\b"
    r"(?:[ \t]+of[ \t]+(?:the[ \t]+)?[A-Z][\w'\-]*(?:[ \t]+[A-Z][\w'\-]*){0,3})?"
)
_ADDRESS = re.compile(
    r"\b\d{1,5}[ \t]+(?:[A-Z][A-Za-z]*\.?[ \t]+){1,4}"
    r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|Terrace|"
    r"Parkway|Pkwy|Highway|Hwy|Square|Sq)\b\.?"
    r"(?:,?[ \t]*(?:Apt|Suite|Unit|#)\.?[ \t]*\w+)?"
    r"(?:,[ \t]*[A-Z][A-Za-z]+(?:[ \t]+[A-Z][A-Za-z]+)*)?"
    r"(?:,?[ \t]*[A-Z]{2})?(?:[ \t]+\d{5}(?:-\d{4})?)?"
)
_PHONE = re.compile(
    r"(?:(?i:tel|phone|fax|pager|ph)\.?[ \t]*[:#]?[ \t]*)?"
    r"(?<![\w.])(?:\+?\d{1,3}[ \t.\-]?)?\(?\d{3}\)?[ \t.\-]?\d{3}[ \t.\-]\d{4}(?:[ \t]*(?:x|ext\.?)[ \t]*\d{1,5})?\b"
)
_DATES = [
    re.compile(r"\b\d{1,2}[/.\-]\d{1,2}[/.\-](?:\d{4}|\d{2})\b"),
    re.compile(r"\b\d{4}[/.\-]\d{1,2}[/.\-]\d{1,2}\b"),
    re.compile(rf"\b\d{{1,2}}(?:st|nd|rd|th)?[ \t]+(?:of[ \t]+)?{_MONTH}\.?,?[ \t]+\d{{2,4}}\b", re.I),
    re.compile(rf"\b{_MONTH}\.?[ \t]+\d{{1,2}}(?:st|nd|rd|th)?,?[ \t]+\d{{4}}\b", re.I),
    re.compile(rf"\b{_MONTH}\.?,?[ \t]+\d{{4}}\b", re.I),
    re.compile(r"\b(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\b"),
]
_ID_CUE = re.compile(
    r"(?i:\b(?:mrn|medical[ \t]+record(?:[ \t]+(?:number|no\.?))?|record[ \t]*(?:number|no\.?)|"
    r"accession(?:[ \t]+(?:number|no\.?))?|acc\.?|patient[ \t]+id|study[ \t]+id|case[ \t]+(?:number|no\.?)|"
    r"ssn|id|hospital[ \t]+(?:number|no\.?))[ \t]*(?:[:#]|is)?[ \t]*#?[ \t]*)"
    r"((?=[A-Za-z0-9\-/]*\d)[A-Za-z0-9][A-Za-z0-9\-/]*)"
)
_LONG_NUMBER = re.compile(r"\b[A-Z]{0,4}\d{6,}\b")
# Cues that are followed by a person's name. Generic words (Patient, Name) need a colon.
_NAME_AFTER_COLON = re.compile(
    rf"(?i:\b(?:patient(?:'s)?(?:[ \t]+name)?|(?<!study )(?<!protocol )name|pt|referring(?:[ \t]+(?:physician|doctor|clinician))?|"
    rf"physician|radiologist|attending|technologist|consultant|clinician)[ \t]*:[ \t]*)(?:(?:Dr|Mr|Mrs|Ms|Miss|Prof)\.?[ \t]+)?({_NAME})"
)
_NAME_AFTER_PHRASE = re.compile(
    rf"(?i:\b(?:(?:electronically[ \t]+)?signed|dictated|reported|read|interpreted|reviewed|referred|"
    rf"transcribed|verified)[ \t]+by[ \t]*:?[ \t]*)(?:(?:Dr|Mr|Mrs|Ms|Miss|Prof)\.?[ \t]+)?({_NAME})"
)
_NAME_AFTER_TITLE = re.compile(rf"\b(?:Dr|Mr|Mrs|Ms|Miss|Prof)\.?[ \t]+({_NAME})")


def _replace(pattern: re.Pattern, tag: str, text: str, keep_cue: bool) -> tuple[str, int]:
    """Replace each match, or with keep_cue only its first group ("Patient: [NAME]")."""
    if not keep_cue:
        return pattern.subn(tag, text)
    count = 0

    def sub(match: re.Match) -> str:
        nonlocal count
        count += 1
        start, end = (i - match.start() for i in match.span(1))
        return match.group(0)[:start] + tag + match.group(0)[end:]

    return pattern.sub(sub, text), count


def scrub_phi(text: str) -> tuple[str, int]:
    """Return the scrubbed text and how many identifiers were replaced.

    Order matters: multi-word identifiers (emails, institutions, addresses) go before names, and
    dates and phone numbers before the generic ID rules that would split them.
    """
    rules = [
        (_EMAIL, "[EMAIL]", False),
        (_INSTITUTION, "[INSTITUTION]", False),
        (_ADDRESS, "[ADDRESS]", False),
        (_NAME_AFTER_COLON, "[NAME]", True),
        (_NAME_AFTER_PHRASE, "[NAME]", True),
        (_NAME_AFTER_TITLE, "[NAME]", True),
        *[(pattern, "[DATE]", False) for pattern in _DATES],
        (_PHONE, "[PHONE]", False),
        (_ID_CUE, "[ID]", True),
        (_LONG_NUMBER, "[ID]", False),
    ]
    total = 0
    for pattern, tag, keep_cue in rules:
        text, n = _replace(pattern, tag, text, keep_cue)
        total += n
    return text, total
