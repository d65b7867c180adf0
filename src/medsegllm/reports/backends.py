"""Description backends: grounded findings -> one normalized medical description per report.

The description is what the text encoder embeds for the alignment loss, so it must say only what
the findings say. Backends share one small protocol: `rules` here, the LLM backends (`smollm2`, `hf`,
`openai`) in `medsegllm.reports.llm`, each of which falls back to `rules` where the guard refuses.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Protocol

from medsegllm.config import ReportsParams
from medsegllm.knowledge import SUBTYPES

NO_LESION = "No focal liver or renal lesion."
_CERTAINTY_PREFIX = {"possible": "Possible ", "probable": "Probable ", "definite": ""}


class Description(NamedTuple):
    text: str
    backend: str  # who wrote it: an LLM backend, or `rules` where the guard refused the LLM's text
    model_id: str


class Backend(Protocol):
    name: str
    model_id: str
    stats: dict  # counts for summary.json (LLM backends: accepted, rejected, cache hits, ...)

    def describe(self, findings: list[dict]) -> list[Description]:
        """One description per findings dict (`extract.Findings.as_dict()`), in order."""
        ...


class RulesBackend:
    """Deterministic templates over the grounded findings and the knowledge base's appearance text."""

    name = "rules"
    model_id = "rules-kb"

    def __init__(self) -> None:
        self.stats: dict = {}

    def describe(self, findings: list[dict]) -> list[Description]:
        return [Description(describe_findings(f), self.name, self.model_id) for f in findings]


def ordered_lesions(findings: dict) -> list[dict]:
    """Largest lesion first (unsized last), the order every backend describes them in."""
    return sorted(findings["lesions"], key=lambda lesion: -(lesion["size_mm"] or 0.0))


def describe_findings(findings: dict) -> str:
    """Largest lesion first; 'No focal liver or renal lesion.' when there is none."""
    lesions = ordered_lesions(findings)
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
    """The backend params.backend names (config.ReportsParams checks each one's settings)."""
    if params.backend == "rules":
        return RulesBackend()
    from medsegllm.reports.llm.describe import LLMBackend
    from medsegllm.reports.llm.local import TransformersGenerator, folder_model_id, smollm2_generator
    from medsegllm.reports.llm.remote import OpenAIGenerator

    llm = params.llm
    if params.backend == "smollm2":
        generator = smollm2_generator(llm.max_new_tokens, llm.batch_size, llm.threads)
    elif params.backend == "hf":
        folder = Path(params.hf.model_dir)
        generator = TransformersGenerator(folder, folder_model_id(folder), llm.max_new_tokens, llm.batch_size,
                                          threads=llm.threads)
    elif params.backend == "openai":
        api = params.openai
        generator = OpenAIGenerator(api.base_url, api.model, api.api_key_env, llm.max_new_tokens, api.timeout_s,
                                    api.concurrency)
    else:
        raise ValueError(f"unknown reports backend {params.backend!r}")
    cache_dir = Path(llm.cache_dir) if llm.cache_dir else None
    return LLMBackend(params.backend, generator, params.prompt_version, llm.max_new_tokens, cache_dir)
