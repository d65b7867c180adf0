"""Report-guided label maps (`segment/guided.py`): the report decides where lesions are."""

from __future__ import annotations

import numpy as np

from medsegllm.config import PostprocessParams, PseudolabelParams
from medsegllm.knowledge import LESION_CLASS, SEG_CLASSES
from medsegllm.segment.guided import guided_label

LIVER = SEG_CLASSES.index("liver")
AFFINE = np.diag([4.0, 4.0, 5.0, 1.0])


def _liver_with_lesion_probs(shape=(40, 40, 12)) -> tuple[np.ndarray, np.ndarray]:
    """A liver block whose centre the model calls lesion, and an image with a dark spot elsewhere in it."""
    probs = np.zeros((len(SEG_CLASSES), *shape), dtype=np.float32)
    probs[0] = 1.0
    probs[0, 5:35, 5:35, 2:10] = 0.0
    probs[LIVER, 5:35, 5:35, 2:10] = 1.0
    probs[LIVER, 18:22, 18:22, 5:7] = 0.2
    probs[LESION_CLASS, 18:22, 18:22, 5:7] = 0.8
    image = np.full(shape, 0.6, dtype=np.float32)
    image[8:14, 8:14, 4:8] = 0.3  # a hypodense region away from the model's lesion
    return probs, image


def test_lesion_free_report_returns_the_models_lesion_to_its_organ():
    probs, image = _liver_with_lesion_probs()
    label = guided_label(probs, image, AFFINE, {"lesions": [], "tumour_present": False}, PostprocessParams(enabled=False),
                         PseudolabelParams())
    assert not (label == LESION_CLASS).any()
    assert (label[18:22, 18:22, 5:7] == LIVER).all()


def test_reported_lesion_goes_where_the_organ_is_most_conspicuous():
    probs, image = _liver_with_lesion_probs()
    findings = {"tumour_present": True,
                "lesions": [{"organ": "liver", "size_mm": 20.0, "subtype": "metastasis", "certainty": "definite"}]}
    label = guided_label(probs, image, AFFINE, findings, PostprocessParams(enabled=False), PseudolabelParams())
    lesion = label == LESION_CLASS
    assert lesion.any()
    centre = np.argwhere(lesion).mean(axis=0)
    assert ((centre >= (8, 8, 4)) & (centre < (14, 14, 8))).all(), centre  # on the dark spot
    assert not lesion[18:22, 18:22, 5:7].any()  # the model's own lesion is not where the report's went
    assert (label[~lesion & (probs[LIVER] + probs[LESION_CLASS] > 0.5)] == LIVER).all()
