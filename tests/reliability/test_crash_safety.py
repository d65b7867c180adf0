"""Crash safety: `kill -9` of `medsegllm <stage>` at a random moment, then a rerun.

Each stage's CLI runs as a subprocess on a tiny synthetic cohort and is killed (SIGKILL, whole
process group) after a random delay; the rerun (the same library function the CLI wraps) must give
what an uninterrupted run gives, and no partial artifact (an atomic write's hidden temporary file)
may be picked up: outputs reference only complete files, and the rerun's tables equal the
reference's, and the rerun removes the kill's partial files (`medsegllm.common.io.remove_partials`).
The kill delay is drawn afresh each run and printed in every failure message.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from medsegllm.common.deid import resolve_salt
from medsegllm.common.io import load_nifti, write_json
from medsegllm.config import Params, parse_params
from tests.e2e.conftest import tiny_params

pytestmark = pytest.mark.e2e
RNG = random.Random()
CLI = [sys.executable, "-m", "medsegllm.cli"]


def is_partial(path: Path) -> bool:
    """The hidden temporary name `medsegllm.common.io.atomic_path` writes before its rename."""
    return path.name.startswith(".") and ".tmp" in path.name


def complete_files(folder: Path) -> dict[str, Path]:
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file() and not is_partial(p)}


def kill_at_random(args: list[str], cwd: Path, anchor: Path | None, window: float, timeout: float = 120) -> dict:
    """Start the CLI, wait until `anchor` exists (the stage has begun writing; None: from the start),
    sleep a random part of `window` seconds, then SIGKILL its process group. Returns what happened."""
    proc = subprocess.Popen(CLI + args, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    t0 = time.monotonic()
    while anchor is not None and not anchor.exists() and proc.poll() is None and time.monotonic() - t0 < timeout:
        time.sleep(0.05)
    delay = RNG.uniform(0.0, window)
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    finished = proc.poll() is not None
    if not finished:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    return {"killed": not finished, "at_s": round(time.monotonic() - t0, 2), "delay_after_anchor_s": round(delay, 2),
            "returncode": proc.returncode}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if is_partial(p)) if folder.exists() else []


def plant_stale(folder: Path, name: str) -> None:
    """A dead writer's temporary file for `name`, named as atomic_path names it and unlocked: whether
    or not the random kill left one, the rerun must clean one up."""
    target = folder / name
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, _ = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp" + "".join(target.suffixes))
    os.close(fd)


def describe(kill: dict, partial: list[str], after: list[str]) -> str:
    when = f"SIGKILL at {kill['at_s']} s" if kill["killed"] else f"finished before the kill ({kill['at_s']} s)"
    return f"{when}; {len(partial)} temporary file(s) left by the kill (+1 planted), {len(after)} after the rerun"


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> dict:
    """A 4-study cohort and uninterrupted in-process reference runs of ingest, reports and train."""
    from medsegllm.ingest.run import run_ingest
    from medsegllm.reports.run import run_reports
    from medsegllm.synth.cohort import generate_cohort
    from medsegllm.train.run import run_train

    work = tmp_path_factory.mktemp("crash")
    raw = tiny_params(work)
    raw["synth"]["n_studies"] = 4
    raw["train"].update(epochs=4, steps_per_epoch=2, batch_size=4, channels=[4, 8, 16], num_threads=1)
    raw["register"]["tracking_uri"] = f"sqlite:///{work / 'ref_mlflow.db'}"
    params_file = work / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    params: Params = parse_params(params_file.read_text())
    salt = resolve_salt(params.ingest)
    generate_cohort(work / "cohort", params.synth, params.seed)
    timings = {}
    t = time.perf_counter()
    run_ingest(work / "cohort" / "dicom", work / "ref_ingested", params.ingest, salt)
    timings["ingest"] = time.perf_counter() - t
    t = time.perf_counter()
    run_reports(work / "cohort" / "reports.jsonl", work / "ref_findings", params.reports, salt)
    timings["reports"] = time.perf_counter() - t
    t = time.perf_counter()
    run_train(work / "ref_ingested", work / "ref_findings", None, work / "ref_model", params)
    timings["train"] = time.perf_counter() - t
    return {"work": work, "params_file": params_file, "params": params, "salt": salt, "timings": timings}


def test_kill_ingest(pipeline, reliability):
    from medsegllm.ingest.run import run_ingest

    work, params = pipeline["work"], pipeline["params"]
    out = work / "ingest_killed"
    kill = kill_at_random(["ingest", "--input", "cohort/dicom", "--out", str(out), "--params", str(pipeline["params_file"])],
                          work, anchor=out / "volumes", window=pipeline["timings"]["ingest"] * 1.5)
    partial = leftovers(out)
    plant_stale(out, "volumes/0000000000000000.nii.gz")
    run_ingest(work / "cohort" / "dicom", out, params.ingest, pipeline["salt"])
    after = leftovers(out)
    ref, got = pd.read_parquet(work / "ref_ingested" / "manifest.parquet"), pd.read_parquet(out / "manifest.parquet")
    ref_q, got_q = (pd.read_parquet(d / "quarantine.parquet") for d in (work / "ref_ingested", out))
    same_files = set(complete_files(out)) == set(complete_files(work / "ref_ingested"))
    reliability("kill -9 during `medsegllm ingest`, then rerun", f"{ref['n_slices'].sum()} slices in {len(ref)} series",
                f"{describe(kill, partial, after)}; rerun manifest, quarantine and volumes identical to an uninterrupted run: "
                f"{same_files and ref.equals(got) and ref_q.equals(got_q)}")
    context = f"kill: {kill}, partial: {partial}"
    assert after == [], f"the rerun left partial files ({context})"
    pd.testing.assert_frame_equal(got, ref, obj=f"manifest ({context})")
    pd.testing.assert_frame_equal(got_q, ref_q, obj=f"quarantine ({context})")
    assert same_files, context
    for row in got.itertuples():
        assert not is_partial(Path(row.volume_path))
        np.testing.assert_array_equal(load_nifti(out / row.volume_path)[0], load_nifti(work / "ref_ingested" / row.volume_path)[0])
    ref_summary = json.loads((work / "ref_ingested" / "summary.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    for key in ("seconds", "n_reused_series"):
        ref_summary.pop(key), summary.pop(key)
    assert summary == ref_summary, context


def test_kill_reports(pipeline, reliability):
    from medsegllm.reports.run import run_reports

    work, params = pipeline["work"], pipeline["params"]
    out = work / "reports_killed"
    kill = kill_at_random(["reports", "--input", "cohort/reports.jsonl", "--out", str(out), "--params", str(pipeline["params_file"])],
                          work, anchor=None, window=8.0 + pipeline["timings"]["reports"] * 1.5)
    partial = leftovers(out)
    plant_stale(out, "findings.parquet")
    run_reports(work / "cohort" / "reports.jsonl", out, params.reports, pipeline["salt"])
    after = leftovers(out)
    tables = [(pd.read_parquet(work / "ref_findings" / name), pd.read_parquet(out / name))
              for name in ("findings.parquet", "class_prompts.parquet")]
    identical = all(ref.equals(got) for ref, got in tables)
    reliability("kill -9 during `medsegllm reports`, then rerun", f"{len(tables[0][0])} reports",
                f"{describe(kill, partial, after)}; rerun findings and class prompts identical to an uninterrupted run: {identical}")
    assert after == [], f"the rerun left partial files (kill: {kill}, partial: {partial})"
    for ref, got in tables:
        pd.testing.assert_frame_equal(got, ref, obj=f"findings (kill: {kill}, partial: {partial})")


def test_kill_train_then_resume(pipeline, reliability):
    from medsegllm.model.checkpoint import load_model
    from medsegllm.model.inference import predict_volume
    from medsegllm.train.run import run_train

    work, params = pipeline["work"], pipeline["params"]
    out = work / "train_killed"
    kill = kill_at_random(["train", "--ingested", "ref_ingested", "--findings", "ref_findings", "--out", str(out),
                           "--params", str(pipeline["params_file"])],
                          work, anchor=out, window=pipeline["timings"]["train"] * 1.2)
    partial = leftovers(out)
    plant_stale(out, "model.pt")
    epochs_done = int(torch.load(out / "checkpoint.pt", weights_only=True)["epoch"]) if (out / "checkpoint.pt").exists() else 0
    run_train(work / "ref_ingested", work / "ref_findings", None, out, params, resume=True)
    after = leftovers(out)
    model, meta = load_model(out / "model.pt")
    _, ref_meta = load_model(work / "ref_model" / "model.pt")
    ref_state = torch.load(work / "ref_model" / "model.pt", weights_only=True)["state_dict"]
    state = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    max_diff = max(float((state[k].double() - ref_state[k].double()).abs().max()) for k in ref_state if ref_state[k].numel())
    log, ref_log = pd.read_csv(out / "train_log.csv"), pd.read_csv(work / "ref_model" / "train_log.csv")
    loss_cols = [c for c in ref_log.columns if c.startswith("loss")]
    reliability("kill -9 during `medsegllm train`, then `train --resume`",
                f"{params.train.epochs} epochs x {params.train.steps_per_epoch} steps; checkpoint had {epochs_done} epoch(s)",
                f"{describe(kill, partial, after)}; resumed model loads (weights-only); max |weight - uninterrupted| = {max_diff:.2e}; "
                f"epoch log 1..{params.train.epochs} complete")
    context = f"kill: {kill}, epochs in checkpoint: {epochs_done}, partial: {partial}"
    assert after == [], f"the rerun left partial files ({context})"
    assert sorted(state) == sorted(ref_state) and meta["device_ids"] == ref_meta["device_ids"], context
    assert log["epoch"].tolist() == list(range(1, params.train.epochs + 1)), context
    # Resuming restores model, optimizer, scheduler and RNG state: on CPU the result is bit-identical.
    assert max_diff == 0.0, f"resumed weights differ by {max_diff} ({context})"
    np.testing.assert_array_equal(log[loss_cols].to_numpy(), ref_log[loss_cols].to_numpy(), err_msg=context)
    probs = predict_volume(model, np.random.default_rng(0).random((32, 32, 2), dtype=np.float32), meta["device_ids"][0])
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-4)  # the resumed checkpoint segments


def test_kill_register(pipeline, reliability):
    from mlflow import MlflowClient

    from medsegllm.register.run import run_register

    work, params = pipeline["work"], pipeline["params"]
    validation = work / "validation"
    write_json(validation / "gate.json", {"passed": True, "validation_data_hash": "crash-test", "checks": []})
    write_json(validation / "metrics.json", {"dice_mean": 0.5})
    uri = f"sqlite:///{work / 'killed_mlflow.db'}"
    raw = yaml.safe_load(pipeline["params_file"].read_text())
    raw["register"]["tracking_uri"] = uri
    params_file = work / "register_params.yaml"
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    out = work / "register_killed"
    kill = kill_at_random(["register", "--model", "ref_model/model.pt", "--validation", str(validation), "--out", str(out),
                           "--params", str(params_file)], work, anchor=None, window=20.0)
    partial = leftovers(out)
    plant_stale(out, "registration.json")
    record = run_register(work / "ref_model" / "model.pt", validation, out, parse_params(params_file.read_text()))
    after = leftovers(out)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = client.search_model_versions(f"name='{params.registration.model_name}'")
    champion = client.get_model_version_by_alias(params.registration.model_name, "champion")
    champion_metric = client.get_run(champion.run_id).data.metrics["dice_mean"]
    saved = json.loads((out / "registration.json").read_text())
    reliability("kill -9 during `medsegllm register`, then rerun",
                "one model, one validation folder, a fresh MLflow registry",
                f"{describe(kill, partial, after)}; {len(versions)} version(s) registered; the rerun's version is "
                f"{record['alias']}; `champion` resolves to a READY version with the same dice_mean ({champion_metric})")
    context = f"kill: {kill}, versions: {[(v.version, v.status) for v in versions]}"
    assert after == [], f"the rerun left partial files ({context})"
    assert saved == record, context
    assert all(v.status == "READY" for v in versions), context
    assert champion_metric == 0.5, context
    # Uninterrupted: `champion`. After a kill that fell past the alias update, the rerun's identical
    # model does not beat the identical champion and is `challenger`: the champion is the same model.
    assert record["alias"] == "champion" or record["previous_champion_version"] == str(champion.version), context
