"""The Airflow DAG runs every stage and gate end to end (`dag.test()`, in-process, sqlite metadata DB)."""

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def test_airflow_dag_end_to_end(tmp_path, tiny_params_file):
    from airflow.utils import db
    from airflow.utils.cli import get_bagged_dag

    db.initdb()
    dag = get_bagged_dag(bundle_names=None, dag_id="medsegllm")
    run = dag.test(run_conf={"params_file": str(tiny_params_file)})
    assert str(run.state) in {"success", "DagRunState.SUCCESS"}, run.state

    run_dirs = list((tmp_path / "data" / "airflow").iterdir())
    assert len(run_dirs) == 1, "one run-scoped folder per DAG run"
    registration = json.loads((run_dirs[0] / "registry" / "registration.json").read_text())
    assert registration["alias"] == "champion"
    for stage_dir in ["ingested", "findings", "pseudolabels", "model", "validation", "registry"]:
        assert json.loads((Path(run_dirs[0]) / stage_dir / "data_checks.json").read_text())["passed"]
