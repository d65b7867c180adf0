"""The Airflow DAG's production settings, and its Kubernetes mode built into real pod specs without a cluster."""

from __future__ import annotations

import importlib.util
from datetime import timedelta
from types import SimpleNamespace
from unittest import mock

import pytest
from pydantic import ValidationError

from medsegllm.config import AirflowParams, load_params
from tests.conftest import ROOT

RUN_ID = "manual__2026-11-27T10:00:00+00:00"
RUN_DIR = "manual__2026-11-27T10_00_00_00_00"


@pytest.fixture(scope="module")
def dag_module():
    spec = importlib.util.spec_from_file_location("medsegllm_dag_under_test", ROOT / "dags" / "medsegllm_dag.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def settings() -> AirflowParams:
    return load_params(ROOT / "params.yaml").airflow


def _context(dag, task, params_file="/data/params.yaml", events=None, **inputs) -> dict:
    params = {"params_file": params_file, "input_dicom": "", "input_reports": "", "truth": ""} | inputs
    ti = SimpleNamespace(dag_id=dag.dag_id, task_id=task.task_id, map_index=-1, try_number=1)
    return {"params": params, "run_id": RUN_ID, "ti": ti, "dag": dag, "triggering_asset_events": events or {}}


def _pod(task, context):
    """The V1Pod the operator would create; the Kubernetes hook (cluster config) is the only thing faked."""
    with mock.patch.object(type(task), "hook", new_callable=mock.PropertyMock) as hook:
        hook.return_value.is_in_cluster = True
        return task.build_pod_request_obj(context)


def test_local_dag_retries_timeouts_and_assets(dag_module, settings):
    dag = dag_module.build_dag(settings)
    assert dag.catchup is False
    train = dag.get_task("train")
    assert train.retries == settings.retry.retries
    assert train.retry_delay == timedelta(seconds=settings.retry.delay_s)
    assert train.retry_exponential_backoff == settings.retry.backoff
    assert train.max_retry_delay == timedelta(seconds=settings.retry.max_delay_s)
    assert train.execution_timeout == timedelta(minutes=settings.timeout_min.train)
    assert dag.get_task("validate").execution_timeout == timedelta(minutes=settings.timeout_min.validation)
    assert dag.get_task("check_ingest").execution_timeout == timedelta(minutes=settings.timeout_min.check)
    for stage in dag_module.STAGES:
        outlets = dag.get_task(f"check_{stage}").outlets
        assert [a.name for a in outlets] == [f"medsegllm-{stage}"]
    assert dag.get_task("ingest").trigger_rule == "none_failed"  # runs when the demo cohort is skipped


def test_schedule_is_cron_or_new_data_and_data_only_without_cron(dag_module, settings):
    from airflow.sdk import Asset

    timetable = dag_module.build_dag(settings).timetable
    assert timetable.asset_condition.uri == settings.input_asset
    data_only = dag_module.build_dag(settings.model_copy(update={"schedule": None})).timetable
    assert isinstance(data_only.asset_condition, Asset) and not hasattr(data_only, "timetable")  # no cron part


def test_kubernetes_mode_builds_pods(dag_module, settings):
    k8s_settings = settings.model_copy(update={"mode": "kubernetes"})
    k = k8s_settings.kubernetes
    dag = dag_module.build_dag(k8s_settings)
    train = dag.get_task("train")
    pod = _pod(train, _context(dag, train))
    container = pod.spec.containers[0]
    root = f"{k.mount_path}/{k8s_settings.data_root}/airflow/{RUN_DIR}"
    assert container.image == k.gpu_image and container.command == ["medsegllm"]
    assert container.args == ["train", "--ingested", f"{root}/ingested", "--findings", f"{root}/findings",
                              "--pseudolabels", f"{root}/pseudolabels", "--out", f"{root}/model",
                              "--truth", f"{root}/cohort/truth", "--nproc-per-node", "0", "--params", "/data/params.yaml"]
    assert container.resources.limits["nvidia.com/gpu"] == str(k.train_gpus)
    assert container.resources.requests == {"cpu": k.train_cpu, "memory": k.train_memory}
    assert pod.spec.volumes[0].persistent_volume_claim.claim_name == k.pvc
    assert container.volume_mounts[0].mount_path == k.mount_path
    assert container.env[0].name == "MEDSEGLLM_SALT" and container.env[0].value_from.secret_key_ref.name == k.salt_secret
    assert pod.metadata.namespace == k.namespace

    gate = dag.get_task("check_validate")
    gate_pod = _pod(gate, _context(dag, gate))
    assert gate_pod.spec.containers[0].args == ["check", "validate", f"{root}/validation"]
    assert "nvidia.com/gpu" not in gate_pod.spec.containers[0].resources.limits
    assert gate_pod.spec.containers[0].image == k.image

    # inputs named by the triggering asset event replace the demo cohort and its truth
    ingest = dag.get_task("ingest")
    event = SimpleNamespace(extra={"input_dicom": "/data/incoming/batch7"})
    args = _pod(ingest, _context(dag, ingest, events={"medsegllm-input": [event]})).spec.containers[0].args
    assert args[:3] == ["ingest", "--input", "/data/incoming/batch7"]
    validate = dag.get_task("validate")
    assert "--truth" not in _pod(validate, _context(dag, validate, input_dicom="/x")).spec.containers[0].args
    assert "--truth" in _pod(validate, _context(dag, validate)).spec.containers[0].args


def test_kubernetes_dag_with_shards_maps_ingest_and_serializes(dag_module, settings):
    from airflow.serialization.serialized_objects import DagSerialization

    dag = dag_module.build_dag(settings.model_copy(update={"mode": "kubernetes", "ingest_shards": 3}))
    shard = dag.get_task("ingest_shard")
    assert shard.expand_input.value == {"shard": [0, 1, 2]}
    assert "ingest_shard" in dag.get_task("ingest_merge").upstream_task_ids
    assert "ingest_merge" in dag.get_task("check_ingest").upstream_task_ids
    run = {"root": "/r", "dicom": "/d", "params_file": "/p.yaml", "n_shards": 3, "truth": ""}
    assert dag_module.stage_argv("ingest_shard", run, 2) == [
        "ingest-shard", "--input", "/d", "--plan", "/r/ingest_shards", "--shard", "2", "--out", "/r/ingest_shards/2",
        "--params", "/p.yaml"]
    assert dag_module.stage_argv("ingest_merge", run)[1:4] == ["/r/ingest_shards/0", "/r/ingest_shards/1", "/r/ingest_shards/2"]
    DagSerialization.to_dict(dag)  # what the DAG processor stores; fails on an unserializable operator argument


def test_synth_is_skipped_when_inputs_are_given(dag_module, settings):
    from airflow.sdk.exceptions import AirflowSkipException

    dag = dag_module.build_dag(settings)
    synth = dag.get_task("synth")
    with pytest.raises(AirflowSkipException):
        synth.execute(_context(dag, synth, params_file=str(ROOT / "params.yaml"), input_dicom="/exports/dicom"))


@pytest.mark.parametrize("bad", [
    {"retry": {"retries": -1}},
    {"retry": {"delay_s": 600, "max_delay_s": 60}},
    {"timeout_min": {"train": 0}},
    {"mode": "docker"},
    {"kubernetes": {"mount_path": "data"}},
    {"ingest_shards": 0},
])
def test_invalid_airflow_settings_are_rejected(bad):
    with pytest.raises(ValidationError):
        AirflowParams.model_validate(bad)
