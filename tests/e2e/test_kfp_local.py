"""The Kubeflow demo pipeline runs locally with kfp's SubprocessRunner, every component calling the library."""

import json

import pytest
import yaml

pytestmark = [
    pytest.mark.e2e,
    # The local runner says it ignores GPU/CPU requests and display names, and that the image is not used.
    pytest.mark.filterwarnings("ignore::UserWarning:kfp.local.orchestrator.task_executor"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning:kfp.local.subprocess_task_handler"),
]


def test_kfp_pipeline_runs_locally(tmp_path, tiny_params_file):
    from kfp import local

    from pipelines.medsegllm_pipeline import demo_pipeline

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp_root"))
    params_json = json.dumps(yaml.safe_load(tiny_params_file.read_text()))
    result = demo_pipeline(params_yaml=params_json, ingest_shards=2)  # ingest fans out (dsl.ParallelFor) and merges
    registration = json.loads(result.output)
    assert registration["alias"] == "champion" and int(registration["version"]) == 1
    merged = [json.loads(p.read_text()) for p in (tmp_path / "kfp_root").rglob("ingested/summary.json")]
    assert len(merged) == 1 and merged[0]["n_shards"] == 2 and merged[0]["n_series"] > 0
