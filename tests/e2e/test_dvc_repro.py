"""`dvc repro` runs every stage end to end, leaks no patient identifier, and a second `dvc repro` is a no-op."""

import json
import os
import shutil
import subprocess

import pytest

from medsegllm.model.checkpoint import load_model
from tests.conftest import ROOT
from tests.e2e.phi import cohort_identifiers, leaks

pytestmark = pytest.mark.e2e


def _dvc(*args, cwd):
    result = subprocess.run(["dvc", *args], cwd=cwd, capture_output=True, text=True, env=os.environ.copy())
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_dvc_repro_end_to_end_then_noop(tmp_path, tiny_params_file):
    project = tmp_path
    shutil.copy(ROOT / "dvc.yaml", project / "dvc.yaml")
    (project / "src").symlink_to(ROOT / "src")
    _dvc("init", "--no-scm", "-q", cwd=project)

    out = _dvc("repro", cwd=project)
    for stage in ["synth", "ingest", "reports", "pseudolabel", "train", "validate", "register"]:
        assert f"Running stage '{stage}'" in out
    registration = json.loads((project / "data/registry/registration.json").read_text())
    assert registration["alias"] == "champion" and int(registration["version"]) == 1
    metrics = json.loads((project / "data/validation/metrics.json").read_text())
    assert 0.0 <= metrics["dice_mean"] <= 1.0 and 0.0 <= metrics["js_features"] <= 1.0
    for stage_dir in ["ingested", "findings", "pseudolabels", "model", "validation", "registry"]:
        assert json.loads((project / "data" / stage_dir / "data_checks.json").read_text())["passed"]
    _, meta = load_model(project / "data/model/model.pt")  # segment maps new MR series as ingest did
    assert meta["mr_standardization"] == json.loads((project / "data/ingested/mr_standardization.json").read_text())

    identifiers = cohort_identifiers(project / "data/cohort/dicom")
    assert len(identifiers) > 50
    assert leaks(identifiers, [project / "data/cohort/reports.jsonl"]), "positive control: the inputs carry PHI"
    outputs = [p for p in (project / "data").iterdir() if p.name != "cohort"]
    assert leaks(identifiers, [*outputs, project / "mlflow.db", project / "mlartifacts"]) == []

    again = _dvc("repro", cwd=project)
    assert "Running stage" not in again, again
    assert "up to date" in _dvc("status", cwd=project)
