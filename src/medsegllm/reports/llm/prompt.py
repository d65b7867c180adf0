"""The chat prompt: one grounded lesion (knowledge-base values only) -> one descriptive sentence.

Report text never enters the prompt: the model sees only the fields the extractor grounded, spelled
with knowledge-base names, so instructions hidden in a report cannot reach it. One lesion per prompt
keeps the task within reach of a 135 M-parameter model and makes each sentence checkable on its own.
"""

from __future__ import annotations

from medsegllm.knowledge import SUBTYPES

SYSTEM = (
    "Write one sentence of a radiology report from the structured finding. Keep the finding, size "
    "and site exactly as written; add no other finding, organ, size or advice."
)
NEGATIVE_FACTS = "finding: none in the liver or kidneys"

# Worked examples: single lesions, so the model copies the one-sentence shape.
_SHOTS: tuple[tuple[dict | None, str], ...] = (
    (
        {"organ": "liver", "location": "left lobe", "laterality": None, "size_mm": 18.0,
         "subtype": "metastasis", "certainty": "possible"},
        "Possible metastasis of 18 mm in the left lobe of the liver.",
    ),
    (
        {"organ": "kidney", "location": "lower pole", "laterality": "right", "size_mm": 41.0,
         "subtype": "rcc", "certainty": "definite"},
        "Renal cell carcinoma of 41 mm in the lower pole of the right kidney.",
    ),
    (
        {"organ": "liver", "location": None, "laterality": None, "size_mm": 25.0,
         "subtype": "hcc", "certainty": "probable"},
        "Probable hepatocellular carcinoma of 25 mm in the liver.",
    ),
    (None, "No focal liver or renal lesion."),
)


def lesion_facts(lesion: dict | None) -> str:
    """The grounded fields of one lesion as `key: value` lines (None: a report without lesions)."""
    if lesion is None:
        return NEGATIVE_FACTS
    subtype = SUBTYPES[lesion["subtype"]]["name"] if lesion["subtype"] else "focal lesion"
    organ = f"{lesion['laterality']} {lesion['organ']}" if lesion["laterality"] else lesion["organ"]
    site = f"the {lesion['location']} of the {organ}" if lesion["location"] else f"the {organ}"
    certainty = "" if lesion["certainty"] == "definite" else f"{lesion['certainty']} "
    lines = [f"finding: {certainty}{subtype}"]
    if lesion["size_mm"] is not None:
        lines.append(f"size: {lesion['size_mm']:g} mm")
    lines.append(f"site: {site}")
    return "\n".join(lines)


def messages(lesion: dict | None) -> list[dict]:
    """System prompt, the worked examples, then the lesion to describe."""
    chat = [{"role": "system", "content": SYSTEM}]
    for example, answer in _SHOTS:
        chat += [{"role": "user", "content": lesion_facts(example)}, {"role": "assistant", "content": answer}]
    return chat + [{"role": "user", "content": lesion_facts(lesion)}]
