"""Kubeflow component: generate the embedded demo cohort (DICOM, reports, labels, hidden truth)."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE)
def synth(params_yaml: str, cohort: Output[Dataset]):
    from pathlib import Path

    from medsegllm.config import parse_params
    from medsegllm.synth.cohort import generate_cohort

    params = parse_params(params_yaml)
    generate_cohort(Path(cohort.path), params.synth, params.seed)
