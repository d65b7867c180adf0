"""Fuzzing ingest: hostile corpora (hypothesis-drawn) and pydicom's bundled test files.

Properties, checked on every corpus: `run_ingest` does not raise; every input file is accounted for
exactly once (accepted slices + quarantined + routed reports and labels == input files); the files
that can only be broken are quarantined; nothing is written outside the output folder (nor in the
working directory); the output holds only pseudonyms, never a raw identifier; and the traced peak
memory stays bounded (a corrupt length or dimension field must not allocate gigabytes).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import tracemalloc
import warnings
from pathlib import Path

import monai.data  # noqa: F401  imported before tracemalloc starts: its import is not ingest's memory
import monai.transforms  # noqa: F401
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file

from medsegllm.config import IngestParams
from medsegllm.ingest.quarantine import resolve_quarantine
from medsegllm.ingest.run import run_ingest
from tests.reliability.hostile import EXPECT_QUARANTINE, FAULTS, FLIPPED_VRS, VR_TAGS, build_corpus, write_flipped_vr

PARAMS = IngestParams(target_spacing=(4.0, 4.0, 4.0))
SALT = "fuzz-salt"
PSEUDONYM = re.compile(r"^[0-9a-f]{16}$")
OUTPUT_TOP = {"volumes", "labels", "manifest.parquet", "quarantine.parquet", "summary.json", "mr_standardization.json"}
PEAK_BYTES = 64 * 2**20  # traced peak for corpora of a few kilobytes; a corrupt field used to reserve GBs


def snapshot(root: Path, skip: Path) -> dict[str, tuple[int, int]]:
    """Every path under `root` except under `skip`, with size and mtime: what must not change."""
    return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if skip not in p.parents and p != skip}


def ingest_observed(input_dir: Path, out_dir: Path, cwd: Path) -> dict:
    """Run ingest from `cwd` with tracemalloc on; return summary, tables, peak and what changed outside."""
    root = input_dir.parent
    before = snapshot(root, out_dir)
    old_cwd = os.getcwd()
    os.chdir(cwd)
    tracemalloc.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns on every malformed element
            summary = run_ingest(input_dir, out_dir, PARAMS, SALT)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        os.chdir(old_cwd)
    after = snapshot(root, out_dir)
    return {
        "summary": summary,
        "manifest": pd.read_parquet(out_dir / "manifest.parquet"),
        "quarantine": resolved_quarantine(input_dir, out_dir),
        "peak": peak,
        "changed_outside": sorted(set(before.items()) ^ set(after.items())),
    }


def resolved_quarantine(input_dir: Path, out_dir: Path) -> pd.DataFrame:
    """Quarantine rows under their real input paths: ingest writes salted path pseudonyms, and
    `resolve_quarantine` (what `medsegllm quarantine-resolve` prints) must map every one back."""
    rows = resolve_quarantine(input_dir, out_dir / "quarantine.parquet", SALT)
    assert all(row["input_path"] for row in rows), "a quarantine row names no input file"
    assert not any(row["input_path"] == row["path"] for row in rows), "a quarantine row holds a real path"
    return pd.DataFrame([{"path": row["input_path"], "reason": row["reason"]} for row in rows], columns=["path", "reason"])


def check_properties(input_dir: Path, out_dir: Path, seen: dict) -> None:
    """The invariants every corpus must satisfy, whatever it holds."""
    inputs = {p.relative_to(input_dir).as_posix() for p in input_dir.rglob("*") if p.is_file()}
    manifest, quarantine, summary = seen["manifest"], seen["quarantine"], seen["summary"]
    quarantined = list(quarantine["path"])
    assert len(quarantined) == len(set(quarantined)), "a file is quarantined twice"
    assert set(quarantined) <= inputs, "quarantine names a file that is not an input"
    accepted = int(manifest["n_slices"].sum()) if len(manifest) else 0
    routed = summary["n_report_files"] + summary["n_label_files"]
    assert accepted + len(quarantined) + routed == len(inputs), (accepted, len(quarantined), routed, len(inputs))
    assert summary["n_files"] == len(inputs)
    assert seen["changed_outside"] == [], f"written outside the output folder: {seen['changed_outside']}"
    assert {p.name for p in out_dir.iterdir()} <= OUTPUT_TOP
    for path in out_dir.rglob("*"):
        assert not path.is_symlink() and out_dir.resolve() in path.resolve().parents
        assert not path.name.endswith(".tmp") and ".tmp." not in path.name, f"temporary file left: {path}"
    for column in ("series_id", "study_id", "patient_id", "accession_id"):
        assert manifest[column].map(lambda v: bool(PSEUDONYM.match(v))).all(), column
    for row in manifest.itertuples():
        assert (out_dir / row.volume_path).is_file()
        assert row.volume_path == f"volumes/{row.series_id}.nii.gz"
    assert seen["peak"] < PEAK_BYTES, f"traced peak {seen['peak'] / 2**20:.0f} MiB"


def run_corpus(faults: list[tuple[str, int]]) -> dict:
    with tempfile.TemporaryDirectory(prefix="medsegllm-fuzz-") as tmp:
        root = Path(tmp)
        written = build_corpus(root / "in", faults)
        (root / "cwd").mkdir()
        seen = ingest_observed(root / "in", root / "out", root / "cwd")
        assert not any((root / "cwd").iterdir()), "ingest wrote into the working directory"
        check_properties(root / "in", root / "out", seen)
        quarantined = set(seen["quarantine"]["path"])
        for path, fault in written.items():
            rel = path.relative_to(root / "in").as_posix()
            if fault in EXPECT_QUARANTINE:
                assert rel in quarantined, f"{fault} file accepted: {rel}"
            if fault == "valid_series":
                assert rel not in quarantined, f"a valid slice was quarantined: {rel}"
        return {"n_files": len(written), "peak": seen["peak"], "n_series": seen["summary"]["n_series"],
                "n_quarantined": len(quarantined)}


def test_every_fault_once(reliability):
    """Each fault of the hostile catalogue, three seeds each, in one corpus beside valid series."""
    faults = [(name, seed) for name in FAULTS for seed in range(3)]
    result = run_corpus(faults)
    reliability(
        "hostile catalogue: " + ", ".join(sorted(FAULTS)),
        f"{len(faults)} fault instances, {result['n_files']} files in one folder tree",
        f"no crash; {result['n_series']} series accepted, {result['n_quarantined']} files quarantined, all "
        f"accounted for; peak traced memory {result['peak'] / 2**20:.1f} MiB; nothing written outside out/",
    )


def test_every_vr_flip(tmp_path, reliability):
    """Each header element ingest reads, relabelled with each of 15 VRs (undecodable ones included)."""
    for i, tag in enumerate(VR_TAGS):
        for vr in FLIPPED_VRS:
            write_flipped_vr(tmp_path / "in" / f"tag{i}" / f"{vr.decode()}.dcm", tag, vr)
    (tmp_path / "cwd").mkdir()
    seen = ingest_observed(tmp_path / "in", tmp_path / "out", tmp_path / "cwd")
    check_properties(tmp_path / "in", tmp_path / "out", seen)
    summary = seen["summary"]
    reliability("a wrong VR on Rows, Columns, PixelSpacing, orientation, position, Modality, SeriesInstanceUID, "
                "BitsAllocated, rescale", f"{len(VR_TAGS)} elements x {len(FLIPPED_VRS)} VRs = {summary['n_files']} files",
                f"no crash; {summary['n_series']} still readable and accepted, {summary['n_quarantined_files']} "
                "quarantined, all accounted for")


CORPORA = st.lists(st.tuples(st.sampled_from(sorted(FAULTS)), st.integers(0, 2**16)), min_size=1, max_size=6)
FUZZ_RUNS: list[dict] = []


@settings(max_examples=25, deadline=None, database=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(faults=CORPORA)
def _fuzz_property(faults: list[tuple[str, int]]) -> None:
    FUZZ_RUNS.append(run_corpus(faults))


def test_hypothesis_corpora(reliability):
    """Random mixtures of faults (hypothesis, 25 corpora of 1-6 fault instances)."""
    FUZZ_RUNS.clear()
    _fuzz_property()
    n_files = sum(r["n_files"] for r in FUZZ_RUNS)
    peak = max(r["peak"] for r in FUZZ_RUNS)
    reliability(
        "random mixtures of the hostile catalogue (hypothesis)",
        f"{len(FUZZ_RUNS)} corpora, {n_files} files",
        f"no crash, every file accounted for exactly once, no write outside out/, max traced peak "
        f"{peak / 2**20:.1f} MiB",
    )


# pydicom's own broken or odd files, each must be quarantined with a reason
PYDICOM_BROKEN = ["rtplan_truncated.dcm", "MR_truncated.dcm", "badVR.dcm", "no_meta_group_length.dcm",
                  "meta_missing_tsyntax.dcm", "README.txt", "crayons.icc", "zipMR.gz"]


def test_pydicom_bundled_files(tmp_path, reliability):
    """Every file pydicom ships for its own tests (valid, compressed, truncated, non-DICOM)."""
    source = Path(get_testdata_file("CT_small.dcm")).parent
    shutil.copytree(source, tmp_path / "in")
    (tmp_path / "cwd").mkdir()
    seen = ingest_observed(tmp_path / "in", tmp_path / "out", tmp_path / "cwd")
    check_properties(tmp_path / "in", tmp_path / "out", seen)
    quarantine = dict(zip(seen["quarantine"]["path"], seen["quarantine"]["reason"]))
    missing = [name for name in PYDICOM_BROKEN if name not in quarantine]
    summary = seen["summary"]
    reliability(
        "pydicom's bundled test files (truncated, bad VR, missing meta, compressed, non-DICOM)",
        f"{summary['n_files']} files from pydicom.data",
        f"no crash; {summary['n_series']} series accepted, {summary['n_quarantined_files']} quarantined, "
        f"{summary['n_report_files']} SR routed; known-broken quarantined: "
        f"{len(PYDICOM_BROKEN) - len(missing)}/{len(PYDICOM_BROKEN)}; peak {seen['peak'] / 2**20:.1f} MiB",
    )
    assert not missing, f"broken files accepted: {missing}"
    assert summary["n_series"] >= 1  # CT_small and friends are valid and must still get through
