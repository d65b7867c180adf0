"""Kubeflow component: teacher + knowledge-prior pseudo-labels, then its data gate."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE)
def pseudolabel(
    params_yaml: str,
    cohort: Input[Dataset],
    ingested: Input[Dataset],
    findings: Input[Dataset],
    pseudolabels: Output[Dataset],
):
    from pathlib import Path

    from medsegllm.config import parse_params
    from medsegllm.gates.run import run_check
    from medsegllm.pseudolabel.run import run_pseudolabel

    params = parse_params(params_yaml)
    truth = Path(cohort.path) / "truth"
    truth = truth if truth.is_dir() else None
    run_pseudolabel(Path(ingested.path), Path(findings.path), Path(pseudolabels.path), params,
                    truth_dir=truth)
    run_check("pseudolabel", Path(pseudolabels.path))
