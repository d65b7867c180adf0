"""The MedSegLLM Kubeflow pipeline: the same stages as dvc.yaml, as components with typed artifacts.

Two entry points share one wiring: `demo_pipeline` generates the embedded demo cohort,
`pipeline` imports a cohort folder (`dicom/`, `reports.jsonl`, optional `truth/`) from a URI.
`python -m pipelines.medsegllm_pipeline` recompiles the checked-in YAML files.
"""

import json
from pathlib import Path

import yaml
from kfp import compiler, dsl
from kfp.dsl import Dataset

from components.ingest import ingest_merge, ingest_plan, ingest_shard
from components.pseudolabel import pseudolabel
from components.register import register
from components.reports import reports
from components.synth import synth
from components.train import train
from components.validate import validate

HERE = Path(__file__).resolve().parent


def default_params() -> str:
    """The repository's params.yaml as one JSON line (JSON is YAML; a multi-line default breaks KFP's YAML header)."""
    return json.dumps(yaml.safe_load((HERE.parent / "params.yaml").read_text()), sort_keys=True)


def train_gpus() -> int:
    """GPUs of the train task, fixed at compile time (KFP takes no run-time accelerator count): the
    params.yaml value `airflow.kubernetes.train_gpus`, shared with the Airflow Kubernetes mode."""
    return int(yaml.safe_load((HERE.parent / "params.yaml").read_text())["airflow"]["kubernetes"]["train_gpus"])


def _ingest(params_yaml: str, cohort, ingest_shards: int, data_version: str) -> dsl.PipelineTask:
    """Ingest fanned out: plan, one task per shard (dsl.ParallelFor), merge + gate over the collected shards."""
    plan = ingest_plan(cohort=cohort, n_shards=ingest_shards, data_version=data_version)
    plan.set_display_name("ingest: plan shards")
    with dsl.ParallelFor(items=plan.outputs["Output"]) as shard:
        shard_task = ingest_shard(params_yaml=params_yaml, cohort=cohort, plan=plan.outputs["plan"], shard=shard)
        shard_task.set_display_name("ingest: shard").set_cpu_limit("4").set_memory_limit("16G")
    merged = ingest_merge(plan=plan.outputs["plan"], shards=dsl.Collected(shard_task.outputs["ingested_shard"]))
    return merged.set_display_name("ingest: merge + gate")


def _stages(params_yaml: str, cohort, ingest_shards: int, data_version: str, gpus: int) -> dsl.PipelineTask:
    """Wire ingest (sharded) -> reports -> pseudolabel -> train (`gpus` GPUs) -> validate -> register after a cohort artifact.

    Every component takes the whole params_yaml, so any changed parameter reruns it (KFP's cache key
    is the component, its parameter values and its input artifacts); data_version does the same for
    the data behind cohort_uri, whose artifact is otherwise identified by its URI alone.
    """
    ingested = _ingest(params_yaml, cohort, ingest_shards, data_version)
    findings = reports(params_yaml=params_yaml, cohort=cohort, data_version=data_version)
    findings.set_display_name("reports + gate")
    pseudo = pseudolabel(params_yaml=params_yaml, cohort=cohort, ingested=ingested.outputs["ingested"],
                         findings=findings.outputs["findings"]).set_display_name("pseudolabel + gate")
    trained = train(params_yaml=params_yaml, cohort=cohort, ingested=ingested.outputs["ingested"],
                    findings=findings.outputs["findings"], pseudolabels=pseudo.outputs["pseudolabels"])
    trained.set_display_name("train + gate")
    trained.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(gpus)  # >1: torchrun inside the task
    trained.set_cpu_limit(str(8 * gpus)).set_memory_limit(f"{32 * gpus}G")
    validated = validate(params_yaml=params_yaml, cohort=cohort, ingested=ingested.outputs["ingested"],
                         findings=findings.outputs["findings"], pseudolabels=pseudo.outputs["pseudolabels"],
                         model=trained.outputs["model"])
    validated.set_display_name("validate + gates")
    registered = register(params_yaml=params_yaml, model=trained.outputs["model"],
                          validation=validated.outputs["validation"]).set_display_name("register + gate")
    return registered


def build_pipelines(gpus: int) -> tuple:
    """(demo pipeline, cohort pipeline) whose train task gets `gpus` GPUs (KFP traces a pipeline when it is defined)."""

    @dsl.pipeline(name="medsegllm-demo", description="MedSegLLM on the generated demo cohort.")
    def demo_pipeline(params_yaml: str, ingest_shards: int = 1) -> str:
        cohort = synth(params_yaml=params_yaml).set_display_name("synthesize demo cohort")
        return _stages(params_yaml, cohort.outputs["cohort"], ingest_shards, "demo", gpus).outputs["Output"]

    @dsl.pipeline(name="medsegllm", description="MedSegLLM on a cohort folder: dicom/, reports.jsonl, optional truth/.")
    def pipeline(params_yaml: str, cohort_uri: str, data_version: str, ingest_shards: int = 4) -> str:
        cohort = dsl.importer(artifact_uri=cohort_uri, artifact_class=Dataset, reimport=False,
                              metadata={"data_version": data_version})
        return _stages(params_yaml, cohort.output, ingest_shards, data_version, gpus).outputs["Output"]

    return demo_pipeline, pipeline


demo_pipeline, pipeline = build_pipelines(train_gpus())


COMPILED = {demo_pipeline: HERE / "medsegllm_demo_pipeline.yaml", pipeline: HERE / "medsegllm_pipeline.yaml"}


def compile_all() -> list[Path]:
    """Compile both pipelines; the default params_yaml is the repository's params.yaml."""
    for fn, path in COMPILED.items():
        compiler.Compiler().compile(fn, str(path), pipeline_parameters={"params_yaml": default_params()})
    return list(COMPILED.values())


if __name__ == "__main__":
    for path in compile_all():
        print(path)
