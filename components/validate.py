"""Kubeflow component: cross-device validation and model gates; metrics and the HTML report show in the UI."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE)
def validate(
    params_yaml: str,
    cohort: Input[Dataset],
    ingested: Input[Dataset],
    findings: Input[Dataset],
    pseudolabels: Input[Dataset],
    model: Input[Model],
    validation: Output[Dataset],
    metrics: Output[Metrics],
    report: Output[HTML],
):
    import json
    import shutil
    from pathlib import Path

    from medsegllm.config import parse_params
    from medsegllm.gates.run import run_check
    from medsegllm.validate.run import run_validate

    params = parse_params(params_yaml)
    out = Path(validation.path)
    truth = Path(cohort.path) / "truth"
    truth = truth if truth.is_dir() else None
    run_validate(Path(model.path) / "model.pt", Path(ingested.path), out, params, truth_dir=truth,
                 pseudo_dir=Path(pseudolabels.path), train_dir=Path(model.path), findings_dir=Path(findings.path))
    run_check("validate", out)
    for name, value in json.loads((out / "metrics.json").read_text()).items():
        if value is not None:  # metrics.json writes null for a value that could not be measured
            metrics.log_metric(name, float(value))
    shutil.copyfile(out / "report.html", report.path)
