"""Kubeflow component: report scrubbing, grounded findings, descriptions and embeddings, then its data gate."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE)
def reports(params_yaml: str, cohort: Input[Dataset], data_version: str, findings: Output[Dataset]):
    """data_version is part of the cache key only: bump it when the data behind the cohort changed."""
    from pathlib import Path

    from medsegllm.common.deid import resolve_salt
    from medsegllm.config import parse_params
    from medsegllm.gates.run import run_check
    from medsegllm.reports.run import run_reports

    params = parse_params(params_yaml)
    run_reports(Path(cohort.path) / "reports.jsonl", Path(findings.path), params.reports, resolve_salt(params.ingest))
    run_check("reports", Path(findings.path))
