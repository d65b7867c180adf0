"""Concurrent runs: two ingests of one input into different folders, at the same time, one as a
`medsegllm ingest` process and one in-process, must each give exactly what a lone run gives."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd

from medsegllm.common.deid import resolve_salt
from medsegllm.common.io import load_nifti
from medsegllm.config import Params
from medsegllm.ingest.run import run_ingest
from tests.reliability.hostile import build_corpus

FAULTS = [("valid_series", s) for s in range(6)] + [("mixed_series", 0), ("truncated", 0), ("duplicate_sop", 1),
                                                     ("random_bytes", 0)]


def outputs(folder: Path) -> dict:
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    manifest = pd.read_parquet(folder / "manifest.parquet")
    volumes = {row.volume_path: load_nifti(folder / row.volume_path)[0] for row in manifest.itertuples()}
    return {"files": files, "manifest": manifest, "quarantine": pd.read_parquet(folder / "quarantine.parquet"),
            "volumes": volumes}


def test_two_ingests_at_once_do_not_clobber(tmp_path, reliability):
    params = Params()
    salt = resolve_salt(params.ingest)
    build_corpus(tmp_path / "in", FAULTS)
    run_ingest(tmp_path / "in", tmp_path / "ref", params.ingest, salt)
    proc = subprocess.Popen([sys.executable, "-m", "medsegllm.cli", "ingest", "--input", "in", "--out", "a",
                             "--params", str(tmp_path / "none.yaml")], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    threads = [threading.Thread(target=run_ingest, args=(tmp_path / "in", tmp_path / name, params.ingest, salt))
               for name in ("b", "c")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-2000:]
    ref = outputs(tmp_path / "ref")
    runs = {name: outputs(tmp_path / name) for name in ("a", "b", "c")}
    same = {name: run["files"] == ref["files"] and run["manifest"].equals(ref["manifest"])
            and run["quarantine"].equals(ref["quarantine"]) for name, run in runs.items()}
    reliability("three concurrent ingests of one input into three folders (one CLI process, two threads)",
                f"{len(ref['manifest'])} series, {len(ref['quarantine'])} quarantined files",
                f"each output identical to a lone run: {all(same.values())}")
    for name, run in runs.items():
        assert run["files"] == ref["files"], name
        pd.testing.assert_frame_equal(run["manifest"], ref["manifest"])
        pd.testing.assert_frame_equal(run["quarantine"], ref["quarantine"])
        for path, array in ref["volumes"].items():
            np.testing.assert_array_equal(run["volumes"][path], array)


def test_first_runs_racing_for_the_salt_agree(tmp_path, monkeypatch, reliability):
    """Without $MEDSEGLLM_SALT, the first run creates the salt file; two first runs at once must not
    each keep their own salt (their pseudonyms would never join), and the file is owner-only."""
    from medsegllm.common import deid
    from medsegllm.config import IngestParams

    path = tmp_path / "state" / "salt"
    params = IngestParams(salt_env="MEDSEGLLM_TEST_UNSET_SALT", salt_file=str(path))
    monkeypatch.delenv(params.salt_env, raising=False)
    winner = "f" * 32
    token_hex = deid.secrets.token_hex

    def other_process_wins(n: int) -> str:  # the rival writes its salt between our check and our write
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(winner)
        return token_hex(n)

    monkeypatch.setattr(deid.secrets, "token_hex", other_process_wins)
    raced = deid.resolve_salt(params)
    monkeypatch.undo()
    monkeypatch.delenv(params.salt_env, raising=False)
    fresh = tmp_path / "fresh" / "salt"
    code = ("import sys; from medsegllm.common.deid import resolve_salt; from medsegllm.config import IngestParams; "
            f"print(resolve_salt(IngestParams(salt_env='MEDSEGLLM_TEST_UNSET_SALT', salt_file={str(fresh)!r})))")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(6)]
    salts = {proc.communicate(timeout=120)[0].strip() for proc in procs}
    mode = fresh.stat().st_mode & 0o777
    leftovers = [p.name for p in fresh.parent.iterdir() if p != fresh]
    reliability("first runs racing to create the pseudonym salt file", "a rival writing between check and write; "
                "6 processes started at once", f"raced run keeps the winner's salt: {raced == winner}; "
                f"{len(salts)} distinct salt(s) among 6 processes; file mode {oct(mode)}; temporary files left: {len(leftovers)}")
    assert raced == winner and path.read_text() == winner
    assert len(salts) == 1 and salts == {fresh.read_text().strip()}
    assert mode == 0o600 and not leftovers
