"""Kubeflow component: MLflow registration; `champion` moves only when the new model is better."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE)
def register(params_yaml: str, model: Input[Model], validation: Input[Dataset], registration: Output[Artifact]) -> str:
    import json
    from pathlib import Path

    from medsegllm.config import parse_params
    from medsegllm.gates.run import run_check
    from medsegllm.register.run import run_register

    params = parse_params(params_yaml)
    out = Path(registration.path)
    result = run_register(Path(model.path) / "model.pt", Path(validation.path), out, params)
    run_check("register", out)
    registration.metadata.update({k: result[k] for k in ("model_name", "version", "alias")})
    return json.dumps(result)
