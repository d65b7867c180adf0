"""One series' pseudo-label from a teacher's probabilities and its report, and its quality vs truth.

The pseudolabel stage (first teacher) and the training-time refresh (EMA teacher) both call
`pseudo_label_series`, so a refreshed label is fused exactly like the stage's labels.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from medsegllm.config import PseudolabelParams
from medsegllm.knowledge import LESION_CLASS, SEG_CLASSES
from medsegllm.pseudolabel.prior import fuse, knowledge_prior, pseudo_label, restrict_lesions_to_report


def report_lesions(findings: pd.DataFrame, accession_id: str) -> tuple[list[dict], bool]:
    """(lesions, tumour_present) of the study's report; no report means no lesion prior."""
    if accession_id not in findings.index:
        return [], False
    row = findings.loc[accession_id]
    lesions = json.loads(row["lesions_json"]) if isinstance(row["lesions_json"], str) else []
    return lesions, bool(row["tumour_present"])


def pseudo_label_series(
    probs: np.ndarray, image: np.ndarray, affine: np.ndarray, lesions: list[dict], tumour_present: bool, cfg: PseudolabelParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mask, confidence, weight): K from the report placed in the teacher's organs, F = alpha*P + (1-alpha)*K, thresholds.

    K is recomputed from the teacher `probs` each time (its organ channels and the organs it places
    lesions in come from the teacher), so a better teacher also gives a better K.
    """
    prior, certainty = knowledge_prior(probs, lesions, tumour_present, affine,
                                       image=image if cfg.locate_by_image else None)
    fused = fuse(probs, prior, cfg.alpha)
    if cfg.lesions_from_report:
        fused = restrict_lesions_to_report(fused, prior)
    return pseudo_label(fused, cfg.confidence_threshold, cfg.lesion_threshold, certainty)


def _class_dice(pred: np.ndarray, truth: np.ndarray, c: int) -> float | None:
    """Dice of class `c`; None when neither mask has it."""
    p, t = pred == c, truth == c
    total = p.sum() + t.sum()
    return None if total == 0 else float(2.0 * (p & t).sum() / total)


def lesion_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Lesion-class Dice; 1.0 when both are empty (a correctly lesion-free study)."""
    score = _class_dice(pred, truth, LESION_CLASS)
    return 1.0 if score is None else score


def organ_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean Dice over the organ classes present in either mask (lesion voxels are their own class)."""
    organs = [c for c, name in enumerate(SEG_CLASSES) if name not in ("background", "lesion")]
    scores = [score for c in organs if (score := _class_dice(pred, truth, c)) is not None]
    return float(np.mean(scores)) if scores else 1.0
