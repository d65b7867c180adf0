"""The Great Expectations gates pass good stage outputs and stop bad ones with a readable message."""

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from medsegllm.common import io
from medsegllm.common.schemas import MANIFEST, QUARANTINE
from medsegllm.gates.run import DataGateFailed, run_check


def _manifest_row(series_id: str) -> dict:
    return {
        "series_id": series_id, "study_id": "st", "patient_id": "pt", "accession_id": "acc", "modality": "CT",
        "device_id": "siemens_somatom_force", "manufacturer": "SIEMENS", "model_name": "SOMATOM Force",
        "n_slices": 4, "source_spacing": [1.0, 1.0, 3.0], "shape": [8, 8, 4], "spacing": [4.0, 4.0, 5.0],
        "volume_path": f"volumes/{series_id}.nii.gz", "label_path": None, "has_label": False,
        "input_hash": "h", "raw_histogram": [1.0], "histogram": [1.0],
    }


@pytest.fixture
def ingest_out(tmp_path):
    for sid in ("a", "b"):
        io.save_nifti(tmp_path / f"volumes/{sid}.nii.gz", np.zeros((8, 8, 4), np.float32), np.eye(4))
    rows = [_manifest_row("a"), _manifest_row("b")]
    io.write_parquet(tmp_path / "manifest.parquet", pa.Table.from_pylist(rows, schema=MANIFEST))
    io.write_parquet(tmp_path / "quarantine.parquet", pa.Table.from_pylist([{"path": "x.dcm", "reason": "not DICOM"}], schema=QUARANTINE))
    io.write_json(tmp_path / "summary.json", {"n_files": 9, "n_image_files": 8, "n_label_files": 0,
                                              "n_report_files": 0, "n_quarantined_files": 1})
    return tmp_path


def test_good_ingest_output_passes(ingest_out):
    report = run_check("ingest", ingest_out)
    assert report["passed"] and report["n_failed"] == 0
    assert json.loads((ingest_out / "data_checks.json").read_text())["passed"]


def test_duplicate_series_and_missing_volume_fail_readably(ingest_out):
    manifest = pd.read_parquet(ingest_out / "manifest.parquet")
    manifest.loc[1, "series_id"] = "a"
    io.write_parquet(ingest_out / "manifest.parquet", pa.Table.from_pandas(manifest, schema=MANIFEST, preserve_index=False))
    (ingest_out / "volumes/b.nii.gz").unlink()
    with pytest.raises(DataGateFailed) as err:
        run_check("ingest", ingest_out)
    message = str(err.value)
    assert "expect_column_values_to_be_unique" in message and "volume_exists" in message
    assert not json.loads((ingest_out / "data_checks.json").read_text())["passed"]


def test_lost_files_break_the_accounting(ingest_out):
    io.write_json(ingest_out / "summary.json", {"n_files": 10, "n_image_files": 8, "n_label_files": 0,
                                                "n_report_files": 0, "n_quarantined_files": 1})
    with pytest.raises(DataGateFailed, match="accounting"):
        run_check("ingest", ingest_out)


def test_missing_outputs_fail_as_a_gate(tmp_path):
    with pytest.raises(DataGateFailed, match="incomplete or malformed"):
        run_check("reports", tmp_path)


def test_unknown_stage():
    with pytest.raises(ValueError, match="no data gate"):
        run_check("nostage", ".")
