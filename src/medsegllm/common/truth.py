"""Hidden truth of the synthetic demo cohort, keyed and gridded like ingest's outputs (evaluation only).

Truth masks are named by the raw SeriesInstanceUID and carry the series' RAS affine; mapping them
through the same pseudonym and the same `harmonize_label` as ingest puts them on exactly the grid
of the ingested volume, so evaluation never compares voxels of two different grids.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from medsegllm.common.deid import pseudonym
from medsegllm.common.io import load_nifti
from medsegllm.config import IngestParams

RAW_IDENTIFIERS = ("series_instance_uid", "study_instance_uid", "accession_number", "patient_id", "patient_name")
_SUFFIX = ".nii.gz"


def truth_index(truth_dir: Path, salt: str) -> dict[str, Path]:
    """series_id -> truth mask path, for every `masks/<SeriesInstanceUID>.nii.gz` under the truth folder."""
    masks = sorted((Path(truth_dir) / "masks").glob(f"*{_SUFFIX}"))
    return {pseudonym(path.name[: -len(_SUFFIX)], salt): path for path in masks}


def truth_on_grid(path: Path, params: IngestParams) -> np.ndarray:
    """The truth mask resampled onto the ingested volume's grid (uint8, RAS, target spacing)."""
    from medsegllm.ingest.harmonize import harmonize_label

    mask, affine = load_nifti(path)
    return harmonize_label(mask, affine, params)[0]


def truth_studies(truth_dir: Path, salt: str) -> pd.DataFrame:
    """`studies.jsonl` with series_id, study_id and accession_id pseudonyms and no raw identifiers."""
    lines = (Path(truth_dir) / "studies.jsonl").read_text().splitlines()
    frame = pd.DataFrame([json.loads(line) for line in lines if line.strip()])
    if frame.empty:
        return frame
    frame["series_id"] = [pseudonym(v, salt) for v in frame["series_instance_uid"]]
    frame["study_id"] = [pseudonym(v, salt) for v in frame["study_instance_uid"]]
    frame["accession_id"] = [pseudonym(v, salt) for v in frame["accession_number"]]
    return frame.drop(columns=[c for c in RAW_IDENTIFIERS if c in frame.columns])
