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
    from airflow.sdk import CronTriggerTimetable

    airflow = yaml.safe_load((ROOT / "params.yaml").read_text())["airflow"]
    dag = DagBag(dag_folder=str(ROOT / "dags")).dags["medsegllm"]
    # the cron schedule OR new input data (an event on the input asset)
    assert dag.timetable.timetable.expression == CronTriggerTimetable(airflow["schedule"], timezone="UTC").expression
    assert dag.timetable.asset_condition.uri == airflow["input_asset"]


def test_compiled_pipelines_are_current(tmp_path):
    """Recompiling gives the checked-in YAML: run `make compile-pipelines` after changing components or params."""
    from kfp import compiler

    from pipelines.medsegllm_pipeline import COMPILED, default_params

    for fn, checked_in in COMPILED.items():
        fresh = tmp_path / checked_in.name
        compiler.Compiler().compile(fn, str(fresh), pipeline_parameters={"params_yaml": default_params()})
        assert yaml.safe_load(fresh.read_text()) == yaml.safe_load(checked_in.read_text()), checked_in.name


def test_training_task_requests_one_gpu():
    from components.image import CUDA_IMAGE

    spec = yaml.safe_load((ROOT / "pipelines/medsegllm_demo_pipeline.yaml").read_text())
    container = spec["deploymentSpec"]["executors"]["exec-train"]["container"]
    assert container["image"] == CUDA_IMAGE  # docker/Dockerfile.cuda
    resources = container["resources"]
    assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert int(resources["accelerator"]["resourceCount"]) == 1
    assert float(resources["cpuLimit"]) >= 4 and float(resources["memoryLimit"]) >= 16  # GB


def test_multi_gpu_training_compiles_to_one_task_with_n_gpus(tmp_path):
    """`airflow.kubernetes.train_gpus: 8` compiles a train task given 8 GPUs whose code runs torchrun (one process each)."""
    from kfp import compiler

    import pipelines.medsegllm_pipeline as wiring

    _, pipeline = wiring.build_pipelines(8)
    path = tmp_path / "eight.yaml"
    compiler.Compiler().compile(pipeline, str(path), pipeline_parameters={"params_yaml": wiring.default_params()})
    container = yaml.safe_load(path.read_text())["deploymentSpec"]["executors"]["exec-train"]["container"]
    assert int(container["resources"]["accelerator"]["resourceCount"]) == 8
    assert float(container["resources"]["cpuLimit"]) == 64 and float(container["resources"]["memoryLimit"]) >= 256
    assert "run_train_on_all_gpus" in "\n".join(container["command"])


def test_every_component_calls_the_library_and_its_gate():
    for stage in STAGES:
        source = (ROOT / "components" / f"{stage}.py").read_text()
        library = {"ingest": "from medsegllm.ingest.shards import",
                   "train": "from medsegllm.train.launch import run_train_on_all_gpus"}.get(
            stage, f"from medsegllm.{stage}.run import run_{stage}")
        assert library in source
        assert f'run_check("{stage}"' in source


def test_kubeflow_ingest_fans_out_over_shards_and_merges():
    spec = yaml.safe_load((ROOT / "pipelines/medsegllm_pipeline.yaml").read_text())
    tasks = spec["root"]["dag"]["tasks"]
    [loop_name] = [name for name, task in tasks.items() if "parameterIterator" in task]
    loop = tasks[loop_name]
    assert loop["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--ingest-plan-Output"
    assert "ingest-shard" in spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
    merge = tasks["ingest-merge"]["inputs"]["artifacts"]["shards"]
    assert merge["taskOutputArtifact"]["producerTask"] == loop_name  # dsl.Collected over the shards
    for name in ("pseudolabel", "train", "validate"):
        assert tasks[name]["inputs"]["artifacts"]["ingested"]["taskOutputArtifact"]["producerTask"] == "ingest-merge"
    # what keys the cache: params and data_version reach the stages that read the cohort
    assert "data_version" in tasks["ingest-plan"]["inputs"]["parameters"]
    assert "data_version" in tasks["reports"]["inputs"]["parameters"]


def test_dvc_stages_call_the_cli_and_gate():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for stage in STAGES:
        cmd = stages[stage]["cmd"]
        assert cmd.startswith(f"medsegllm {stage} ") and f"medsegllm check {stage} " in cmd


def test_dvc_graph_is_valid():
    result = subprocess.run([sys.executable, "-m", "dvc", "dag", "--md"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "register" in result.stdout
