"""Quarantine paths are salted pseudonyms that `quarantine-resolve` maps back; stale partial files go."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from medsegllm.cli import app
from medsegllm.common.io import atomic_path, is_partial, remove_partials
from medsegllm.config import IngestParams
from medsegllm.ingest.quarantine import one_row_per_file, pseudonymize_path, resolve_quarantine
from medsegllm.ingest.run import run_ingest

SALT = "path-salt"
PHI_FILE = "DOE^JOHN_MRN123456/2019-03-04 scans/IM_0001_DOE.dcm"


def test_a_file_rejected_twice_gets_one_row_with_each_reason_once():
    a, b = Path("in/a.dcm"), Path("in/b.dcm")
    rows = [(a, "volume echo=1: unreadable"), (b, "bad"), (a, "volume echo=2: gap"), (a, "volume echo=1: unreadable")]
    assert one_row_per_file(rows) == [(a, "volume echo=1: unreadable; volume echo=2: gap"), (b, "bad")]


def test_pseudonymized_path_keeps_shape_and_suffix_only():
    out = pseudonymize_path(PHI_FILE, SALT)
    parts = out.split("/")
    assert len(parts) == 3 and all(p.startswith("p-") for p in parts) and out.endswith(".dcm")
    assert not any(word in out for word in ("DOE", "JOHN", "123456", "2019", "IM_0001"))
    assert pseudonymize_path(PHI_FILE, SALT) == out != pseudonymize_path(PHI_FILE, "other-salt")
    assert pseudonymize_path("a/DOE.JOHN", SALT).count(".") == 0  # an unknown suffix may be a name: dropped
    assert pseudonymize_path("a/x ", SALT) != pseudonymize_path("a/x", SALT)  # names hash exactly as they are


@pytest.fixture
def phi_tree(tmp_path) -> Path:
    root = tmp_path / "in"
    (root / PHI_FILE).parent.mkdir(parents=True)
    (root / PHI_FILE).write_bytes(b"not dicom, just a patient's name in the path")
    (root / "notes.txt").write_text("plain")
    return root


def test_ingest_writes_pseudonyms_and_resolve_maps_them_back(phi_tree, tmp_path):
    run_ingest(phi_tree, tmp_path / "out", IngestParams(), SALT)
    written = pd.read_parquet(tmp_path / "out" / "quarantine.parquet")
    assert sorted(written.path) == sorted(pseudonymize_path(p, SALT) for p in (PHI_FILE, "notes.txt"))
    resolved = {r["path"]: r["input_path"] for r in resolve_quarantine(phi_tree, tmp_path / "out" / "quarantine.parquet", SALT)}
    assert resolved[pseudonymize_path(PHI_FILE, SALT)] == PHI_FILE
    assert all(r["input_path"] is None for r in resolve_quarantine(phi_tree, tmp_path / "out" / "quarantine.parquet", "wrong"))

    run_ingest(phi_tree, tmp_path / "plain", IngestParams(pseudonymize_paths=False), SALT)
    assert sorted(pd.read_parquet(tmp_path / "plain" / "quarantine.parquet").path) == sorted([PHI_FILE, "notes.txt"])


def test_quarantine_resolve_cli_prints_real_paths_only_to_stdout(phi_tree, tmp_path, monkeypatch):
    run_ingest(phi_tree, tmp_path / "out", IngestParams(), SALT)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"ingest": {"salt_file": str(tmp_path / "salt")}}))
    monkeypatch.setenv("MEDSEGLLM_SALT", SALT)
    before = sorted(p for p in tmp_path.rglob("*"))
    result = CliRunner().invoke(app, ["quarantine-resolve", "--input", str(phi_tree), "--quarantine",
                                      str(tmp_path / "out" / "quarantine.parquet"), "--params", str(params)])
    assert result.exit_code == 0, result.output
    assert f"{pseudonymize_path(PHI_FILE, SALT)}\t{PHI_FILE}\tunreadable" in result.stdout
    assert sorted(p for p in tmp_path.rglob("*")) == before, "resolving writes nothing"
    monkeypatch.setenv("MEDSEGLLM_SALT", "another-salt")
    result = CliRunner().invoke(app, ["quarantine-resolve", "--input", str(phi_tree), "--quarantine",
                                      str(tmp_path / "out" / "quarantine.parquet"), "--params", str(params)])
    assert result.exit_code == 1 and "not under --input" in result.output


def test_remove_partials_deletes_only_dead_writers_temporary_files(tmp_path):
    stale = []
    for name in ("volumes/a.nii.gz", "model.pt", "summary.json", "noext"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=(tmp_path / name).parent, prefix=f".{Path(name).name}.",
                                   suffix=".tmp" + "".join(Path(name).suffixes))
        os.close(fd)  # as a SIGKILLed writer leaves it: no process holds its lock
        stale.append(Path(tmp))
    keep = [tmp_path / n for n in (".hidden.tmp", "notes.tmp", ".x.abcdefgh.tmp.gz", "summary.json", ".model.pt.ab.tmp.pt")]
    for path in keep:
        path.write_text("keep")
    assert all(is_partial(p) for p in stale) and not any(is_partial(p) for p in keep)
    with atomic_path(tmp_path / "live.json") as live:
        live.write_text("{}")
        assert sorted(remove_partials(tmp_path)) == sorted(stale)
        assert live.exists(), "a live writer's temporary file is left alone"
    assert all(p.exists() for p in keep) and (tmp_path / "live.json").read_text() == "{}"
    assert remove_partials(tmp_path / "missing") == []
