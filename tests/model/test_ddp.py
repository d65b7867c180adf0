"""Data-parallel training: a real `torchrun --nproc_per_node=2` launch (gloo, CPU, one thread per rank)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from medsegllm.model.network import build_model
from medsegllm.train import distributed
from medsegllm.train.data import build_samples, load_prompts, sample_batch
from medsegllm.train.engine import compute_losses
from tests.model.synthetic import tiny_params

REPO = Path(__file__).resolve().parents[2]
# DAN with per-device affines (so a rank may leave a branch unused: DDP must still average it);
# no random routing or mixing, so the single-process reference sees exactly the ranks' forward passes
# (in fp32, as the reference computes them).
DDP_TRAIN = {"norm": "batch", "dan": {"enabled": True, "shared_prob": 0.0, "shared_affine": False},
             "pdm": {"enabled": False}, "channels": [4, 8], "precision": "fp32"}


def _write_params(path: Path, **train: object) -> None:
    params = tiny_params(**DDP_TRAIN, **train)
    path.write_text(yaml.safe_dump(params.model_dump(mode="json", by_alias=True)))


def _reference_step(stage_dirs: dict, params, batches: list[dict]) -> tuple[dict, dict]:
    """One AdamW step from the seeded initial weights on the mean of the per-batch gradients: (weights, gradients)."""
    samples = build_samples(stage_dirs["ingest"], stage_dirs["findings"], None, params, labelled_only=True)
    torch.manual_seed(params.seed)
    model = build_model(params.train, samples.device_ids, *load_prompts(stage_dirs["findings"]))
    model.train()
    grads: dict[str, torch.Tensor] = {}
    for batch in batches:
        model.zero_grad(set_to_none=True)
        compute_losses(model, batch, params)["loss"].backward()
        for name, p in model.named_parameters():
            if p.grad is not None:
                grads[name] = grads.get(name, torch.zeros_like(p)) + p.grad / len(batches)
    for name, p in model.named_parameters():
        p.grad = grads.get(name)
    torch.optim.AdamW(model.parameters(), lr=params.train.lr, weight_decay=1e-4).step()
    return {k: v.detach() for k, v in model.named_parameters()}, grads


def test_two_rank_ddp_equals_one_step_on_both_batches_and_resumes(stage_dirs) -> None:
    root = stage_dirs["root"]
    _write_params(root / "one_step.yaml", epochs=1, steps_per_epoch=1)
    _write_params(root / "two_epochs.yaml", epochs=2, steps_per_epoch=2)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(REPO / "tests/model/ddp_worker.py"), str(root)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-4000:]

    # the console command under torchrun: rank 0 alone wrote the outputs, and says how many ranks trained
    cli = root / "cli"
    assert json.loads((cli / "train_metrics.json").read_text())["world_size"] == 2
    state = torch.load(cli / "checkpoint.pt", weights_only=True)
    assert isinstance(state["rng"], list) and len(state["rng"]) == 2  # each rank's RNG, for --resume

    # one DDP step = one single-process step on the mean gradient of both ranks' batches
    params = tiny_params(**DDP_TRAIN, epochs=1, steps_per_epoch=1)
    samples = build_samples(stage_dirs["ingest"], stage_dirs["findings"], None, params, labelled_only=True)
    train = params.train
    batches = []
    for rank in range(2):
        rng = np.random.default_rng(distributed.rank_seed(params.seed, distributed.Ranks(rank, 2)))
        batches.append(sample_batch(samples, train.batch_size, tuple(train.roi_size), train.lesion_oversample, rng,
                                    train.intensity_aug))
    assert not torch.equal(batches[0]["image"], batches[1]["image"])  # each rank draws its own batch
    expected, grads = _reference_step(stage_dirs, params, batches)
    rank0_only, _ = _reference_step(stage_dirs, params, batches[:1])
    trained = state["model"]
    # Adam's first step moves each weight by about lr * sign(gradient): weights whose gradient is
    # float noise (conv biases in front of batch norm, |g| < 1e-7) may go either way, the rest must agree.
    significant = {n: g.abs() > 1e-6 for n, g in grads.items()}
    assert sum(int(m.sum()) for m in significant.values()) > 0.95 * sum(v.numel() for v in expected.values())
    for name, value in expected.items():
        mask = significant.get(name, torch.ones_like(value, dtype=torch.bool))
        assert torch.allclose(trained[name][mask], value[mask], atol=1e-6), name
    assert any(not torch.allclose(rank0_only[n], v, atol=1e-6) for n, v in expected.items())  # the check can fail

    # ranks hold identical weights; kill after epoch 1 + --resume continues exactly under DDP
    worker = torch.load(root / "worker.pt", weights_only=True)
    for name, value in worker["ranks"][0].items():
        assert torch.equal(value, worker["ranks"][1][name]), name
    for name, value in worker["straight"].items():
        assert torch.equal(value, worker["resumed"][name]), name
    log = pd.read_csv(root / "resumed" / "train_log.csv")
    assert log["epoch"].tolist() == [1, 2]
    assert np.allclose(log["loss"], pd.read_csv(root / "straight" / "train_log.csv")["loss"])


@pytest.mark.e2e
def test_train_command_relaunches_itself_under_torchrun(stage_dirs) -> None:
    """`medsegllm train --nproc-per-node 2` starts torchrun itself (what a task given N GPUs runs), here
    with train.compile on, as configs/gpu.yaml has it: each rank's DDP step runs the compiled network."""
    root = stage_dirs["root"]
    _write_params(root / "launch.yaml", epochs=1, steps_per_epoch=2, compile=True)
    out = root / "launched"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "medsegllm.cli", "train", "--ingested", str(root / "ingest"), "--findings",
         str(root / "findings"), "--out", str(out), "--params", str(root / "launch.yaml"), "--nproc-per-node", "2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    assert json.loads((out / "train_metrics.json").read_text())["world_size"] == 2
    assert json.loads(run.stdout)["world_size"] == 2  # one rank printed the metrics, as one JSON document
    assert "training eagerly" not in run.stderr  # compiled, not fallen back


def test_launch_counts_processes_and_builds_the_torchrun_command(monkeypatch) -> None:
    from medsegllm.train import launch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert launch.processes(0) == 4 and launch.processes(2) == 2
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert launch.processes(0) == 1  # CPU-only: one process, no torchrun
    with pytest.raises(ValueError):
        launch.processes(-1)
    command = launch.torchrun_command(4, ["train", "--out", "x"])
    assert command[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "-m"]
    assert command[-4:] == ["medsegllm.cli", "train", "--out", "x"]
