"""The knowledge base shipped with the package.

One vocabulary for every stage: the synthetic cohort draws lesions from it, report extraction
grounds findings in it, the pseudo-label prior places lesions with it, the model's
text-conditioned head is fed its class prompts and DICOM SEG segments are named from it.
"""

from __future__ import annotations

KB_VERSION = "kb-1"

# Segmentation classes, in label-map order (0 is background).
SEG_CLASSES: tuple[str, ...] = ("background", "liver", "kidney", "lesion")
LESION_CLASS = SEG_CLASSES.index("lesion")

CLASS_PROMPTS: dict[str, str] = {
    "background": "background tissue, air, fat and muscle outside the abdominal organs",
    "liver": "normal liver parenchyma in the right upper abdomen",
    "kidney": "normal renal parenchyma of the left and right kidneys",
    "lesion": "a focal tumour lesion within the liver or kidney",
}

# `bodies`: how many separate bodies the organ has in one patient (two kidneys, one liver); the
# pseudo-label prior and the label maps keep that many connected components of it.
ORGANS: dict[str, dict] = {
    "liver": {
        "bodies": 1,
        "synonyms": ["liver", "hepatic", "hepar"],
        "sublocations": {
            "right lobe": ["right lobe", "right hepatic lobe", "segment vi", "segment vii", "segment viii"],
            "left lobe": ["left lobe", "left hepatic lobe", "segment ii", "segment iii", "lateral segment"],
            "dome": ["dome", "hepatic dome", "subdiaphragmatic"],
        },
    },
    "kidney": {
        "bodies": 2,
        "synonyms": ["kidney", "renal"],
        "sublocations": {
            "upper pole": ["upper pole", "superior pole"],
            "interpolar": ["interpolar", "mid kidney", "midpole"],
            "lower pole": ["lower pole", "inferior pole"],
        },
    },
}

# Lesion subtypes: which organs they occur in, how reports name them, how they look, and whether
# they are brighter (hyper) or darker (hypo) than the host parenchyma on the post-contrast series.
SUBTYPES: dict[str, dict] = {
    "hcc": {
        "name": "hepatocellular carcinoma",
        "organs": ["liver"],
        "synonyms": ["hepatocellular carcinoma", "hcc", "hepatoma"],
        "appearance": "arterially hyperenhancing mass with washout and a capsule",
        "enhancement": "hyper",
    },
    "metastasis": {
        "name": "metastasis",
        "organs": ["liver", "kidney"],
        "synonyms": ["metastasis", "metastases", "metastatic deposit", "secondary deposit"],
        "appearance": "hypoattenuating lesion with rim enhancement",
        "enhancement": "hypo",
    },
    "rcc": {
        "name": "renal cell carcinoma",
        "organs": ["kidney"],
        "synonyms": ["renal cell carcinoma", "rcc", "clear cell carcinoma"],
        "appearance": "heterogeneously enhancing exophytic renal mass",
        "enhancement": "hyper",
    },
}
SUBTYPE_KEYS: tuple[str, ...] = tuple(SUBTYPES)
LATERALITIES: tuple[str, ...] = ("left", "right")


def subtype_prompt(key: str) -> str:
    """The text a subtype is embedded as, on the image side of the KL term."""
    entry = SUBTYPES[key]
    return f"{entry['name']}: {entry['appearance']}"
