"""Ingest of a tiny synthetic cohort: grids, labels and truth agree; nothing identifying leaks."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from medsegllm.common.io import load_nifti
from medsegllm.common.truth import truth_index, truth_on_grid, truth_studies
from medsegllm.config import IngestParams, SynthParams
from medsegllm.ingest.run import run_ingest
from medsegllm.knowledge import SEG_CLASSES

SALT = "cohort-salt"
PARAMS = IngestParams()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> tuple[Path, Path, dict]:
    from medsegllm.synth.cohort import generate_cohort

    root = tmp_path_factory.mktemp("cohort")
    generate_cohort(root / "cohort", SynthParams(n_studies=6, label_fraction=0.34), seed=0)
    summary = run_ingest(root / "cohort" / "dicom", root / "out", PARAMS, SALT, workers=2)
    return root / "cohort", root / "out", summary


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def test_cohort_ingest_matches_truth(cohort):
    cohort_dir, out, summary = cohort
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert summary["n_quarantined_files"] == 0 and pd.read_parquet(out / "quarantine.parquet").empty
    assert manifest.device_id.nunique() == 6 and len(manifest) == 6
    studies = truth_studies(cohort_dir / "truth", SALT).set_index("series_id")
    assert "series_instance_uid" not in studies.columns and set(studies.index) == set(manifest.series_id)
    index = truth_index(cohort_dir / "truth", SALT)
    for row in manifest.itertuples():
        volume, affine = load_nifti(out / row.volume_path)
        truth = truth_on_grid(index[row.series_id], PARAMS)
        assert truth.shape == volume.shape == tuple(row.shape)
        assert row.has_label == bool(studies.loc[row.series_id, "labelled"])
        if row.has_label:
            label, label_affine = load_nifti(out / row.label_path)
            np.testing.assert_allclose(label_affine, affine)
            for cls in range(1, len(SEG_CLASSES)):
                if (truth == cls).any():
                    assert dice(label == cls, truth == cls) > 0.95


def test_cohort_outputs_carry_no_identifiers(cohort):
    cohort_dir, out, _ = cohort
    secrets: set[str] = set()
    for path in (cohort_dir / "dicom").rglob("*"):
        if path.is_file():
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            secrets |= {str(ds.get(k, "")) for k in ("PatientName", "PatientID", "AccessionNumber", "SeriesInstanceUID")}
    secrets.discard("")
    blob = b"\n".join(gzip.decompress(p.read_bytes()) if p.name.endswith(".gz") else p.read_bytes()
                      for p in out.rglob("*") if p.is_file())
    leaked = [s for s in secrets if s.encode() in blob]
    assert not leaked


def test_cohort_rerun_is_incremental(cohort):
    cohort_dir, out, first = cohort
    again = run_ingest(cohort_dir / "dicom", out, PARAMS, SALT)
    assert again["n_reused_series"] == first["n_series"]
    assert {k: again[k] for k in ("n_files", "n_image_files", "n_label_files")} == {k: first[k] for k in ("n_files", "n_image_files", "n_label_files")}
