"""Description backends: grounded findings -> one normalized medical description per report.

The description is what the text encoder embeds for the alignment loss, so it must say only what
the findings say. Backends share one small protocol; offline LLM backends will implement the same.
"""

from __future__ import annotations

from typing import Protocol

from medsegllm.config import ReportsParams
from medsegllm.knowledge import SUBTYPES

NO_LESION = "No focal liver or renal lesion."
_CERTAINTY_PREFIX = {"possible": "Possible ", "probable": "Probable ", "definite": ""}


class Backend(Protocol):
    name: str
    model_id: str

    def describe(self, findings: list[dict]) -> list[str]:
        """One description per findings dict (`extract.Findings.as_dict()`), in order."""
        ...


class RulesBackend:
    """Deterministic templates over the grounded findings and the knowledge base's appearance text."""

    name = "rules"
    model_id = "rules-kb"

    def describe(self, findings: list[dict]) -> list[str]:
        return [describe_findings(f) for f in findings]


def describe_findings(findings: dict) -> str:
    """Largest lesion first; 'No focal liver or renal lesion.' when there is none."""
    lesions = sorted(findings["lesions"], key=lambda lesion: -(lesion["size_mm"] or 0.0))
    if not lesions:
        return NO_LESION
    return " ".join(_describe_lesion(lesion) for lesion in lesions)


def _describe_lesion(lesion: dict) -> str:
    subtype = SUBTYPES.get(lesion["subtype"]) if lesion["subtype"] else None
    name = subtype["name"] if subtype else "focal lesion"
    head = _CERTAINTY_PREFIX.get(lesion["certainty"], "") + name
    head = head[0].upper() + head[1:]
    size = f", {lesion['size_mm']:g} mm" if lesion["size_mm"] is not None else ""
    organ = f"{lesion['laterality']} {lesion['organ']}" if lesion["laterality"] else lesion["organ"]
    where = f"in the {lesion['location']} of the {organ}" if lesion["location"] else f"in the {organ}"
    look = f": {subtype['appearance']}" if subtype else ""
    return f"{head}{size}, {where}{look}."


def get_backend(params: ReportsParams) -> Backend:
    """The backend params.backend names."""
    backends = {"rules": RulesBackend}
    if params.backend not in backends:
        raise ValueError(f"unknown reports backend {params.backend!r}; known: {sorted(backends)}")
    return backends[params.backend]()
