"""The three orchestrators are thin and consistent: the DAG parses, the Kubeflow YAML is current, DVC's graph is whole."""

import subprocess
import sys

import yaml

from tests.conftest import ROOT

STAGES = ["ingest", "reports", "pseudolabel", "train", "validate", "register"]


def test_dag_folder_imports_without_errors():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    dag = bag.dags["medsegllm"]
    task_ids = set(dag.task_ids)
    assert {f"check_{s}" for s in STAGES} <= task_ids and set(STAGES) <= task_ids
    assert dag.catchup is False
    # every stage's gate sits between it and the next stage
    assert "check_train" in dag.get_task("validate").upstream_task_ids
    assert "check_validate" in dag.get_task("register").upstream_task_ids


def test_dag_schedule_comes_from_params():
    from airflow.dag_processing.dagbag import DagBag

    schedule = yaml.safe_load((ROOT / "params.yaml").read_text())["airflow"]["schedule"]
    dag = DagBag(dag_folder=str(ROOT / "dags")).dags["medsegllm"]
    assert dag.schedule == schedule


def test_compiled_pipelines_are_current(tmp_path):
    """Recompiling gives the checked-in YAML: run `make compile-pipelines` after changing components or params."""
    from kfp import compiler

    from pipelines.medsegllm_pipeline import COMPILED, default_params

    for fn, checked_in in COMPILED.items():
        fresh = tmp_path / checked_in.name
        compiler.Compiler().compile(fn, str(fresh), pipeline_parameters={"params_yaml": default_params()})
        assert yaml.safe_load(fresh.read_text()) == yaml.safe_load(checked_in.read_text()), checked_in.name


def test_training_task_requests_one_gpu():
    spec = yaml.safe_load((ROOT / "pipelines/medsegllm_demo_pipeline.yaml").read_text())
    resources = spec["deploymentSpec"]["executors"]["exec-train"]["container"]["resources"]
    assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert int(resources["accelerator"]["resourceCount"]) == 1


def test_every_component_calls_the_library_and_its_gate():
    for stage in STAGES:
        source = (ROOT / "components" / f"{stage}.py").read_text()
        assert f"from medsegllm.{stage}.run import run_{stage}" in source
        assert f'run_check("{stage}"' in source


def test_dvc_stages_call_the_cli_and_gate():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for stage in STAGES:
        cmd = stages[stage]["cmd"]
        assert cmd.startswith(f"medsegllm {stage} ") and f"medsegllm check {stage} " in cmd


def test_dvc_graph_is_valid():
    result = subprocess.run([sys.executable, "-m", "dvc", "dag", "--md"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "register" in result.stdout
