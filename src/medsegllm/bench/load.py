"""Load: peak memory of `medsegllm ingest` on a cohort `factor` times the demo size vs the demo size.

Ingest holds one series in memory at a time, so its peak RSS should stay flat as the cohort grows;
only the per-file header records and the manifest rows grow (bytes per file). Each size is a fresh
synthetic cohort (`generate_cohort`), ingested by the real CLI in a child process whose peak RSS
(`ru_maxrss`) is read by a wrapper process that runs nothing else.

    python -m medsegllm.bench.load                    # 48 studies (the demo) vs 480
    python -m medsegllm.bench.load --studies 8 --factor 10 --json benchmarks/load.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from medsegllm.config import SynthParams, load_params
from medsegllm.synth.cohort import generate_cohort

# Runs argv[1:] and prints the peak RSS (KiB on Linux) of that child alone.
_WRAPPER = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)")


def ingest_peak(cohort: Path, out: Path, params_file: Path, workers: int) -> dict:
    """Ingest `cohort` with the CLI in a child process; its peak RSS, wall time and summary."""
    cmd = [sys.executable, "-m", "medsegllm.cli", "ingest", "--input", str(cohort / "dicom"), "--out", str(out),
           "--params", str(params_file), "--workers", str(workers)]
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _WRAPPER, *cmd], capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - start
    peak_kib = int(done.stdout.strip().splitlines()[-1])
    summary = json.loads((out / "summary.json").read_text())
    n_files = sum(1 for p in (cohort / "dicom").rglob("*") if p.is_file())
    return {"files": n_files, "bytes": sum(p.stat().st_size for p in (cohort / "dicom").rglob("*") if p.is_file()),
            "series": summary["n_series"], "quarantined": summary["n_quarantined_files"],
            "peak_rss_mib": round(peak_kib / 1024, 1), "seconds": round(seconds, 1)}


def run_load(studies: int, factor: int, workdir: Path, params_file: Path, workers: int = 1) -> dict:
    params = load_params(params_file)
    rows = []
    for n in (studies, studies * factor):
        cohort = workdir / f"cohort_{n}"
        generate_cohort(cohort, SynthParams(**{**params.synth.model_dump(), "n_studies": n}), params.seed)
        row = ingest_peak(cohort, workdir / f"ingested_{n}", params_file, workers)
        rows.append({"studies": n, **row})
    small, large = rows
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "workers": workers,
        "runs": rows,
        "size_ratio": round(large["files"] / small["files"], 2),
        "peak_rss_ratio": round(large["peak_rss_mib"] / small["peak_rss_mib"], 3),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=48, help="base cohort size (the demo: 48)")
    parser.add_argument("--factor", type=int, default=10)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None, help="kept when given; a temporary folder otherwise")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="medsegllm-load-") as tmp:
        result = run_load(args.studies, args.factor, args.workdir or Path(tmp), args.params.resolve(), args.workers)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
