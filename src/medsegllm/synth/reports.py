"""Free-text radiology reports for the demo cohort.

Phrasing varies on purpose (several templates per section, knowledge-base synonyms for organs,
sublocations and subtypes, sizes as "32 mm", "3.2 cm", "3.2 x 2.1 cm" or "32 x 21 mm"), and
normal organs are stated as negations ("No focal hepatic lesion."), so report extraction has to
handle language rather than one fixed format. Some reports carry PHI mirroring the DICOM header.
"""

from __future__ import annotations

import numpy as np

from medsegllm.knowledge import ORGANS, SUBTYPES
from medsegllm.synth.dicom import StudyMeta
from medsegllm.synth.phantom import Lesion
from medsegllm.synth.scanners import ScannerProfile

_HISTORY = ["Abdominal pain.", "Staging.", "Elevated liver enzymes.", "Hematuria.", "Weight loss.",
            "Follow-up.", "Right upper quadrant pain.", "Abnormal ultrasound."]
_LIVER_NEG = ["No focal hepatic lesion.", "No focal liver lesion is identified.",
              "The liver is normal in size and {contrast} without focal lesion.", "No suspicious hepatic mass."]
_KIDNEY_NEG = ["No evidence of renal mass.", "Kidneys are unremarkable.",
               "Both kidneys are normal in size with no focal lesion or hydronephrosis.",
               "No renal mass or hydronephrosis."]
_OTHER = ["The spleen is normal in size.", "Pancreas and adrenal glands are unremarkable.",
          "No ascites or lymphadenopathy.", "The gallbladder is unremarkable.", "Visualized bowel loops are normal."]
_NEGATIVE_IMPRESSION = ["No focal hepatic or renal lesion.", "No evidence of malignancy in the liver or kidneys.",
                        "Unremarkable examination of the abdomen.", "No acute abnormality. No suspicious mass."]
_CERTAINTY = ["consistent with", "compatible with", "suspicious for", "likely representing"]
_APPEARANCE = {
    ("CT", "hcc"): ["arterially enhancing", "hyperdense"],
    ("CT", "metastasis"): ["hypodense", "hypoattenuating rim-enhancing"],
    ("CT", "rcc"): ["heterogeneously enhancing", "enhancing solid"],
    ("MR", "hcc"): ["hyperintense enhancing", "arterially enhancing"],
    ("MR", "metastasis"): ["hypointense", "hypointense rim-enhancing"],
    ("MR", "rcc"): ["heterogeneously enhancing", "enhancing solid"],
}


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _size(lesion: Lesion, rng: np.random.Generator) -> str:
    major, minor = lesion.dims_mm[0], lesion.dims_mm[1]
    style = int(rng.integers(4))
    if style == 0:
        return f"{major:.0f} mm"
    if style == 1:
        return f"{major / 10:.1f} cm"
    if style == 2:
        return f"{major / 10:.1f} x {minor / 10:.1f} cm"
    return f"{major:.0f} x {minor:.0f} mm"


def _subtype_name(subtype: str, rng: np.random.Generator, plural: bool = False) -> str:
    names = [s for s in SUBTYPES[subtype]["synonyms"] if s != "metastases"]
    name = "metastases" if plural and subtype == "metastasis" else _pick(rng, names)
    return name.upper() if name in ("hcc", "rcc") else name


def location_phrase(lesion: Lesion, rng: np.random.Generator) -> str:
    """Where the lesion is, e.g. 'in segment VII of the liver', 'in the upper pole of the left kidney'."""
    loc = _pick(rng, ORGANS[lesion.organ]["sublocations"][lesion.location])
    if lesion.organ == "liver":
        if loc.startswith("segment"):
            return f"in segment {loc.split()[1].upper()} of the liver"
        if "hepatic" in loc:
            return f"in the {loc}"
        if loc == "subdiaphragmatic":
            return "in the subdiaphragmatic liver"
        return f"in the {loc} of the {_pick(rng, ['liver', 'hepatic parenchyma'])}"
    side = lesion.laterality
    if loc in ("interpolar", "midpole"):
        return _pick(rng, [f"in the {loc} region of the {side} kidney", f"at the {side} renal {loc}"])
    if loc == "mid kidney":
        return f"in the {side} mid kidney"
    return _pick(rng, [f"in the {loc} of the {side} kidney", f"at the {side} renal {loc}"])


def _lesion_sentence(lesion: Lesion, modality: str, rng: np.random.Generator) -> str:
    size, where = _size(lesion, rng), location_phrase(lesion, rng)
    name, look = _subtype_name(lesion.subtype, rng), _pick(rng, _APPEARANCE[(modality, lesion.subtype)])
    certainty = _pick(rng, _CERTAINTY)
    templates = [
        f"There is a {size} {look} lesion {where}, {certainty} {name}.",
        f"A {size} {name} is seen {where}.",
        f"{look.capitalize()} mass {where} measuring {size}, {certainty} {name}.",
        f"{where[0].upper() + where[1:]} there is a {look} lesion measuring {size}, {certainty} {name}.",
    ]
    return _pick(rng, templates)


def _impression(lesions: list[Lesion], rng: np.random.Generator) -> str:
    if not lesions:
        return _pick(rng, _NEGATIVE_IMPRESSION)
    subtype = lesions[0].subtype
    if len(lesions) > 1:
        organs = sorted({les.organ for les in lesions})
        sides = {les.laterality for les in lesions if les.organ == "kidney"}
        where = " and ".join("liver" if o == "liver" else "kidneys" if len(sides) > 1 else "kidney" for o in organs)
        return f"Two lesions in the {where}, {_pick(rng, _CERTAINTY)} {_subtype_name(subtype, rng, plural=True)}."
    lesion = lesions[0]
    name = _subtype_name(subtype, rng)
    return _pick(rng, [
        f"Findings {_pick(rng, _CERTAINTY)} {name} {location_phrase(lesion, rng)}.",
        f"{name[0].upper() + name[1:]} {location_phrase(lesion, rng)}, {_size(lesion, rng)}.",
    ])


def _phi_lines(meta: StudyMeta, scanner: ScannerProfile, rng: np.random.Generator) -> list[str]:
    """Identifying lines mirroring the header: always the patient's name, plus a random few more."""
    family, given = meta.patient_name.split("^")
    ref_family, ref_given = meta.referring_physician.split("^")
    dob = meta.birth_date
    name_line = _pick(rng, [f"Patient: {given} {family}", f"Name: {family.upper()}, {given.upper()}"])
    extra = [
        f"MRN: {meta.patient_id}",
        _pick(rng, [f"DOB: {dob[4:6]}/{dob[6:]}/{dob[:4]}", f"Date of birth: {dob[:4]}-{dob[4:6]}-{dob[6:]}"]),
        _pick(rng, [f"Phone: {meta.phone}", f"Contact number {meta.phone}"]),
        f"Referring physician: Dr. {ref_given} {ref_family}",
        f"Performed at {scanner.institution}.",
    ]
    chosen = sorted(rng.choice(len(extra), size=int(rng.integers(2, len(extra) + 1)), replace=False))
    return [name_line, *(extra[i] for i in chosen)]


def write_report(meta: StudyMeta, scanner: ScannerProfile, lesions: list[Lesion], with_phi: bool,
                 rng: np.random.Generator) -> str:
    """One report: header, history, technique, findings by organ, impression."""
    ct = scanner.modality == "CT"
    exam = "CT ABDOMEN WITH IV CONTRAST" if ct else "MRI ABDOMEN WITH AND WITHOUT CONTRAST"
    technique = (f"Axial {'portal venous phase CT' if ct else 'T1-weighted post-contrast MR'} images of the "
                 f"abdomen were obtained at {scanner.slice_thickness_mm:g} mm slice thickness.")
    liver = [_lesion_sentence(les, scanner.modality, rng) for les in lesions if les.organ == "liver"]
    kidney = [_lesion_sentence(les, scanner.modality, rng) for les in lesions if les.organ == "kidney"]
    if not liver:
        liver = [_pick(rng, _LIVER_NEG).format(contrast="attenuation" if ct else "signal")]
    if not kidney:
        kidney = [_pick(rng, _KIDNEY_NEG)]
    else:
        sides = {les.laterality for les in lesions if les.organ == "kidney"}
        kidney += [f"The {side} kidney is unremarkable." for side in ("left", "right") if side not in sides]
    other = [_OTHER[i] for i in sorted(rng.choice(len(_OTHER), size=int(rng.integers(1, 4)), replace=False))]
    lines = [f"EXAMINATION: {exam}"]
    if with_phi:
        lines += _phi_lines(meta, scanner, rng)
    lines += [f"CLINICAL HISTORY: {_pick(rng, _HISTORY)}", f"TECHNIQUE: {technique}", "COMPARISON: None."]
    if rng.random() < 0.5:
        lines += ["FINDINGS:", f"Liver: {' '.join(liver)}", f"Kidneys: {' '.join(kidney)}", f"Other: {' '.join(other)}"]
    else:
        lines += ["FINDINGS:", " ".join(liver + kidney + other)]
    lines += ["IMPRESSION:", _impression(lesions, rng)]
    return "\n".join(lines)
