"""Kubeflow component: train the MedSegLLM model on the task's GPUs (torchrun, one process per GPU when
the pipeline gives it several), then its data gate."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.image import CUDA_IMAGE


@dsl.component(base_image=CUDA_IMAGE)
def train(
    params_yaml: str,
    cohort: Input[Dataset],
    ingested: Input[Dataset],
    findings: Input[Dataset],
    pseudolabels: Input[Dataset],
    model: Output[Model],
):
    from pathlib import Path

    from medsegllm.config import parse_params
    from medsegllm.gates.run import run_check
    from medsegllm.train.launch import run_train_on_all_gpus

    params = parse_params(params_yaml)
    truth = Path(cohort.path) / "truth"  # hidden truth (demo cohort only): pseudo-label Dice per refresh round
    metrics = run_train_on_all_gpus(Path(ingested.path), Path(findings.path), Path(pseudolabels.path), Path(model.path),
                                    params_yaml, truth_dir=truth if truth.is_dir() else None)
    model.metadata.update({"variant": params.train.variant, "backbone": params.train.backbone,
                           "parameters": metrics.get("parameters"), "world_size": metrics.get("world_size")})
    run_check("train", Path(model.path))
