"""The whole-pipeline benchmark: per-command resource records and a real `dvc repro` in a project copy."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from medsegllm.bench.pipeline import bench_pipeline, project_files
from medsegllm.common.resources import RESOURCE_LOG_ENV, Start, record_usage
from tests.conftest import ROOT

BIN = Path(sys.executable).parent


def test_record_usage_appends_one_json_line_per_command(tmp_path: Path, monkeypatch) -> None:
    log = tmp_path / "logs" / "usage.jsonl"
    monkeypatch.setenv(RESOURCE_LOG_ENV, str(log))
    start = Start()
    sum(i * i for i in range(200_000))  # some CPU time of this process
    time.sleep(0.5)
    first = record_usage("train", ["train", "--out", "x"], start)
    record_usage("check train", ["check", "train", "x"], Start())
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["command"] for r in rows] == ["train", "check train"] and rows[0] == first
    assert first["wall_s"] >= 0.5 and first["cpu_s"] > 0 and first["peak_rss_mib"] > 10  # a Python with torch loaded
    assert rows[0]["argv"] == ["train", "--out", "x"]


def test_console_command_records_its_usage_even_when_it_fails(tmp_path: Path) -> None:
    log = tmp_path / "usage.jsonl"
    env = {**os.environ, RESOURCE_LOG_ENV: str(log)}
    done = subprocess.run([sys.executable, "-m", "medsegllm.cli", "check", "ingest", str(tmp_path / "missing")],
                          env=env, capture_output=True, text=True)
    assert done.returncode != 0
    (row,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert row["command"] == "check ingest" and row["wall_s"] > 0
    assert "check ingest:" in done.stderr and "peak memory" in done.stderr


def test_last_command_of_a_chain_reports_its_own_usage_only() -> None:
    """`a && b` as DVC runs it: the shell execs b in its own process, so b inherits the CPU of a and,
    in ru_maxrss, the peak memory of whoever started the shell (here this test, holding 600 MiB)."""
    held = np.ones(600 * 2**20 // 8)  # touched pages: resident, not just reserved
    burn = "import time; t = time.process_time(); exec('while time.process_time() - t < 1.0: pass')"
    report = ("import json; from medsegllm.common.resources import Start, usage; "
              "print(json.dumps(usage(Start())))")
    done = subprocess.run(["bash", "-c", f"{sys.executable} -c \"{burn}\" && {sys.executable} -c \"{report}\""],
                          capture_output=True, text=True, check=True)
    row = json.loads(done.stdout)
    assert row["peak_rss_mib"] < 300, row  # a bare Python: tens of MiB, not this test's 600+
    assert row["cpu_s"] < 0.6, row  # not the second of CPU the first command burned
    assert held.sum() > 0


def _mini_project(root: Path) -> Path:
    """A git project with DVC and one real stage (a two-study demo cohort)."""
    root.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=root, check=True)
    shutil.copy(ROOT / "params.yaml", root / "params.yaml")
    (root / "dvc.yaml").write_text("stages:\n  synth:\n    cmd: medsegllm synth --out data/cohort --n-studies 2\n"
                                   "    params: [seed, synth]\n    outs: [data/cohort]\n")
    (root / ".gitignore").write_text("/data\n")
    (root / "scratch.txt").write_text("untracked, not ignored: copied\n")
    subprocess.run(["git", "add", "dvc.yaml", "params.yaml", ".gitignore"], cwd=root, check=True)
    return root


def test_bench_pipeline_runs_dvc_repro_then_a_noop_rerun(tmp_path: Path) -> None:
    project = _mini_project(tmp_path / "project")
    (project / "data").mkdir()
    (project / "data" / "ignored.bin").write_bytes(b"x")  # the user's data is neither copied nor touched
    assert {"dvc.yaml", "params.yaml", "scratch.txt", ".dvc/config"} <= set(project_files(project))
    assert "data/ignored.bin" not in project_files(project)
    result = bench_pipeline(project, tmp_path / "work", {"MEDSEGLLM_SALT": "test-salt"})
    assert [c["command"] for c in result["commands"]] == ["synth"]
    assert result["commands"][0]["peak_rss_mib"] > 0 and result["commands"][0]["wall_s"] > 0
    assert result["noop_commands_run"] == 0  # nothing changed: DVC skipped the stage
    assert result["repro_seconds"] > result["commands"][0]["wall_s"] and result["noop_seconds"] > 0
    assert (Path(result["data_dir"]) / "cohort" / "reports.jsonl").exists()
    assert Path(result["data_dir"]).parent != project and not (project / "data" / "cohort").exists()
    assert [g["met"] for g in result["goals"]][0] is True


def test_pipeline_section_renders_every_command_and_the_goals() -> None:
    from medsegllm.bench.report import _pipeline

    assert "Not run (`--no-pipeline`)" in "\n".join(_pipeline({}))
    commands = [{"command": "ingest", "wall_s": 25.4, "cpu_s": 26.7, "peak_rss_mib": 743.1},
                {"command": "check ingest", "wall_s": 6.3, "cpu_s": 8.6, "peak_rss_mib": 300.0}]
    goals = [{"goal": "dvc repro in <= 10 minutes", "value": 420.0, "measure": "seconds", "met": True},
             {"goal": "no-op in <= 5 s", "value": 2.2, "measure": "seconds", "met": True}]
    text = "\n".join(_pipeline({"pipeline": {"commands": commands, "repro_seconds": 420.0, "noop_seconds": 2.2,
                                             "noop_commands_run": 0, "goals": goals}}))
    assert "| `medsegllm ingest` | 25.4 | 26.7 | 743 |" in text and "| `medsegllm check ingest` | 6.3 | 8.6 | 300 |" in text
    assert "**420.0**" in text and "(0 commands run) | **2.2**" in text
    assert "| no-op in <= 5 s | seconds = 2.20 | **met** |" in text
