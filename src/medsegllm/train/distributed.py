"""Data-parallel training under torchrun, and the optional torch.compile of the network in the training step.

`torchrun --nproc_per_node=N --no-python medsegllm train ...` starts N copies of the train stage;
`process_group` joins them (nccl on CUDA, gloo on CPU). Each rank draws its own batches from a
seed derived from (seed, rank), DDP averages the gradients, so one step sees N x batch_size
samples; rank 0 alone writes files. Without torchrun's environment every helper here is a no-op
and a run is exactly the single-process run.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from medsegllm.model.compiled import compile_blocker
from medsegllm.model.dan import DomainAwareNorm

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world_size > 1


def ranks() -> Ranks:
    """The ranks of the running process group; one process when none is initialized."""
    if not (dist.is_available() and dist.is_initialized()):
        return Ranks()
    return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[Ranks]:
    """Join torchrun's process group for the block (from RANK/WORLD_SIZE/MASTER_ADDR in the env).

    On a clean exit every rank waits for the others (rank 0 may still be writing) before the group
    is torn down; without torchrun's environment, or inside an existing group, it only yields.
    """
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ or dist.is_initialized():
        yield ranks()
        return
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        current = ranks()
        log.info("data-parallel training: rank %d of %d (%s)", current.rank, current.world_size, dist.get_backend())
        yield current
        dist.barrier()
    finally:
        dist.destroy_process_group()


def local_device(device: torch.device, r: Ranks) -> torch.device:
    """Each rank's own GPU (cuda:LOCAL_RANK) under DDP; otherwise `device` unchanged."""
    if device.type == "cuda" and r.parallel:
        return torch.device("cuda", r.local_rank)
    return device


def rank_seed(seed: int, r: Ranks) -> int:
    """`seed` itself in one process; under DDP a distinct, reproducible seed per rank (its own batches)."""
    if not r.parallel:
        return seed
    return int(np.random.SeedSequence(seed, spawn_key=(r.rank,)).generate_state(1)[0])


def barrier(r: Ranks) -> None:
    """Wait until every rank gets here (so none reads a file rank 0 is still writing)."""
    if r.parallel:
        dist.barrier()


def gather(obj: object, r: Ranks) -> list:
    """`obj` of every rank, in rank order ([obj] in one process)."""
    if not r.parallel:
        return [obj]
    out: list = [None] * r.world_size
    dist.all_gather_object(out, obj)
    return out


def average(values: dict[str, float], r: Ranks) -> dict[str, float]:
    """Mean over ranks of each value (epoch losses of the whole, all-rank batch); unchanged in one process."""
    if not r.parallel:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return dict(zip(values, (t / r.world_size).tolist()))


class _Step(nn.Module):
    """Model and loss as one module: DDP hooks a module's forward, and the loss uses the model beyond
    its forward (mask-pooled alignment embeddings, the subtype KL head). `outputs` is the network's
    forward the loss calls: `model.outputs`, or its compiled twin."""

    def __init__(self, model: nn.Module, loss_fn: Callable[..., dict[str, torch.Tensor]],
                 outputs: Callable[..., dict[str, torch.Tensor]] | None = None) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn
        self.outputs = outputs

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.loss_fn(self.model, batch, outputs=self.outputs)


def routes_parameters(model: nn.Module) -> bool:
    """Whether a step can leave parameters unused: DAN's per-device affines see only their device's samples."""
    return any(isinstance(m, DomainAwareNorm) and m.weight is None for m in model.modules())


def is_compiled(step: nn.Module) -> bool:
    """Whether a `training_step` runs a compiled forward (DDP keeps the step as its `.module`)."""
    return getattr(step, "module", step).outputs is not None


def training_step(
    model: nn.Module,
    loss_fn: Callable[..., dict[str, torch.Tensor]],
    r: Ranks,
    device: torch.device,
    compile: bool = False,
) -> nn.Module:
    """`step(batch) -> losses`: DDP-wrapped under torchrun; with `compile`, the network's forward is compiled.

    Only the forward (and so its backward): the losses branch on each batch's content (which samples
    are labelled, which carry a lesion and a report), and compiling the whole step broke its graph at
    each branch and recompiled; it trained slower than eager with alignment on (scratch, 2 CPU cores:
    67 vs 64 ms a step; the forward alone, 54 ms). The model itself is left as it is (its state dict,
    a deep copy of it), only the wrapper changes.
    """
    outputs = None
    if compile:
        blocker = compile_blocker(device)
        if blocker is None:
            outputs = torch.compile(model.outputs)
        else:
            log.warning("train.compile is on but torch.compile cannot run here: %s; training eagerly", blocker)
    step: nn.Module = _Step(model, loss_fn, outputs)
    if r.parallel:
        step = DistributedDataParallel(
            step,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=routes_parameters(model),
        )
    return step
