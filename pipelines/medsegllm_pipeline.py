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

from components.ingest import ingest
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


def _stages(params_yaml: str, cohort) -> dsl.PipelineTask:
    """Wire ingest -> reports -> pseudolabel -> train (1 GPU) -> validate -> register after a cohort artifact."""
    ingested = ingest(params_yaml=params_yaml, cohort=cohort).set_display_name("ingest + gate")
    findings = reports(params_yaml=params_yaml, cohort=cohort).set_display_name("reports + gate")
    pseudo = pseudolabel(params_yaml=params_yaml, cohort=cohort, ingested=ingested.outputs["ingested"],
                         findings=findings.outputs["findings"]).set_display_name("pseudolabel + gate")
    trained = train(params_yaml=params_yaml, ingested=ingested.outputs["ingested"],
                    findings=findings.outputs["findings"], pseudolabels=pseudo.outputs["pseudolabels"])
    trained.set_display_name("train + gate")
    trained.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
    trained.set_cpu_limit("8").set_memory_limit("32G")
    validated = validate(params_yaml=params_yaml, cohort=cohort, ingested=ingested.outputs["ingested"],
                         pseudolabels=pseudo.outputs["pseudolabels"], model=trained.outputs["model"])
    validated.set_display_name("validate + gates")
    registered = register(params_yaml=params_yaml, model=trained.outputs["model"],
                          validation=validated.outputs["validation"]).set_display_name("register + gate")
    return registered


@dsl.pipeline(name="medsegllm-demo", description="MedSegLLM on the generated demo cohort.")
def demo_pipeline(params_yaml: str) -> str:
    cohort = synth(params_yaml=params_yaml).set_display_name("synthesize demo cohort")
    return _stages(params_yaml, cohort.outputs["cohort"]).outputs["Output"]


@dsl.pipeline(name="medsegllm", description="MedSegLLM on a cohort folder: dicom/, reports.jsonl, optional truth/.")
def pipeline(params_yaml: str, cohort_uri: str) -> str:
    cohort = dsl.importer(artifact_uri=cohort_uri, artifact_class=Dataset, reimport=False)
    return _stages(params_yaml, cohort.output).outputs["Output"]


COMPILED = {demo_pipeline: HERE / "medsegllm_demo_pipeline.yaml", pipeline: HERE / "medsegllm_pipeline.yaml"}


def compile_all() -> list[Path]:
    """Compile both pipelines; the default params_yaml is the repository's params.yaml."""
    for fn, path in COMPILED.items():
        compiler.Compiler().compile(fn, str(path), pipeline_parameters={"params_yaml": default_params()})
    return list(COMPILED.values())


if __name__ == "__main__":
    for path in compile_all():
        print(path)
