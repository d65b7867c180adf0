"""The MedSegLLM pipeline as a scheduled Airflow 3 DAG: one task per stage, one data-gate task after each.

Tasks call the same library functions as `medsegllm <stage>` and `dvc repro`; nothing here
re-implements a stage. Each run writes under its own folder (`<data_root>/airflow/<run_id>`), so
concurrent runs never share artifacts. Parsing this file reads only the schedule from params.yaml.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pendulum
import yaml
from airflow.sdk import Param, dag, get_current_context, task

PROJECT_DIR = Path(os.environ.get("MEDSEGLLM_PROJECT_DIR", Path(__file__).resolve().parents[1]))
PARAMS_FILE = PROJECT_DIR / "params.yaml"


def _schedule() -> str | None:
    """The schedule lives in params.yaml (airflow.schedule) so that one file configures every runner."""
    raw = yaml.safe_load(PARAMS_FILE.read_text()) if PARAMS_FILE.exists() else {}
    return ((raw or {}).get("airflow") or {}).get("schedule", "@weekly")


def _run_root(params_file: str) -> Path:
    from medsegllm.config import load_params

    context = get_current_context()
    run_id = re.sub(r"[^A-Za-z0-9_.-]+", "_", context["run_id"])
    data_root = Path(load_params(params_file).airflow.data_root)
    if not data_root.is_absolute():
        data_root = PROJECT_DIR / data_root
    return data_root / "airflow" / run_id


def _check(stage: str, out_dir: str) -> dict:
    from medsegllm.gates.run import run_check

    return run_check(stage, Path(out_dir))


@dag(
    dag_id="medsegllm",
    schedule=_schedule(),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["medsegllm"],
    params={
        "params_file": Param(str(PARAMS_FILE), type="string", description="params.yaml for this run"),
        "input_dicom": Param("", type="string", description="DICOM folder; empty: generate the demo cohort"),
        "input_reports": Param("", type="string", description="reports file or folder; empty: the demo's"),
        "truth": Param("", type="string", description="hidden truth of a synthetic cohort, evaluation only"),
    },
    doc_md=__doc__,
)
def medsegllm():
    @task
    def prepare() -> dict:
        """Resolve this run's folders; generate the demo cohort when no input was given."""
        from medsegllm.config import load_params
        from medsegllm.layout import RunLayout

        conf = get_current_context()["params"]
        layout = RunLayout(_run_root(conf["params_file"]))
        run = {"params_file": conf["params_file"], "root": str(layout.root), "dicom": conf["input_dicom"],
               "reports": conf["input_reports"], "truth": conf["truth"]}
        if not conf["input_dicom"]:
            from medsegllm.synth.cohort import generate_cohort

            params = load_params(conf["params_file"])
            generate_cohort(layout.cohort, params.synth, params.seed)
            run.update(dicom=str(layout.dicom), reports=str(layout.reports_file), truth=str(layout.truth))
        return run

    @task
    def ingest(run: dict) -> str:
        from medsegllm.common.deid import resolve_salt
        from medsegllm.config import load_params
        from medsegllm.ingest.run import run_ingest
        from medsegllm.layout import RunLayout

        params = load_params(run["params_file"])
        out = RunLayout(Path(run["root"])).ingested
        run_ingest(Path(run["dicom"]), out, params.ingest, resolve_salt(params.ingest))
        return str(out)

    @task
    def reports(run: dict) -> str:
        from medsegllm.common.deid import resolve_salt
        from medsegllm.config import load_params
        from medsegllm.layout import RunLayout
        from medsegllm.reports.run import run_reports

        params = load_params(run["params_file"])
        out = RunLayout(Path(run["root"])).findings
        run_reports(Path(run["reports"]), out, params.reports, resolve_salt(params.ingest))
        return str(out)

    @task
    def pseudolabel(run: dict, ingested: str, findings: str) -> str:
        from medsegllm.config import load_params
        from medsegllm.layout import RunLayout
        from medsegllm.pseudolabel.run import run_pseudolabel

        params = load_params(run["params_file"])
        out = RunLayout(Path(run["root"])).pseudolabels
        truth = Path(run["truth"]) if run["truth"] else None
        run_pseudolabel(Path(ingested), Path(findings), out, params, truth_dir=truth)
        return str(out)

    @task
    def train(run: dict, ingested: str, findings: str, pseudolabels: str) -> str:
        from medsegllm.config import load_params
        from medsegllm.layout import RunLayout
        from medsegllm.train.run import run_train

        out = RunLayout(Path(run["root"])).model_dir
        run_train(Path(ingested), Path(findings), Path(pseudolabels), out, load_params(run["params_file"]))
        return str(out)

    @task
    def validate(run: dict, ingested: str, pseudolabels: str, model_dir: str) -> str:
        from medsegllm.config import load_params
        from medsegllm.layout import RunLayout
        from medsegllm.validate.run import run_validate

        params = load_params(run["params_file"])
        out = RunLayout(Path(run["root"])).validation
        truth = Path(run["truth"]) if run["truth"] else None
        run_validate(Path(model_dir) / "model.pt", Path(ingested), out, params, truth_dir=truth,
                     pseudo_dir=Path(pseudolabels), train_dir=Path(model_dir))
        return str(out)

    @task
    def register(run: dict, model_dir: str, validation: str) -> str:
        from medsegllm.config import load_params
        from medsegllm.layout import RunLayout
        from medsegllm.register.run import run_register

        params = load_params(run["params_file"])
        out = RunLayout(Path(run["root"])).registry
        run_register(Path(model_dir) / "model.pt", Path(validation), out, params, base_dir=PROJECT_DIR)
        return str(out)

    def gate(stage: str, out):
        """The stage's data gate as its own task: a failure stops everything downstream."""
        checked = task(task_id=f"check_{stage}")(_check)(stage, out)
        out >> checked
        return checked

    run = prepare()
    ingested = ingest(run)
    findings = reports(run)
    ingest_ok, reports_ok = gate("ingest", ingested), gate("reports", findings)
    pseudo = pseudolabel(run, ingested, findings)
    [ingest_ok, reports_ok] >> pseudo
    pseudo_ok = gate("pseudolabel", pseudo)
    model = train(run, ingested, findings, pseudo)
    pseudo_ok >> model
    model_ok = gate("train", model)
    validation = validate(run, ingested, pseudo, model)
    model_ok >> validation
    validation_ok = gate("validate", validation)
    registry = register(run, model, validation)
    validation_ok >> registry
    gate("register", registry)


medsegllm()
