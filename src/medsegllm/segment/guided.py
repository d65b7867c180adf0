"""Report-guided segmentation: where a study's radiology report is at hand, `segment --reports` places
its lesions as the pseudo-label generator does, over the model's organs.

The network alone finds no lesion on the demo's CPU budget (BENCHMARKS.md: lesion Dice 0.000 for
every row, the oracle's too), while the report says how many lesions there are, in which organ,
side and segment, and how large; the image then says where in that organ a lesion of that size is
most conspicuous (`pseudolabel/prior.py`). This is the pseudolabel stage's fusion
(`pseudo_label_series`: F = alpha * P + (1 - alpha) * K, lesions only where the report puts one)
run on the final model's probabilities at inference, for the hospital's own reported studies:
retrospective cohorts, second reads, registries. Series without a report get the model's label map.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medsegllm.common.deid import pseudonym
from medsegllm.common.io import spacing_of
from medsegllm.config import PostprocessParams, PseudolabelParams
from medsegllm.knowledge import LESION_CLASS
from medsegllm.model.postprocess import label_map
from medsegllm.pseudolabel.fusion import pseudo_label_series
from medsegllm.reports.extract import extract_findings
from medsegllm.reports.inputs import load_reports


class ReportsUnreadable(ValueError):
    """`--reports` is missing, holds no report, or lacks the key or text columns."""


def report_findings(path: Path, salt: str) -> dict[str, dict]:
    """Grounded findings of every report under `path` (JSONL, CSV or DICOM SR, as the reports stage
    reads them), keyed by the salted pseudonym of the report's AccessionNumber (or StudyInstanceUID).
    A key's first report wins, as in the pipeline's findings; the text itself is not kept."""
    try:
        reports = load_reports(Path(path), salt)
    except (FileNotFoundError, ValueError) as exc:
        raise ReportsUnreadable(f"reports {path}: {exc}") from exc
    findings: dict[str, dict] = {}
    for report in reports:
        if report.accession_id not in findings:
            findings[report.accession_id] = extract_findings(report.text).as_dict()
    return findings


def series_findings(findings: dict[str, dict], accession: str | None, study_uid: str | None, salt: str) -> dict | None:
    """The findings of a series' study: by its AccessionNumber, else by its StudyInstanceUID; None when unreported."""
    for key in (accession, study_uid):
        if key and (hit := findings.get(pseudonym(key, salt))) is not None:
            return hit
    return None


def guided_label(probs: np.ndarray, image: np.ndarray, affine: np.ndarray, findings: dict,
                 postprocess: PostprocessParams, fusion: PseudolabelParams) -> np.ndarray:
    """The model's label map (`label_map`) with its lesions replaced by the report's.

    Organs come from the post-processed label map. Lesions come from the fused map: where the
    report places none (a lesion-free report, or outside every reported lesion), a lesion the model
    predicted becomes the fused map's class there, its host organ as a rule.
    """
    label = label_map(probs, tuple(spacing_of(affine)), postprocess)
    fused, _, _ = pseudo_label_series(probs, image, affine, findings["lesions"], findings["tumour_present"], fusion)
    label = np.where(label == LESION_CLASS, fused, label).astype(label.dtype)
    label[fused == LESION_CLASS] = LESION_CLASS
    return label
