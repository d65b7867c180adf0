"""Kubeflow component: train the MedSegLLM model (the pipeline gives this task a GPU), then its data gate."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.image import CUDA_IMAGE


@dsl.component(base_image=CUDA_IMAGE)
def train(
    params_yaml: str,
    ingested: Input[Dataset],
    findings: Input[Dataset],
    pseudolabels: Input[Dataset],
    model: Output[Model],
):
    from pathlib import Path

    from medsegllm.config import parse_params
    from medsegllm.gates.run import run_check
    from medsegllm.train.run import run_train

    params = parse_params(params_yaml)
    metrics = run_train(Path(ingested.path), Path(findings.path), Path(pseudolabels.path), Path(model.path), params)
    model.metadata.update({"variant": params.train.variant, "backbone": params.train.backbone,
                           "parameters": metrics.get("parameters")})
    run_check("train", Path(model.path))
