"""Registration against a throwaway sqlite MLflow store: gate refusal and champion/challenger aliases."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from medsegllm.common.io import write_json
from medsegllm.config import Params, TrainParams
from medsegllm.knowledge import SEG_CLASSES
from medsegllm.register.export import ExportedSegmenter
from medsegllm.register.run import RegistrationRefused, artifact_location, is_better, resolve_tracking_uri, run_register


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A CWD holding the relative sqlite store of the default params; no network, no telemetry."""
    root = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        mp.setenv("DO_NOT_TRACK", "1")
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield root
    import mlflow

    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def model_path(workdir: Path) -> Path:
    from medsegllm.model.checkpoint import model_meta, save_checkpoint
    from medsegllm.model.network import build_model

    train = TrainParams(channels=[4, 8], roi_size=(16, 16))
    rng = np.random.default_rng(0)
    model = build_model(train, ["dev_a", "dev_b"], rng.normal(size=(4, 384)), rng.normal(size=(3, 384)))
    return save_checkpoint(workdir / "model.pt", model, model_meta(model, list(SEG_CLASSES)))


def _validation(root: Path, name: str, dice: float, passed: bool = True, data_hash: str = "h1") -> Path:
    folder = root / name
    write_json(folder / "metrics.json", {"dice_mean": dice, "js_features": 0.1, "gate_passed": int(passed)})
    check = {"name": "dice_mean", "op": ">=", "value": dice, "threshold": 0.5, "passed": passed}
    write_json(folder / "gate.json", {"passed": passed, "checks": [check], "validation_data_hash": data_hash})
    (folder / "report.html").write_text("<html></html>")
    return folder


def test_uri_helpers(tmp_path: Path):
    assert resolve_tracking_uri("sqlite:///x/m.db", tmp_path) == f"sqlite:///{tmp_path}/x/m.db"
    assert resolve_tracking_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert resolve_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert artifact_location("sqlite:////abs/m.db") == "file:///abs/mlartifacts"
    assert is_better(0.8, 0.7, "dice_mean") and is_better(2.0, 3.0, "hd95_mean") and not is_better(0.7, 0.7, "dice_mean")


def test_failed_gate_is_refused(workdir: Path, model_path: Path):
    with pytest.raises(RegistrationRefused, match="dice_mean"):
        run_register(model_path, _validation(workdir, "v_fail", 0.2, passed=False), workdir / "r0", Params())


def test_alias_sequence_and_load(workdir: Path, model_path: Path):
    import mlflow

    params = Params()
    first = run_register(model_path, _validation(workdir, "v1", 0.70), workdir / "r1", params)
    assert (first["alias"], first["previous_champion_version"]) == ("champion", None)
    assert json.loads((workdir / "r1" / "registration.json").read_text())["version"] == first["version"]

    worse = run_register(model_path, _validation(workdir, "v2", 0.60), workdir / "r2", params)
    assert (worse["alias"], worse["previous_champion_version"]) == ("challenger", first["version"])

    other_data = run_register(model_path, _validation(workdir, "v3", 0.99, data_hash="h2"), workdir / "r3", params)
    assert other_data["alias"] == "challenger"

    better = run_register(model_path, _validation(workdir, "v4", 0.80), workdir / "r4", params)
    assert (better["alias"], better["previous_champion_version"]) == ("champion", first["version"])
    assert better["model_uri"] == "models:/medsegllm@champion"

    assert (workdir / "mlflow.db").exists() and (workdir / "mlartifacts").is_dir()
    assert not (workdir / "mlruns").exists()
    assert os.environ.get("MLFLOW_TRACKING_URI") is None  # the stage leaves no global URI behind
    mlflow.set_tracking_uri(f"sqlite:///{workdir}/mlflow.db")
    loaded = mlflow.pytorch.load_model("models:/medsegllm@champion")
    assert isinstance(loaded, ExportedSegmenter)
    with torch.no_grad():
        probs = loaded(torch.rand(2, 1, 16, 16))
    assert probs.shape == (2, 4, 16, 16)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 16, 16))
    run = mlflow.get_run(better["run_id"])
    assert run.data.tags["kb_version"] and run.data.params["train.channels"] == "[16, 32, 64, 128]"
    assert "validation/report.html" in {a.path for a in mlflow.MlflowClient().list_artifacts(better["run_id"], "validation")}
    tags = mlflow.MlflowClient().get_model_version("medsegllm", better["version"]).tags
    assert tags["kb_version"] == run.data.tags["kb_version"] and tags["prompt_version"] == "v1"
    assert mlflow.models.get_model_info("models:/medsegllm@champion").signature is not None


def test_store_killed_while_created_is_rebuilt(tmp_path):
    """SIGKILL while MLflow builds a new sqlite store's schema: no half-built store is left to break
    the rerun (MLflow cannot reopen one), and the rerun also removes the dead attempt's files."""
    import signal
    import subprocess
    import sys
    import time

    from mlflow import MlflowClient

    from medsegllm.register.run import ensure_sqlite_store

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    child = subprocess.Popen([sys.executable, "-c", f"from medsegllm.register.run import ensure_sqlite_store as e; e({uri!r})"],
                             start_new_session=True)
    t0 = time.monotonic()
    while not any(p.stat().st_size for p in tmp_path.glob(".mlflow.db.*.tmp.db")) and child.poll() is None \
            and time.monotonic() - t0 < 60:
        time.sleep(0.01)
    assert child.poll() is None, "the schema was built before the kill; nothing was tested"
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    assert not (tmp_path / "mlflow.db").exists() and list(tmp_path.glob(".mlflow.db.*"))
    ensure_sqlite_store(uri)
    assert [e.name for e in MlflowClient(tracking_uri=uri).search_experiments()] == ["Default"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db"]
