"""Kubeflow component: DICOM ingest and harmonization, then its data gate."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE)
def ingest(params_yaml: str, cohort: Input[Dataset], ingested: Output[Dataset]):
    from pathlib import Path

    from medsegllm.common.deid import resolve_salt
    from medsegllm.config import parse_params
    from medsegllm.gates.run import run_check
    from medsegllm.ingest.run import run_ingest

    params = parse_params(params_yaml)
    run_ingest(Path(cohort.path) / "dicom", Path(ingested.path), params.ingest, resolve_salt(params.ingest))
    run_check("ingest", Path(ingested.path))
