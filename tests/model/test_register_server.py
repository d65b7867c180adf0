"""Registration against a real `mlflow server` on loopback: aliases, what a version carries, and
`segment` loading `models:/medsegllm@champion` through the server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from medsegllm.common.io import write_json
from medsegllm.config import Params, TrainParams
from medsegllm.knowledge import KB_VERSION, SEG_CLASSES

pytestmark = pytest.mark.e2e
REAL_CT = Path("/work/shared/testdata/real/dcmqi_ge_ct_liver/ct")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> str:
    """`mlflow server` with a sqlite store and proxied artifacts; stopped (whole process group) after."""
    root = tmp_path_factory.mktemp("mlflow_server")
    port = _free_port()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(
        [str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--artifacts-destination", str(root / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=2).read().strip() == b"OK":
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start:\n{(root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:  # uvicorn waits for open keep-alive connections; a throwaway server need not be graceful
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    import torch

    from medsegllm.model.checkpoint import model_meta, save_checkpoint
    from medsegllm.model.network import build_model

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = build_model(TrainParams(channels=[4, 8], roi_size=(64, 64)), ["siemens_somatom_force"],
                        rng.normal(size=(4, 384)), rng.normal(size=(3, 384)))
    return save_checkpoint(tmp_path_factory.mktemp("model") / "model.pt", model, model_meta(model, list(SEG_CLASSES)))


def _validation(root: Path, name: str, dice: float) -> Path:
    folder = root / name
    write_json(folder / "metrics.json", {"dice_mean": dice, "js_features": 0.1, "gate_passed": 1})
    check = {"name": "dice_mean", "op": ">=", "value": dice, "threshold": 0.5, "passed": True}
    write_json(folder / "gate.json", {"passed": True, "checks": [check], "validation_data_hash": "same-data"})
    (folder / "report.html").write_text("<html></html>")
    (folder / "per_device.csv").write_text("device_id,dice_mean\ndev_a,0.7\n")
    (folder / "plots").mkdir()
    (folder / "plots" / "js_divergence.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    return folder


def test_register_and_segment_through_server(server: str, model_path: Path, tmp_path: Path, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    from medsegllm.register.run import run_register
    from medsegllm.segment.run import run_segment
    from medsegllm.segment.source import load_segmenter

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = Params.model_validate({"register": {"tracking_uri": server}})
    first = run_register(model_path, _validation(tmp_path, "v1", 0.70), tmp_path / "r1", params)
    same = run_register(model_path, _validation(tmp_path, "v2", 0.70), tmp_path / "r2", params)
    better = run_register(model_path, _validation(tmp_path, "v3", 0.80), tmp_path / "r3", params)
    assert first["alias"] == "champion" and first["tracking_uri"] == server
    assert (same["alias"], same["previous_champion_version"]) == ("challenger", first["version"])
    assert (better["alias"], better["previous_champion_version"]) == ("champion", first["version"])

    client = MlflowClient(tracking_uri=server, registry_uri=server)
    assert client.get_model_version_by_alias("medsegllm", "champion").version == better["version"]
    assert client.get_model_version_by_alias("medsegllm", "challenger").version == same["version"]
    version = client.get_model_version("medsegllm", better["version"])
    assert version.tags["kb_version"] == KB_VERSION and version.tags["prompt_version"] == "v1"
    assert version.tags["validation_data_hash"] == "same-data"
    run = client.get_run(better["run_id"])
    assert run.data.metrics["dice_mean"] == pytest.approx(0.8)
    assert run.data.params["train.roi_size"] == "[64, 64]" and run.data.params["validate.bootstrap"] == "200"
    assert run.data.tags["kb_version"] == KB_VERSION and run.data.tags["prompt_version"] == "v1"
    artifacts = {a.path for a in client.list_artifacts(better["run_id"], "validation")}
    assert {"validation/report.html", "validation/per_device.csv", "validation/plots"} <= artifacts
    assert [a.path for a in client.list_artifacts(better["run_id"], "validation/plots")] == ["validation/plots/js_divergence.png"]

    with monkeypatch.context() as m:
        m.setenv("MLFLOW_TRACKING_URI", server)
        info = mlflow.models.get_model_info("models:/medsegllm@champion")
    assert info.signature is not None and tuple(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 1, 64, 64)
    assert info.saved_input_example_info is not None

    network, meta = load_segmenter("models:/medsegllm@champion", params)
    assert meta["tracking_uri"] == server and meta["device_ids"] == ["siemens_somatom_force"]
    summary = run_segment("models:/medsegllm@champion", REAL_CT, tmp_path / "seg", params, "salt")
    assert summary["n_series"] == 1 and summary["slices_per_s"] > 0
    assert (tmp_path / "seg" / summary["series"][0]["nifti"]).exists()
