"""`medsegllm <stage>`: one console command per pipeline stage, thin over the stage's run function.

Stage modules are imported inside each command, so `medsegllm --help` stays fast and a command
pays only for the libraries it uses.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from medsegllm.config import Params, load_params

if TYPE_CHECKING:
    from medsegllm.common.resources import Start

app = typer.Typer(
    name="medsegllm",
    help="DICOM studies and radiology reports in; a validated, registered segmentation model out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ParamsOpt = Annotated[Path, typer.Option("--params", help="params.yaml to read (validated by medsegllm.config.Params).")]
OutOpt = Annotated[Path, typer.Option("--out", help="Output folder of this stage (created if missing).")]
WorkersOpt = Annotated[Optional[int], typer.Option(min=1, help="Processes for the header scan and the series (default: params ingest.workers).")]
TruthOpt = Annotated[
    Optional[Path],
    typer.Option("--truth", help="Hidden ground truth of a synthetic cohort (cohort/truth): evaluation only."),
]
MirrorOpt = Annotated[
    Optional[bool],
    typer.Option("--mirror/--no-mirror", help="Test-time mirroring (mean over x, y and x+y flips); default: the model's train.inference.mirror."),
]


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    from rich.console import Console
    from rich.logging import RichHandler

    logging.basicConfig(  # logs on stderr: stdout carries each command's JSON summary alone
        level=logging.DEBUG if verbose else logging.WARNING,  # libraries (GX, MLflow) speak only when asked
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=False)],
    )
    logging.getLogger("medsegllm").setLevel(logging.DEBUG if verbose else logging.INFO)


def _params(path: Path) -> Params:
    try:
        return load_params(path)
    except Exception as exc:  # pydantic's message names the bad key; show it without a traceback
        _fail(f"invalid params file {path}: {exc}")


def _salt(params: Params) -> str:
    from medsegllm.common.deid import resolve_salt

    return resolve_salt(params.ingest)


def _fail(message: str, code: int = 1):
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _print(summary: dict) -> None:
    typer.echo(json.dumps(summary, indent=2, sort_keys=True, default=str))


@app.command()
def synth(
    out: OutOpt,
    params_file: ParamsOpt = Path("params.yaml"),
    n_studies: Annotated[Optional[int], typer.Option(help="Override synth.n_studies.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Override the global seed.")] = None,
) -> None:
    """Generate the embedded demo cohort: CT and MR DICOM from 6 scanners, reports, DICOM SEG labels, hidden truth."""
    from medsegllm.synth.cohort import generate_cohort

    params = _params(params_file)
    synth_params = params.synth.model_copy(update={"n_studies": n_studies} if n_studies else {})
    _print(generate_cohort(out, synth_params, params.seed if seed is None else seed))


@app.command()
def ingest(
    input: Annotated[Path, typer.Option("--input", help="DICOM folder tree (any nesting); SEG files in it become labels.")],
    out: OutOpt,
    params_file: ParamsOpt = Path("params.yaml"),
    workers: WorkersOpt = None,
) -> None:
    """Assemble, de-identify and harmonize series; write volumes, labels, manifest.parquet and quarantine.parquet."""
    from medsegllm.ingest.run import run_ingest

    params = _params(params_file)
    if not input.is_dir():
        _fail(f"--input {input} is not a folder")
    _print(run_ingest(input, out, params.ingest, _salt(params), workers=workers or params.ingest.workers,
                      holdout_devices=params.split.holdout_devices))


@app.command("quarantine-resolve")
def quarantine_resolve(
    input: Annotated[Path, typer.Option("--input", help="The DICOM folder tree that was ingested (or segmented).")],
    quarantine: Annotated[Path, typer.Option("--quarantine", help="quarantine.parquet of `ingest` or `segment`.")],
    params_file: ParamsOpt = Path("params.yaml"),
) -> None:
    """Print each quarantined file's real path next to its pseudonymized one (stdout only: never written to a file)."""
    from medsegllm.ingest.quarantine import resolve_quarantine

    params = _params(params_file)
    if not input.is_dir():
        _fail(f"--input {input} is not a folder")
    rows = resolve_quarantine(input, quarantine, _salt(params))
    for row in rows:
        typer.echo(f"{row['path']}\t{row['input_path'] or '(not found under --input)'}\t{row['reason']}")
    if any(row["input_path"] is None for row in rows):
        _fail("some quarantined files are not under --input (another input tree, or another salt)")


@app.command("ingest-plan")
def ingest_plan(
    input: Annotated[Path, typer.Option("--input", help="DICOM folder tree to split.")],
    shards: Annotated[int, typer.Option("--shards", min=1, help="Number of shards.")],
    out: OutOpt,
) -> None:
    """Split a DICOM tree into shards (headers only): a series and its SEGs never span shards. Writes plan.json."""
    from medsegllm.ingest.shards import write_plan

    if not input.is_dir():
        _fail(f"--input {input} is not a folder")
    _print(write_plan(input, shards, out))


@app.command("ingest-shard")
def ingest_shard(
    input: Annotated[Path, typer.Option("--input", help="The DICOM folder tree the plan was made from.")],
    plan: Annotated[Path, typer.Option("--plan", help="plan.json of `ingest-plan` (or its folder).")],
    shard: Annotated[int, typer.Option("--shard", min=0, help="Shard index, 0-based.")],
    out: OutOpt,
    params_file: ParamsOpt = Path("params.yaml"),
    workers: WorkersOpt = None,
) -> None:
    """Ingest one shard of a plan; `ingest-merge` combines the shard outputs."""
    from medsegllm.ingest.shards import run_ingest_shard

    params = _params(params_file)
    _print(run_ingest_shard(input, plan, shard, out, params.ingest, _salt(params), workers=workers or params.ingest.workers,
                            holdout_devices=params.split.holdout_devices))


@app.command("ingest-merge")
def ingest_merge(
    shards: Annotated[list[Path], typer.Argument(help="Output folders of `ingest-shard`, one per shard.")],
    out: OutOpt,
    plan: Annotated[Optional[Path], typer.Option("--plan", help="Check that every planned shard and file is present.")] = None,
) -> None:
    """Merge shard outputs into one ingest output; fails on a missing shard, a duplicate series or a lost file."""
    from medsegllm.ingest.shards import ShardMergeError, merge_shards

    try:
        _print(merge_shards(shards, out, plan))
    except ShardMergeError as exc:
        _fail(f"ingest merge: {exc}")


@app.command()
def reports(
    input: Annotated[Path, typer.Option("--input", help="Reports: a JSONL/CSV file, or a folder of them and DICOM SR.")],
    out: OutOpt,
    params_file: ParamsOpt = Path("params.yaml"),
) -> None:
    """Scrub reports, extract grounded findings, write descriptions and text embeddings to findings.parquet."""
    from medsegllm.reports.run import run_reports

    params = _params(params_file)
    if not input.exists():
        _fail(f"--input {input} does not exist")
    _print(run_reports(input, out, params.reports, _salt(params)))


@app.command()
def pseudolabel(
    ingested: Annotated[Path, typer.Option("--ingested", help="Output folder of `ingest`.")],
    findings: Annotated[Path, typer.Option("--findings", help="Output folder of `reports`.")],
    out: OutOpt,
    params_file: ParamsOpt = Path("params.yaml"),
    truth: TruthOpt = None,
) -> None:
    """Teacher prediction fused with the report's knowledge prior: pseudo-masks and confidence for unlabelled studies."""
    from medsegllm.pseudolabel.run import run_pseudolabel

    params = _params(params_file)
    _print(run_pseudolabel(ingested, findings, out, params, truth_dir=truth))


@app.command()
def train(
    ingested: Annotated[Path, typer.Option("--ingested", help="Output folder of `ingest`.")],
    findings: Annotated[Path, typer.Option("--findings", help="Output folder of `reports`.")],
    out: OutOpt,
    pseudolabels: Annotated[Optional[Path], typer.Option("--pseudolabels", help="Output folder of `pseudolabel`.")] = None,
    params_file: ParamsOpt = Path("params.yaml"),
    resume: Annotated[bool, typer.Option(help="Continue from the last epoch checkpoint in --out.")] = False,
    truth: TruthOpt = None,
    nproc_per_node: Annotated[int, typer.Option("--nproc-per-node", help="Data-parallel processes (torchrun, one per GPU); 0: one per visible GPU.")] = 1,
) -> None:
    """Train the segmentation model (alignment, DAN, PDM as set in params); CUDA when present.

    With --truth (the demo's hidden truth), pseudo_rounds.csv logs pseudo-label Dice per refresh round.
    """
    from medsegllm.train import launch
    from medsegllm.train.run import run_train

    params = _params(params_file)
    nproc = launch.processes(nproc_per_node)
    if nproc > 1 and not launch.under_torchrun():
        args = launch.train_args(ingested, findings, out, params_file, pseudolabels, truth, resume)
        raise typer.Exit(launch.relaunch(nproc, args))
    metrics = run_train(ingested, findings, pseudolabels, out, params, resume=resume, truth_dir=truth)
    if os.environ.get("RANK", "0") == "0":  # under torchrun every rank returns the metrics; one prints them
        _print(metrics)


@app.command()
def validate(
    model: Annotated[Path, typer.Option("--model", help="Checkpoint written by `train` (model.pt).")],
    ingested: Annotated[Path, typer.Option("--ingested", help="Output folder of `ingest`.")],
    out: OutOpt,
    params_file: ParamsOpt = Path("params.yaml"),
    truth: TruthOpt = None,
    pseudolabels: Annotated[Optional[Path], typer.Option("--pseudolabels", help="For pseudo-label quality in the report.")] = None,
    train_dir: Annotated[Optional[Path], typer.Option("--train-dir", help="For the training curve in the report.")] = None,
    reference_checkpoint: Annotated[Optional[Path], typer.Option("--reference-checkpoint", help="model.pt of the same network trained with train.dan.enabled=false and train.pdm.enabled=false: its feature JS is reported as js_features_without_dan_pdm.")] = None,
    mirror: MirrorOpt = None,
    findings: Annotated[Optional[Path], typer.Option("--findings", help="Output folder of `reports`: the series whose study has a report are also scored report-guided, as `segment --reports` labels them (dice_*_report_guided).")] = None,
) -> None:
    """Dice/HD95 per device and modality, cross-device JS divergence, model gates; exits 1 when a gate fails."""
    from medsegllm.validate.run import GateFailed, run_validate

    params = _params(params_file)
    if mirror is not None:
        params = params.model_copy(update={"validation": params.validation.model_copy(update={"mirror": mirror})})
    try:
        result = run_validate(model, ingested, out, params, truth_dir=truth,
                              pseudo_dir=pseudolabels, train_dir=train_dir,
                              reference_model_path=reference_checkpoint, findings_dir=findings)
    except GateFailed as exc:
        _fail(f"validation gate failed:\n{exc}")
    _print(result)


@app.command()
def register(
    model: Annotated[Path, typer.Option("--model", help="Checkpoint written by `train` (model.pt).")],
    validation: Annotated[Path, typer.Option("--validation", help="Output folder of `validate`.")],
    out: OutOpt,
    params_file: ParamsOpt = Path("params.yaml"),
) -> None:
    """Register the model in MLflow; alias `champion` moves only if the gates passed and it beats the champion."""
    from medsegllm.register.run import run_register

    params = _params(params_file)
    _print(run_register(model, validation, out, params))


@app.command()
def segment(
    model: Annotated[str, typer.Option("--model", help="Checkpoint written by `train` (model.pt), or an MLflow URI such as models:/medsegllm@champion (tracking URI from params register.tracking_uri; trusted registries only).")],
    input: Annotated[Path, typer.Option("--input", help="DICOM folder tree; every CT/MR series in it is segmented.")],
    out: OutOpt,
    params_file: ParamsOpt = Path("params.yaml"),
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the network first (10-40 s once on CPU): pays off on folders with many series.")] = False,
    mirror: MirrorOpt = None,
    reports: Annotated[Path | None, typer.Option("--reports", help="Radiology reports of these studies (JSONL/CSV with accession_number or study_instance_uid and report_text, or a folder with DICOM SR), as `reports` reads: a reported study's lesions are placed from its report over the model's organs (report-guided); other series get the model's label map.")] = None,
) -> None:
    """Segment new DICOM series: one DICOM SEG and one NIfTI label map per series, plus segment_summary.json."""
    from medsegllm.segment.guided import ReportsUnreadable
    from medsegllm.segment.run import run_segment
    from medsegllm.segment.source import ModelUnavailable

    params = _params(params_file)
    if not input.is_dir():
        _fail(f"--input {input} is not a folder")
    try:
        result = run_segment(model, input, out, params, _salt(params), compile=compile, mirror=mirror, reports=reports)
    except (ModelUnavailable, ReportsUnreadable) as exc:
        _fail(str(exc))
    _print(result)
    if result["n_series"]:
        typer.echo(f"segmented {result['n_series']} series, {result['n_slices']} slices in {result['seconds']:.2f} s: "
                   f"latency {result['latency_s_per_series']:.2f} s/series, throughput {result['slices_per_s']:.1f} slices/s "
                   f"(network alone {result['predict_slices_per_s']:.1f} slices/s; model load {result['model_load_seconds']:.2f} s"
                   + (f", compile {result['compile_seconds']:.1f} s)" if result["compiled"] else ")"),
                   err=True)


@app.command()
def check(
    stage: Annotated[str, typer.Argument(help="ingest, reports, pseudolabel, train, validate or register.")],
    out: Annotated[Path, typer.Argument(help="That stage's output folder.")],
) -> None:
    """Run a stage's Great Expectations data gate; exits 1 with the failed expectations when the data is wrong."""
    from medsegllm.gates.run import DataGateFailed, run_check

    try:
        report = run_check(stage, out)
    except (DataGateFailed, ValueError) as exc:
        _fail(str(exc))
    typer.echo(f"{stage}: {report['n_checks']} data checks passed ({report['seconds']} s)")


kfp_app = typer.Typer(help="Kubeflow Pipelines: submit the compiled pipeline to a cluster.", no_args_is_help=True)
app.add_typer(kfp_app, name="kfp")


@kfp_app.command("submit")
def kfp_submit(
    host: Annotated[str, typer.Option("--host", help="Kubeflow Pipelines API endpoint, e.g. https://kubeflow.example.org/pipeline.")],
    experiment: Annotated[str, typer.Option("--experiment", help="Experiment to file the run under (created if missing).")] = "medsegllm",
    pipeline: Annotated[str, typer.Option("--pipeline", help="demo (generates the cohort) or cohort (imports --cohort-uri).")] = "cohort",
    cohort_uri: Annotated[Optional[str], typer.Option("--cohort-uri", help="gs://, s3:// or minio:// folder with dicom/, reports.jsonl[, truth/].")] = None,
    data_version: Annotated[str, typer.Option("--data-version", help="Changes with the data behind --cohort-uri, so cached steps rerun.")] = "",
    ingest_shards: Annotated[Optional[int], typer.Option("--ingest-shards", min=1, help="Ingest fan-out (default: the package's).")] = None,
    params_file: ParamsOpt = Path("params.yaml"),
    package: Annotated[Optional[Path], typer.Option("--package", help="Compiled pipeline YAML (default: the checked-in one of --pipeline).")] = None,
    run_name: Annotated[Optional[str], typer.Option("--run-name")] = None,
    namespace: Annotated[Optional[str], typer.Option("--namespace", help="Profile namespace of a multi-user deployment.")] = None,
    cache: Annotated[Optional[bool], typer.Option("--cache/--no-cache", help="Override the compiled caching settings.")] = None,
) -> None:
    """Submit a run of the compiled MedSegLLM pipeline to a Kubeflow Pipelines endpoint."""
    from medsegllm.kfp_submit import PACKAGES, pipeline_arguments, submit

    if pipeline not in PACKAGES:
        _fail(f"--pipeline must be one of {sorted(PACKAGES)}")
    if (pipeline == "cohort") != (cohort_uri is not None):
        _fail("--cohort-uri is required with --pipeline cohort and not allowed with --pipeline demo")
    _params(params_file)
    arguments = pipeline_arguments(params_file, cohort_uri, data_version, ingest_shards)
    try:
        result = submit(host, package or Path(PACKAGES[pipeline]), arguments, experiment, run_name, namespace, cache)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    _print(result)


def main() -> None:  # pragma: no cover - console entry point
    from medsegllm.common.resources import Start

    start = Start()
    try:
        app(prog_name="medsegllm")
    finally:  # also after a failed gate: what a stage cost matters most when it fails
        _record_usage(sys.argv[1:], start)


def _record_usage(argv: list[str], start: Start) -> None:
    """Log (and with MEDSEGLLM_RESOURCE_LOG, append) the command's wall time, CPU time and peak memory."""
    words = [arg for arg in argv if not arg.startswith("-")]
    if not words or "--help" in argv:
        return
    from medsegllm.common.resources import record_usage

    record_usage(" ".join(words[:2]) if words[0] in ("check", "kfp") else words[0], argv, start)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
