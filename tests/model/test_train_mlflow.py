"""Training as an MLflow run (`train.mlflow`) against a throwaway sqlite store: curves, resume, register link."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch

from medsegllm.common.io import write_json
from medsegllm.config import Params
from medsegllm.train import tracking
from medsegllm.train.engine import LOSS_KEYS
from medsegllm.train.run import run_train
from medsegllm.train.tracking import RUN_FILE, TrackingUnavailable, TrainingRun, start_training_run
from tests.model.synthetic import Interrupted, tiny_params


@pytest.fixture(autouse=True)
def _quiet_mlflow(monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("DO_NOT_TRACK", "1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _params(tmp_path: Path, epochs: int = 2) -> Params:
    params = tiny_params(channels=[4, 8], epochs=epochs, steps_per_epoch=1, mlflow=True)
    params.registration.tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return params


def _client(params: Params):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=params.registration.tracking_uri)


def _steps(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_training_is_one_run_with_a_point_per_epoch(stage_dirs, tmp_path):
    params = _params(tmp_path, epochs=3)
    out = tmp_path / "model"
    metrics = run_train(stage_dirs["ingest"], stage_dirs["findings"], None, out, params)
    run_id = metrics["mlflow_run_id"]
    assert json.loads((out / "train_metrics.json").read_text())["mlflow_run_id"] == run_id
    assert json.loads((out / RUN_FILE).read_text())["run_id"] == run_id
    assert torch.load(out / "model.pt", weights_only=True)["meta"]["mlflow_run_id"] == run_id
    client = _client(params)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == "3" and run.data.params["seed"] == str(params.seed)
    assert run.data.tags["variant"] == "medsegllm" and run.data.tags["backbone"] == "unet"
    assert client.get_experiment(run.info.experiment_id).name == params.registration.experiment
    for key in (*LOSS_KEYS, "lr", "pdm_p", "seconds"):
        assert _steps(client, run_id, key) == [1, 2, 3], key
    assert run.data.metrics["parameters"] == metrics["parameters"]


@pytest.mark.parametrize("logged_before_kill", [True, False])
def test_resume_continues_the_run_without_duplicates(stage_dirs, tmp_path, monkeypatch, logged_before_kill):
    """A kill after epoch 1's checkpoint, before or after its metrics reached MLflow."""
    params = _params(tmp_path, epochs=3)
    out = tmp_path / "model"
    log_epoch = TrainingRun.log_epoch

    def killed_after_epoch_1(self, row, rounds=()):
        if logged_before_kill:
            log_epoch(self, row, rounds)
        if row["epoch"] == 1:
            raise Interrupted

    with monkeypatch.context() as mp:
        mp.setattr(TrainingRun, "log_epoch", killed_after_epoch_1)
        with pytest.raises(Interrupted):
            run_train(stage_dirs["ingest"], stage_dirs["findings"], None, out, params)
    run_id = json.loads((out / RUN_FILE).read_text())["run_id"]
    client = _client(params)
    assert client.get_run(run_id).info.status == "FAILED"
    assert _steps(client, run_id, "loss") == ([1] if logged_before_kill else [])

    metrics = run_train(stage_dirs["ingest"], stage_dirs["findings"], None, out, params, resume=True)
    assert metrics["mlflow_run_id"] == run_id
    assert client.get_run(run_id).info.status == "FINISHED"
    for key in LOSS_KEYS:
        assert _steps(client, run_id, key) == [1, 2, 3], key
    assert len(client.search_runs([client.get_run(run_id).info.experiment_id])) == 1

    fresh = run_train(stage_dirs["ingest"], stage_dirs["findings"], None, out, params)  # no --resume: a new run
    assert fresh["mlflow_run_id"] != run_id and _steps(client, fresh["mlflow_run_id"], "loss") == [1, 2, 3]


def test_refresh_rounds_are_logged_once_at_their_epoch(tmp_path):
    params = _params(tmp_path)
    run = start_training_run(params, tmp_path / "model", resume=False)
    rounds = [{"epoch": 0, "round": 0, "dice_lesion_tumour": 0.3, "dice_organs": None, "fraction_changed": 0.0},
              {"epoch": 2, "round": 1, "dice_lesion_tumour": 0.4, "dice_organs": 0.8, "fraction_changed": 0.1}]
    row = {"epoch": 2, **dict.fromkeys(tracking.EPOCH_METRICS, 0.5)}
    run.log_epoch(row, rounds[:1])
    run.log_epoch(row, rounds)
    client = _client(params)
    history = client.get_metric_history(run.run_id, "pseudo_dice_lesion_tumour")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(0, 0.3), (2, 0.4)]
    assert _steps(client, run.run_id, "pseudo_dice_organs") == [2]  # a round without a score logs nothing
    assert _steps(client, run.run_id, "loss") == [2]


def test_an_outage_during_training_defers_the_points_to_the_end(tmp_path, monkeypatch):
    from mlflow.exceptions import MlflowException

    params = _params(tmp_path)
    run = start_training_run(params, tmp_path / "model", resume=False)
    rows = [{"epoch": e, **dict.fromkeys(tracking.EPOCH_METRICS, 0.1 * e)} for e in (1, 2)]
    log_batch = run.client.log_batch

    def down(*args, **kwargs):
        raise MlflowException("server down")

    monkeypatch.setattr(run.client, "log_batch", down)
    run.log_epoch(rows[0])  # training goes on
    monkeypatch.setattr(run.client, "log_batch", log_batch)
    run.log_epoch(rows[1])  # deferred: no point until the final sync
    client = _client(params)
    assert _steps(client, run.run_id, "loss") == []
    run.finish(rows, [], {"parameters": 10})
    assert _steps(client, run.run_id, "loss") == [1, 2]
    assert client.get_run(run.run_id).info.status == "FINISHED"


def test_unreachable_server_fails_before_training(stage_dirs, tmp_path):
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    params = _params(tmp_path)
    params.registration.tracking_uri = f"http://127.0.0.1:{port}"
    out = tmp_path / "model"
    with pytest.raises(TrackingUnavailable, match="nothing was trained"):
        run_train(stage_dirs["ingest"], stage_dirs["findings"], None, out, params)
    assert not (out / "checkpoint.pt").exists()


def test_register_links_the_version_to_its_training_run(stage_dirs, tmp_path):
    from medsegllm.register.run import TRAINING_RUN_TAG, run_register

    params = _params(tmp_path)
    out = tmp_path / "model"
    train_run = run_train(stage_dirs["ingest"], stage_dirs["findings"], None, out, params)["mlflow_run_id"]
    validation = tmp_path / "validation"
    write_json(validation / "metrics.json", {"dice_mean": 0.7})
    write_json(validation / "gate.json", {"passed": True, "checks": [], "validation_data_hash": "h"})
    record = run_register(out / "model.pt", validation, tmp_path / "registry", params)
    assert record["training_run_id"] == train_run
    client = _client(params)
    tags = client.get_run(record["run_id"]).data.tags
    assert tags["mlflow.parentRunId"] == train_run and tags[TRAINING_RUN_TAG] == train_run
    version = client.get_model_version(params.registration.model_name, record["version"])
    assert version.tags[TRAINING_RUN_TAG] == train_run
    assert _steps(client, version.tags[TRAINING_RUN_TAG], "loss") == [1, 2]  # the version leads to its curves
