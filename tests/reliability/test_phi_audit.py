"""PHI audit: canary identifiers seeded everywhere PHI hides in an input must appear in no output.

A tiny generated cohort gets one fictitious patient's name, MRN, phone, address and birth date in
standard tags (free-text ones included), in a private block, in folder and file names (one broken
file too, so it is quarantined) and in the report texts. Every stage then runs through its CLI, and
every file it leaves (tables, volumes, SEG, logs, the MLflow store and artifacts, the HTML report)
is searched for every spelling of every canary. One exception, checked rather than searched: the
DICOM SEG of `segment` carries the patient's name and ID, the keys the hospital PACS it is written
for files it by (docs/CONTRACTS.md); its birth date is blank and nothing else from the source stays.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import pydicom
import pytest
import yaml

from tests.e2e.conftest import tiny_params

pytestmark = pytest.mark.e2e
CLI = [sys.executable, "-m", "medsegllm.cli"]

FAMILY, GIVEN = "QUILLFEATHER", "ORVILLE"
MRN, PHONE, BIRTH = "MRN7391046", "555-013-4477", "19570314"
STREET, CITY = "742 Zephyrine Lane", "Wexmoorfield"
PHI_DIR = f"{FAMILY}^{GIVEN}_{MRN}"  # a folder named after the patient, as some PACS exports do


def needles() -> dict[str, str]:
    """Every spelling a canary can take (lower case: the search ignores case) -> what it is."""
    return {
        FAMILY.lower(): "family name",
        GIVEN.lower(): "given name",
        MRN.lower(): "MRN",
        MRN[3:]: "MRN digits",
        PHONE: "phone",
        PHONE.replace("-", ""): "phone digits",
        "013-4477": "phone (local part)",
        STREET.split()[1].lower(): "street",
        CITY.lower(): "city",
        BIRTH: "birth date",
        f"{BIRTH[:4]}-{BIRTH[4:6]}-{BIRTH[6:]}": "birth date (ISO)",
        f"{BIRTH[4:6]}/{BIRTH[6:]}/{BIRTH[:4]}": "birth date (US)",
    }


def inject_headers(ds: pydicom.Dataset) -> None:
    """Standard identifying tags, free-text tags and a private block, all holding canaries."""
    ds.PatientName = f"{FAMILY}^{GIVEN}"
    ds.PatientID = MRN
    ds.PatientBirthDate = f"{BIRTH[:4]}-{BIRTH[4:6]}-{BIRTH[6:]}"  # malformed DA, common in archives: pydicom warns with it
    ds.PatientAddress = f"{STREET}, {CITY}"
    ds.PatientTelephoneNumbers = PHONE
    ds.OtherPatientIDs = MRN[3:]
    ds.StudyDescription = f"CT abdomen {GIVEN} {FAMILY} {MRN}"
    ds.SeriesDescription = f"axial {FAMILY}^{GIVEN} dob {BIRTH[:4]}-{BIRTH[4:6]}-{BIRTH[6:]}"
    ds.ImageComments = f"call {PHONE} re {GIVEN} {FAMILY}, {STREET}"
    ds.OperatorsName = f"{FAMILY}^{GIVEN}"
    ds.InstitutionAddress = f"{STREET}, {CITY}"
    block = ds.private_block(0x0011, "ACME PHI STORE", create=True)
    block.add_new(0x01, "LO", f"{FAMILY}^{GIVEN}")
    block.add_new(0x02, "LO", MRN)
    block.add_new(0x03, "DA", BIRTH)
    block.add_new(0x04, "LT", f"{STREET}, {CITY}; {PHONE}")
    block.add_new(0x05, "SH", PHONE.replace("-", ""))


def seed_phi(cohort: Path) -> Path:
    """Rewrite the cohort's DICOM tree with canaries in headers and paths; returns the new tree."""
    src, dst = cohort / "dicom", cohort / "dicom_phi"
    files = sorted(p for p in src.rglob("*") if p.is_file())
    for i, path in enumerate(files):
        ds = pydicom.dcmread(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the malformed date, on purpose
            inject_headers(ds)
        rel = path.relative_to(src)
        target = dst / PHI_DIR / rel.parent / f"IM_{i:04d}_{FAMILY}{path.suffix or '.dcm'}"
        target.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(target)
    broken = dst / PHI_DIR / f"{GIVEN}_{FAMILY}_{BIRTH}" / f"{MRN}_{PHONE}.dcm"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"\0" * 128 + b"DICM" + f"garbage {FAMILY}^{GIVEN} {MRN}".encode())
    shutil.rmtree(src)
    return dst


def seed_reports(path: Path) -> None:
    """Canaries in the forms reports use: header block, DICOM-style name, sign-off, free prose."""
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    block = (f"Patient: {GIVEN.title()} {FAMILY.title()}\nName: {FAMILY}^{GIVEN}\nMRN: {MRN}\n"
             f"DOB: {BIRTH[:4]}-{BIRTH[4:6]}-{BIRTH[6:]}\nPhone: {PHONE}\nAddress: {STREET}, {CITY}\n")
    for row in lines:
        row["report_text"] = (block + row["report_text"] + f"\nCall ({PHONE[:3]}) {PHONE[4:]} with results, "
                              f"date of birth {BIRTH[4:6]}/{BIRTH[6:]}/{BIRTH[:4]}.\nSigned by Dr. {GIVEN.title()} {FAMILY.title()}")
    path.write_text("".join(json.dumps(row) + "\n" for row in lines))


def readable(path: Path) -> bytes:
    """What a search must see: parquet decoded, gzip inflated, a sqlite store dumped as SQL; a SEG
    without the patient name and ID that it carries on purpose (the test checks them separately)."""
    data = path.read_bytes()
    if path.name.endswith(".seg.dcm"):
        ds = pydicom.dcmread(path)
        ds.PatientName, ds.PatientID = "", ""
        buffer = io.BytesIO()
        ds.save_as(buffer)
        return buffer.getvalue()
    if path.suffix == ".parquet":
        return pd.read_parquet(path).to_csv().encode() + data
    if path.suffix == ".gz" or data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:16] == b"SQLite format 3\0":
        with sqlite3.connect(path) as db:
            return data + "\n".join(db.iterdump()).encode()
    return data


def scan(roots: list[Path]) -> tuple[int, list[tuple[str, str]]]:
    """(files searched, [(file, what leaked)])."""
    found, n_files = [], 0
    spellings = needles()
    for root in roots:
        for path in [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()):
            n_files += 1
            content = readable(path).lower()
            found += [(str(path), what) for needle, what in spellings.items() if needle.encode() in content]
            found += [(str(path), f"path {what}") for needle, what in spellings.items() if needle in str(path).lower()]
    return n_files, found


def run_cli(args: list[str], cwd: Path, log: Path, env: dict) -> None:
    """One stage through its console command; stdout and stderr kept as the stage's log."""
    result = subprocess.run(CLI + args, cwd=cwd, capture_output=True, text=True, env=env)
    log.parent.mkdir(exist_ok=True)
    log.write_text(f"$ medsegllm {' '.join(args)}\n{result.stdout}\n{result.stderr}")
    assert result.returncode == 0, f"medsegllm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr[-3000:]}"


def test_phi_audit_whole_pipeline(tmp_path, reliability):
    from medsegllm.config import parse_params
    from medsegllm.synth.cohort import generate_cohort

    work = tmp_path
    raw = tiny_params(work)
    raw["synth"]["n_studies"] = 5  # these two held-out CT scanners give feature JS; Skyra trains on a pseudo-label
    raw["split"] = {"holdout_devices": ["toshiba_aquilion_one", "siemens_somatom_force"], "val_fraction": 0.0}
    raw["train"].update(epochs=1, steps_per_epoch=2, batch_size=4, channels=[4, 8, 16], num_threads=1)
    raw["register"]["tracking_uri"] = f"sqlite:///{work / 'mlflow.db'}"
    (work / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    params = parse_params((work / "params.yaml").read_text())
    generate_cohort(work / "cohort", params.synth, params.seed)
    dicom = seed_phi(work / "cohort")
    seed_reports(work / "cohort" / "reports.jsonl")
    one_series = work / "segment_input" / PHI_DIR
    shutil.copytree(next(p.parent for p in sorted(dicom.rglob("*.dcm")) if pydicom.dcmread(p, stop_before_pixels=True).Modality == "CT"),
                    one_series)
    (one_series / f"{FAMILY}_notes.dcm").write_bytes(f"{GIVEN} {FAMILY} {MRN}".encode())

    n_input, input_hits = scan([work / "cohort", work / "segment_input"])
    assert {what for _, what in input_hits} >= set(needles().values()), "positive control: every canary is in the inputs"

    env = {**os.environ, "MEDSEGLLM_SALT": "phi-audit-salt"}
    p = ["--params", "params.yaml"]
    logs = work / "logs"
    start = time.perf_counter()
    stages = [
        ("ingest", ["ingest", "--input", "cohort/dicom_phi", "--out", "out/ingested", *p]),
        ("reports", ["reports", "--input", "cohort/reports.jsonl", "--out", "out/findings", *p]),
        ("pseudolabel", ["pseudolabel", "--ingested", "out/ingested", "--findings", "out/findings", "--out", "out/pseudolabels",
                         "--truth", "cohort/truth", *p]),
        ("train", ["train", "--ingested", "out/ingested", "--findings", "out/findings", "--pseudolabels", "out/pseudolabels",
                   "--out", "out/model", *p]),
        ("validate", ["validate", "--model", "out/model/model.pt", "--ingested", "out/ingested", "--out", "out/validation",
                      "--truth", "cohort/truth", "--pseudolabels", "out/pseudolabels", "--train-dir", "out/model", *p]),
        ("register", ["register", "--model", "out/model/model.pt", "--validation", "out/validation", "--out", "out/registry", *p]),
        ("segment", ["segment", "--model", "out/model/model.pt", "--input", "segment_input", "--out", "out/segmented", *p]),
    ]
    for name, args in stages:
        run_cli(["-v", *args], work, logs / f"{name}.log", env)
    seconds = time.perf_counter() - start

    quarantine = pd.read_parquet(work / "out/ingested/quarantine.parquet")
    broken = f"{PHI_DIR}/{GIVEN}_{FAMILY}_{BIRTH}/{MRN}_{PHONE}.dcm"
    resolved = subprocess.run(CLI + ["quarantine-resolve", "--input", "cohort/dicom_phi", "--quarantine",
                                     "out/ingested/quarantine.parquet", *p], cwd=work, capture_output=True, text=True, env=env)
    assert resolved.returncode == 0, resolved.stderr
    assert f"\t{broken}\t" in resolved.stdout, "quarantine-resolve prints the real path of the broken file (stdout only)"
    segs = sorted((work / "out/segmented").glob("*.seg.dcm"))
    assert segs, "segment wrote a DICOM SEG"
    for seg in segs:  # kept on purpose: the hospital's PACS files the SEG with its images by them
        ds = pydicom.dcmread(seg, stop_before_pixels=True)
        assert (str(ds.PatientName), ds.PatientID, str(ds.PatientBirthDate)) == (f"{FAMILY}^{GIVEN}", MRN, "")
    roots = [work / "out", logs, work / "mlflow.db", work / "mlartifacts"]
    n_output, hits = scan(roots)
    reliability("PHI canaries (name, MRN, phone, address, birth date) in standard, free-text and private DICOM tags, "
                "folder and file names, a broken file's path, and report texts",
                f"{n_input} input files; every stage through its CLI (ingest, reports, pseudolabel, train, "
                f"validate, register to a sqlite MLflow store, segment), {len(needles())} spellings searched",
                f"{n_output} output files, logs, MLflow db and artifacts searched in {seconds:.0f} s of pipeline: "
                f"{len(hits)} hit(s); {len(quarantine)} quarantined path(s) pseudonymized (`quarantine-resolve` maps them back, "
                f"stdout only); the segment SEG keeps only PatientName/PatientID, the keys its PACS files it by")
    assert hits == [], "\n".join(f"{what} in {path}" for path, what in hits)
