"""`medsegllm kfp submit` talks to a Kubeflow Pipelines REST API: here a fake one on loopback that records requests.

The real `kfp.Client` runs unmodified; the fake answers the four calls a submission makes (healthz,
experiment lookup, experiment creation, run creation) and keeps the bodies to check what was sent.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml
from typer.testing import CliRunner

from medsegllm.cli import app
from tests.conftest import ROOT
from tests.e2e.conftest import tiny_params


@pytest.fixture
def tiny_params_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tiny_params(tmp_path), sort_keys=False))
    return path


class _FakeKfp(BaseHTTPRequestHandler):
    requests: list = []

    def _reply(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.requests.append(("GET", self.path, None))
        if self.path.startswith("/apis/v2beta1/healthz"):
            self._reply({"multi_user": False})
        elif self.path.startswith("/apis/v2beta1/experiments"):
            self._reply({"experiments": [], "total_size": 0})
        else:
            self.send_error(404)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append(("POST", self.path, body))
        if self.path == "/apis/v2beta1/experiments":
            self._reply({"experiment_id": "exp-1", "display_name": body["display_name"]})
        elif self.path == "/apis/v2beta1/runs":
            self._reply({"run_id": "run-1", "display_name": body["display_name"], "experiment_id": body["experiment_id"]})
        else:
            self.send_error(404)

    def log_message(self, *args):
        pass


@pytest.fixture
def kfp_server(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # kfp.Client reads ~/.config/kfp/context.json
    _FakeKfp.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeKfp)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", _FakeKfp.requests
    server.shutdown()


def test_submit_sends_the_compiled_package_and_arguments(kfp_server, tiny_params_file, monkeypatch):
    host, requests = kfp_server
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(app, [
        "kfp", "submit", "--host", host, "--experiment", "ablations", "--cohort-uri", "gs://bucket/cohort",
        "--data-version", "2026-11-27", "--ingest-shards", "8", "--params", str(tiny_params_file), "--run-name", "r1",
    ])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output[result.output.index("{"):])["run_id"] == "run-1"  # after kfp's printed links
    posts = {path: body for method, path, body in requests if method == "POST"}
    assert posts["/apis/v2beta1/experiments"]["display_name"] == "ablations"
    run = posts["/apis/v2beta1/runs"]
    assert run["display_name"] == "r1" and run["experiment_id"] == "exp-1"
    assert run["pipeline_spec"] == yaml.safe_load((ROOT / "pipelines/medsegllm_pipeline.yaml").read_text())
    parameters = run["runtime_config"]["parameters"]
    assert json.loads(parameters["params_yaml"]) == yaml.safe_load(tiny_params_file.read_text())
    assert parameters["cohort_uri"] == "gs://bucket/cohort" and parameters["data_version"] == "2026-11-27"
    assert parameters["ingest_shards"] == 8


def test_submit_refuses_bad_input_before_contacting_the_server(kfp_server, tmp_path, monkeypatch):
    host, requests = kfp_server
    monkeypatch.chdir(ROOT)
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epochs: 0}\n")
    runner = CliRunner()
    assert runner.invoke(app, ["kfp", "submit", "--host", host, "--cohort-uri", "gs://b/c", "--params", str(bad)]).exit_code == 1
    assert runner.invoke(app, ["kfp", "submit", "--host", host, "--pipeline", "demo", "--cohort-uri", "gs://b/c"]).exit_code == 1
    assert runner.invoke(app, ["kfp", "submit", "--host", host]).exit_code == 1  # the cohort pipeline needs a URI
    assert requests == []
