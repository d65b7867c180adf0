"""Data-parallel launch from one command: `medsegllm train --nproc-per-node N` re-runs itself under
`torchrun --standalone` with N processes (one per GPU), so a Kubeflow or Airflow task that was given
N GPUs needs no torchrun in its command line. Multi-node jobs use torchrun or a PyTorchJob directly
(docs/ORCHESTRATION.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch


def processes(requested: int) -> int:
    """`requested` processes; 0 means one per visible GPU (one process on a CPU-only machine)."""
    if requested < 0:
        raise ValueError(f"--nproc-per-node must be >= 0, not {requested}")
    return requested or max(torch.cuda.device_count(), 1)


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ


def torchrun_command(nproc: int, cli_args: list[str]) -> list[str]:
    """`python -m torch.distributed.run --standalone ... -m medsegllm.cli <cli_args>` with this interpreter."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "medsegllm.cli", *cli_args]


def train_args(ingest_dir: Path, findings_dir: Path, out_dir: Path, params_file: Path, pseudo_dir: Path | None = None,
               truth_dir: Path | None = None, resume: bool = False) -> list[str]:
    """The `medsegllm train` arguments of one run, for its relaunch under torchrun."""
    return ["train", "--ingested", str(ingest_dir), "--findings", str(findings_dir), "--out", str(out_dir),
            "--params", str(params_file), *(["--pseudolabels", str(pseudo_dir)] if pseudo_dir else []),
            *(["--truth", str(truth_dir)] if truth_dir else []), *(["--resume"] if resume else [])]


def relaunch(nproc: int, cli_args: list[str]) -> int:
    """Run the command under torchrun with `nproc` processes; torchrun's exit status (a failed rank fails it)."""
    return subprocess.run(torchrun_command(nproc, cli_args), check=False).returncode


def run_train_on_all_gpus(ingest_dir: Path, findings_dir: Path, pseudo_dir: Path | None, out_dir: Path, params_yaml: str,
                          truth_dir: Path | None = None) -> dict:
    """Train with one process per visible GPU (in-process when there is at most one); the train metrics.

    For orchestrator tasks that were given N GPUs: the same `medsegllm train` run under torchrun.
    """
    from medsegllm.config import parse_params
    from medsegllm.train.run import run_train

    params = parse_params(params_yaml)
    nproc = processes(0)
    if nproc == 1:
        return run_train(ingest_dir, findings_dir, pseudo_dir, out_dir, params, truth_dir=truth_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="medsegllm-launch-") as tmp:
        params_file = Path(tmp) / "params.yaml"
        params_file.write_text(params_yaml)
        code = relaunch(nproc, train_args(ingest_dir, findings_dir, out_dir, params_file, pseudo_dir, truth_dir))
    if code != 0:
        raise RuntimeError(f"data-parallel training on {nproc} GPUs failed (torchrun exit status {code})")
    return json.loads((out_dir / "train_metrics.json").read_text())
