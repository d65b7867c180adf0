"""The MedSegLLM pipeline as a scheduled Airflow 3 DAG: one task per stage, one data-gate task after each.

Every task runs one `medsegllm` command line (`stage_argv`, the commands of dvc.yaml), so nothing
here re-implements a stage. `airflow.mode` in params.yaml picks where it runs: `local` calls the
CLI in the worker process (which calls the library); `kubernetes` runs it as a pod of the project
image, with the data on a PersistentVolumeClaim and a GPU for training. Each run writes under its
own folder (`<data_root>/airflow/<run_id>`), so concurrent runs never share artifacts.

Runs start on the schedule (catchup off) or when the input Asset gets an event (new studies); an
event's `extra` may name the run's inputs (`input_dicom`, `input_reports`, `truth`). Each gate task
emits its stage's Asset with the checked folder in `extra`. Retries back off exponentially and
every task has its own timeout (`airflow.retry`, `airflow.timeout_min`). Parsing this file reads
params.yaml only.
"""

from __future__ import annotations

import contextlib
import os
import re
from datetime import timedelta
from pathlib import Path, PurePosixPath

import pendulum
from airflow.sdk import DAG, Asset, AssetOrTimeSchedule, BaseOperator, CronTriggerTimetable, Param
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from medsegllm.config import AirflowParams, load_params
from medsegllm.layout import RunLayout

PROJECT_DIR = Path(os.environ.get("MEDSEGLLM_PROJECT_DIR", Path(__file__).resolve().parents[1]))
# The DAG's shape (mode, schedule, shards, retries, timeouts) comes from this file when the DAG is parsed;
# each run's stage parameters and data_root come from the run's `params_file` (default: the same file).
PARAMS_FILE = Path(os.environ.get("MEDSEGLLM_PARAMS_FILE", PROJECT_DIR / "params.yaml"))
STAGES = ("ingest", "reports", "pseudolabel", "train", "validate", "register")
INPUT_KEYS = ("input_dicom", "input_reports", "truth")


def stage_asset(stage: str) -> Asset:
    return Asset(name=f"medsegllm-{stage}", uri=f"medsegllm://{stage}", group="medsegllm")


def run_root(run_base: str, params_file: str, run_id: str) -> Path:
    """`<data_root>/airflow/<run_id>`; run_base is fixed in kubernetes mode, else data_root comes from the run's params."""
    if not run_base:
        data_root = Path(load_params(params_file).airflow.data_root)
        run_base = str(data_root if data_root.is_absolute() else PROJECT_DIR / data_root)
    return Path(run_base) / "airflow" / re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id)


def resolve_run(context, run_base: str, n_shards: int) -> dict:
    """This run's folders and inputs: DAG params, overridden by the extras of the asset events that triggered it."""
    conf = context["params"]
    inputs = {key: conf.get(key) or "" for key in INPUT_KEYS}
    for events in (context.get("triggering_asset_events") or {}).values():
        for event in events:
            inputs.update({k: str(v) for k, v in (event.extra or {}).items() if k in INPUT_KEYS and v})
    layout = RunLayout(run_root(run_base, conf["params_file"], context["run_id"]))
    demo = not inputs["input_dicom"]
    return {
        "params_file": conf["params_file"], "root": str(layout.root), "demo": demo, "n_shards": n_shards,
        "dicom": inputs["input_dicom"] or str(layout.dicom),
        "reports": inputs["input_reports"] or str(layout.reports_file),
        "truth": inputs["truth"] or (str(layout.truth) if demo else ""),
    }


def stage_outputs(layout: RunLayout) -> dict[str, Path]:
    return {"ingest": layout.ingested, "reports": layout.findings, "pseudolabel": layout.pseudolabels,
            "train": layout.model_dir, "validate": layout.validation, "register": layout.registry}


def stage_argv(stage: str, run: dict, shard: int | None = None) -> list[str]:
    """The `medsegllm` command line of one task (`check_<stage>` runs that stage's data gate)."""
    layout = RunLayout(Path(run["root"]))
    out = stage_outputs(layout)
    if stage.startswith("check_"):
        return ["check", stage.removeprefix("check_"), str(out[stage.removeprefix("check_")])]
    params = ["--params", run["params_file"]]
    truth = ["--truth", run["truth"]] if run["truth"] else []
    shards = layout.ingest_shards
    argv = {
        "synth": lambda: ["synth", "--out", layout.cohort],
        "ingest": lambda: ["ingest", "--input", run["dicom"], "--out", out["ingest"]],
        "ingest_plan": lambda: ["ingest-plan", "--input", run["dicom"], "--shards", run["n_shards"], "--out", shards],
        "ingest_shard": lambda: ["ingest-shard", "--input", run["dicom"], "--plan", shards, "--shard", shard,
                                 "--out", shards / str(shard)],
        "ingest_merge": lambda: ["ingest-merge", *(shards / str(i) for i in range(run["n_shards"])),
                                 "--plan", shards, "--out", out["ingest"]],
        "reports": lambda: ["reports", "--input", run["reports"], "--out", out["reports"]],
        "pseudolabel": lambda: ["pseudolabel", "--ingested", out["ingest"], "--findings", out["reports"],
                                "--out", out["pseudolabel"], *truth],
        "train": lambda: ["train", "--ingested", out["ingest"], "--findings", out["reports"],
                          "--pseudolabels", out["pseudolabel"], "--out", out["train"], *truth,
                          "--nproc-per-node", 0],  # one process per GPU the task was given (torchrun)
        "validate": lambda: ["validate", "--model", layout.model, "--ingested", out["ingest"], "--out", out["validate"],
                             "--pseudolabels", out["pseudolabel"], "--train-dir", out["train"],
                             "--findings", out["reports"], *truth],
        "register": lambda: ["register", "--model", layout.model, "--validation", out["validate"], "--out", out["register"]],
    }[stage]()
    plan_only = stage in ("ingest_plan", "ingest_merge")  # these two read no params
    return [str(a) for a in argv] + ([] if plan_only else params)


class _Stage:
    """What both execution modes share: resolve the run, skip the demo cohort when inputs were given, record assets."""

    def _resolve(self, context) -> dict:
        run = resolve_run(context, self.run_base, self.n_shards)
        if self.stage == "synth" and not run["demo"]:
            raise AirflowSkipException("inputs were given: no demo cohort")
        return run

    def _record(self, context, run: dict) -> None:
        if self.stage.startswith("check_"):
            stage = self.stage.removeprefix("check_")
            path = stage_outputs(RunLayout(Path(run["root"])))[stage]
            context["outlet_events"][stage_asset(stage)].extra = {"path": str(path), "run_id": context["run_id"]}


class LocalStageOperator(_Stage, BaseOperator):
    """Runs the stage's CLI in the worker process, from the project folder (as `dvc repro` does)."""

    def __init__(self, *, stage: str, run_base: str = "", n_shards: int = 1, shard: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.stage, self.run_base, self.n_shards, self.shard = stage, run_base, n_shards, shard

    def execute(self, context) -> None:
        from medsegllm.cli import app

        run = self._resolve(context)
        argv = stage_argv(self.stage, run, self.shard)
        self.log.info("medsegllm %s", " ".join(argv))
        with contextlib.chdir(PROJECT_DIR):
            code = app(args=argv, prog_name="medsegllm", standalone_mode=False)
        if code:  # the CLI exits nonzero on a reported, deterministic failure (gate, bad input): retrying cannot help
            raise AirflowFailException(f"medsegllm {argv[0]} exited with {code}")
        self._record(context, run)


def _pod_operator_class():
    """Imported only in kubernetes mode: the provider is heavy and local runs do not need it."""
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    class PodStageOperator(_Stage, KubernetesPodOperator):
        """Runs the stage's CLI as a pod of the project image (its entrypoint is `medsegllm`)."""

        def __init__(self, *, stage: str, run_base: str = "", n_shards: int = 1, shard: int | None = None, **kwargs):
            super().__init__(cmds=["medsegllm"], **kwargs)
            self.stage, self.run_base, self.n_shards, self.shard = stage, run_base, n_shards, shard

        def build_pod_request_obj(self, context=None):
            if context is not None:
                self.arguments = stage_argv(self.stage, self._resolve(context), self.shard)
            return super().build_pod_request_obj(context)

        def execute(self, context):
            run = self._resolve(context)
            result = super().execute(context)
            self._record(context, run)
            return result

    return PodStageOperator


def _pod_kwargs(settings: AirflowParams, stage: str) -> dict:
    """Image, namespace, PVC volume, salt secret and resources (GPU for train) of one stage's pod."""
    from airflow.providers.cncf.kubernetes.secret import Secret
    from kubernetes.client import models as k8s

    k = settings.kubernetes
    train = stage == "train"
    requests = {"cpu": k.train_cpu if train else k.cpu, "memory": k.train_memory if train else k.memory}
    limits = dict(requests) | ({"nvidia.com/gpu": str(k.train_gpus)} if train and k.train_gpus else {})
    return {
        "image": k.gpu_image if train else k.image, "namespace": k.namespace, "in_cluster": k.in_cluster,
        "service_account_name": k.service_account,
        "name": f"medsegllm-{stage.replace('_', '-')}",
        "volumes": [k8s.V1Volume(name="data", persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(claim_name=k.pvc))],
        "volume_mounts": [k8s.V1VolumeMount(name="data", mount_path=k.mount_path)],
        "secrets": [Secret("env", "MEDSEGLLM_SALT", k.salt_secret, "salt")],
        "container_resources": k8s.V1ResourceRequirements(requests=requests, limits=limits),
        "tolerations": [k8s.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")] if train else [],
        "on_finish_action": "delete_succeeded_pod",
        "get_logs": True,
    }


def _schedule(settings: AirflowParams):
    """The cron schedule OR an event on the input Asset (new data); input only when no schedule is set."""
    data = Asset(name="medsegllm-input", uri=settings.input_asset, group="medsegllm")
    if settings.schedule is None:
        return data
    return AssetOrTimeSchedule(timetable=CronTriggerTimetable(settings.schedule, timezone="UTC"), assets=data)


def build_dag(settings: AirflowParams, params_file: Path = PARAMS_FILE) -> DAG:
    """The DAG for one configuration (`airflow` section of params.yaml)."""
    kubernetes = settings.mode == "kubernetes"
    if kubernetes:
        data_root = PurePosixPath(settings.data_root)
        run_base = str(data_root if data_root.is_absolute() else PurePosixPath(settings.kubernetes.mount_path) / data_root)
    else:
        run_base = ""
    retry = settings.retry
    default_args = {
        "retries": retry.retries, "retry_delay": timedelta(seconds=retry.delay_s),
        "retry_exponential_backoff": retry.backoff if retry.backoff > 1 else 0,
        "max_retry_delay": timedelta(seconds=retry.max_delay_s),
    }
    operator = _pod_operator_class() if kubernetes else LocalStageOperator

    def stage_kwargs(stage: str, timeout_of: str) -> dict:
        common = {"stage": stage, "run_base": run_base, "n_shards": settings.ingest_shards,
                  "execution_timeout": timedelta(minutes=settings.timeout_min.minutes(timeout_of))}
        return common | (_pod_kwargs(settings, stage) if kubernetes else {})

    def make(stage: str, timeout_of: str | None = None, **kwargs) -> BaseOperator:
        return operator(task_id=stage, **stage_kwargs(stage, timeout_of or stage), **kwargs)

    def gated(stage: str, task: BaseOperator) -> BaseOperator:
        """The stage's data gate as its own task: a failure stops everything downstream; success emits the asset."""
        check = make(f"check_{stage}", "check", outlets=[stage_asset(stage)])
        task >> check
        return check

    with DAG(
        dag_id="medsegllm",
        schedule=_schedule(settings),
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        max_active_runs=1,
        default_args=default_args,
        tags=["medsegllm", settings.mode],
        params={
            "params_file": Param(str(params_file), type="string", description="params.yaml for this run"),
            "input_dicom": Param("", type="string", description="DICOM folder; empty: generate the demo cohort"),
            "input_reports": Param("", type="string", description="reports file or folder; empty: the demo's"),
            "truth": Param("", type="string", description="hidden truth of a synthetic cohort, evaluation only"),
        },
        doc_md=__doc__,
    ) as dag:
        synth = make("synth")
        first = {"trigger_rule": "none_failed"}  # runs whether the demo cohort was generated or skipped
        if settings.ingest_shards > 1:
            plan = make("ingest_plan", "ingest", **first)
            mapped = operator.partial(task_id="ingest_shard", **stage_kwargs("ingest_shard", "ingest")).expand(
                shard=list(range(settings.ingest_shards)))
            ingest = make("ingest_merge", "ingest")
            synth >> plan >> mapped >> ingest
        else:
            ingest = make("ingest", **first)
            synth >> ingest
        reports = make("reports", **first)
        synth >> reports
        upstream = [gated("ingest", ingest), gated("reports", reports)]
        for stage in STAGES[2:]:
            task = make(stage)
            upstream >> task
            upstream = gated(stage, task)
    return dag


build_dag(load_params(PARAMS_FILE).airflow)
