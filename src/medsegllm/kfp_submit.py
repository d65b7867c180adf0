"""Submit a compiled MedSegLLM pipeline package to a Kubeflow Pipelines endpoint with `kfp.Client`.

The package is the checked-in YAML of `pipelines/` (what a user would upload in the UI); the run's
params_yaml is the given params file, validated first, passed as one JSON line like the compiled default.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from medsegllm.config import load_params

PACKAGES = {"demo": "pipelines/medsegllm_demo_pipeline.yaml", "cohort": "pipelines/medsegllm_pipeline.yaml"}


def pipeline_arguments(params_file: Path, cohort_uri: str | None, data_version: str | None,
                       ingest_shards: int | None) -> dict:
    """The run's pipeline parameters; cohort_uri and data_version only for the cohort pipeline."""
    load_params(params_file)  # fail here, not in a pod, on an invalid file
    arguments: dict = {"params_yaml": json.dumps(yaml.safe_load(Path(params_file).read_text()) or {}, sort_keys=True)}
    if cohort_uri is not None:
        arguments |= {"cohort_uri": cohort_uri, "data_version": data_version or ""}
    if ingest_shards is not None:
        arguments["ingest_shards"] = ingest_shards
    return arguments


def submit(host: str, package: Path, arguments: dict, experiment: str, run_name: str | None = None,
           namespace: str | None = None, enable_caching: bool | None = None) -> dict:
    """Create (or reuse) the experiment and start one run; returns the run and experiment ids."""
    import kfp

    declared = yaml.safe_load(Path(package).read_text())["root"]["inputDefinitions"]["parameters"]
    unknown = set(arguments) - set(declared)
    if unknown:
        raise ValueError(f"{package.name} has no parameter(s) {sorted(unknown)}; it takes {sorted(declared)}")
    client = kfp.Client(host=host, namespace=namespace or "kubeflow")
    result = client.create_run_from_pipeline_package(
        str(package), arguments=arguments, run_name=run_name, experiment_name=experiment,
        namespace=namespace, enable_caching=enable_caching,
    )
    return {"run_id": result.run_id, "experiment": experiment, "package": str(package), "host": host}
