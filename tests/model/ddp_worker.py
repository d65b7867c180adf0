"""Run by test_ddp.py under `torchrun --nproc_per_node=2` (one launch, since each costs seconds of imports).

One process group for all (torchrun's store does not take a second group after the first is torn
down; `process_group` inside the command joins the open one):
1. `medsegllm train` (the console command, in-process) for one step: rank 0 writes `cli/`.
2. A straight two-epoch run, the same run killed after epoch 1 and resumed; rank 0 saves both
   models' weights and every rank's weights to `worker.pt`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from medsegllm.cli import app
from medsegllm.config import load_params
from medsegllm.model.network import build_model
from medsegllm.train import distributed
from medsegllm.train.data import build_samples, load_prompts
from medsegllm.train.engine import train_model
from tests.model.synthetic import Interrupted, stop_after_epoch


def main(root: Path) -> None:
    ingest, findings = root / "ingest", root / "findings"
    params = load_params(root / "two_epochs.yaml")
    with distributed.process_group(torch.device("cpu")) as ranks:
        app(["train", "--ingested", str(ingest), "--findings", str(findings), "--out", str(root / "cli"),
             "--params", str(root / "one_step.yaml")], standalone_mode=False)
        samples = build_samples(ingest, findings, None, params, labelled_only=True)
        prompts = load_prompts(findings)

        def fresh() -> torch.nn.Module:
            torch.manual_seed(params.seed)
            return build_model(params.train, samples.device_ids, *prompts)

        straight = fresh()
        train_model(straight, samples, params, root / "straight")
        try:
            train_model(fresh(), samples, params, root / "resumed", log_callback=stop_after_epoch(1))
        except Interrupted:
            pass
        resumed = fresh()
        train_model(resumed, samples, params, root / "resumed", resume=True)
        every_rank = distributed.gather({k: v.clone() for k, v in straight.named_parameters()}, ranks)
        if ranks.main:
            torch.save({"straight": straight.state_dict(), "resumed": resumed.state_dict(), "ranks": every_rank},
                       root / "worker.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
