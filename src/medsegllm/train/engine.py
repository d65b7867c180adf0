"""The training loop: seeded, resumable from a per-epoch checkpoint, one log row per epoch."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from medsegllm.common.io import atomic_path
from medsegllm.config import Params
from medsegllm.knowledge import LESION_CLASS
from medsegllm.model.inference import autocast_for, bf16_supported
from medsegllm.model.losses import class_kl, info_nce, seg_loss, subtype_logits, text_distribution
from medsegllm.model.pdm import mix_amplitudes, pdm_probability, set_pdm_probability
from medsegllm.train import distributed
from medsegllm.train.data import TrainSamples, sample_batch

if TYPE_CHECKING:
    from medsegllm.train.refresh import PseudoRefresh

LOSS_KEYS = ("loss", "loss_seg", "loss_pseudo", "loss_align", "loss_kl")
LOG_COLUMNS = ("epoch", *LOSS_KEYS, "skipped_steps", "pdm_p", "lr", "seconds")


def resolve_device(choice: str) -> torch.device:
    """'auto' takes CUDA when available."""
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def resolve_precision(choice: str, device: torch.device) -> str:
    """'auto' is bf16 where the hardware runs it natively (CUDA, AVX-512 BF16 CPUs), else fp32: emulated bf16 is slower."""
    if choice == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    return choice


def flag_nonfinite_step(optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """Make the next `optimizer.step()` a no-op if any gradient holds NaN/inf; returns the 0-d flag.

    A bad batch (a NaN from an overflow, a degenerate crop) then costs one step instead of the run:
    AdamW's fused kernel reads `optimizer.found_inf` (the contract torch's GradScaler uses) and skips
    the update and its step count on the device, so there is no host sync per step.
    """
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads, foreach=True)
    optimizer.found_inf = (~torch.isfinite(total)).float()
    return optimizer.found_inf


def _study_means(emb: torch.Tensor, text: torch.Tensor, study: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One (image, text) pair per study: slices of one study share a report, so they must not be negatives."""
    studies, inverse = torch.unique(study, return_inverse=True)
    summed = torch.zeros(len(studies), emb.shape[1], device=emb.device, dtype=emb.dtype).index_add(0, inverse, emb)
    first = torch.zeros(len(studies), dtype=torch.long, device=emb.device).scatter_(
        0, inverse, torch.arange(len(study), device=emb.device)
    )
    return summed, text[first]


def _rows(mask: torch.Tensor, count: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Selects a batch's `mask` rows (`count` of them); the whole tensor, uncopied, when that is every row.

    By `index_select`, not a boolean index: the same values and gradients, but its backward adds the
    gradient rows back (index_add) where a boolean index scatters them through index_put, 4-7x slower
    for the logits and features of a 16 x 64 x 64 batch on 2 CPU cores (scratch timing).
    """
    if count == len(mask):
        return lambda x: x
    index = mask.nonzero().squeeze(1)
    return lambda x: x.index_select(0, index)


def compute_losses(model: nn.Module, batch: dict[str, torch.Tensor], params: Params,
                   outputs: Callable[..., dict[str, torch.Tensor]] | None = None) -> dict[str, torch.Tensor]:
    """All loss terms of one batch (each zero when switched off or without data) and their sum.

    `outputs` runs the network (default `model.outputs`; train.compile passes its compiled twin).
    """
    train = params.train
    baseline = train.variant == "unet_baseline"
    out = (outputs or model.outputs)(batch["image"], batch["device"])
    logits = out["logits"]
    zero = logits.new_zeros(())
    class_weights = torch.tensor(train.class_weights)
    pseudo = batch["pseudo"]
    n_pseudo = int(pseudo.sum())
    losses = {k: zero for k in LOSS_KEYS}
    if n_pseudo < len(pseudo):
        labelled = _rows(~pseudo, len(pseudo) - n_pseudo)
        losses["loss_seg"] = seg_loss(labelled(logits), labelled(batch["label"]), class_weights)
    if not baseline and train.pseudolabels.enabled and n_pseudo:
        rows = _rows(pseudo, n_pseudo)
        target, weight = rows(batch["label"]), rows(batch["weight"])
        if train.pseudolabels.lesion_weight != 1.0:
            weight = torch.where(target == LESION_CLASS, weight * train.pseudolabels.lesion_weight, weight)
        losses["loss_pseudo"] = seg_loss(rows(logits), target, class_weights, weight)
    use_align = not baseline and train.alignment.enabled
    use_kl = not baseline and train.kl.enabled
    if use_align or use_kl:
        lesion = (batch["label"] == LESION_CLASS) & (batch["weight"] > 0)
        keep = lesion.flatten(1).any(1) & batch["has_text"]
        n_keep = int(keep.sum())
        if n_keep:
            kept = _rows(keep, n_keep)
            pooled = model.pooled_embedding({k: kept(out[k]) for k in ("features", "norm")}, kept(lesion))
            if use_align:
                image_emb, text_emb = _study_means(pooled, kept(batch["text"]), kept(batch["study"]))
                if image_emb.shape[0] >= 2:
                    losses["loss_align"] = info_nce(image_emb, text_emb, train.alignment.temperature)
            subtype = kept(batch["subtype"])
            typed = subtype >= 0
            if use_kl and typed.any():
                image_logits = subtype_logits(pooled[typed], model.subtype_prompts, train.alignment.temperature)
                text_dist = text_distribution(subtype[typed], model.subtype_prompts.shape[0])
                losses["loss_kl"] = class_kl(image_logits, text_dist)
    losses["loss"] = (
        losses["loss_seg"]
        + train.pseudolabels.weight * losses["loss_pseudo"]
        + train.alignment.weight * losses["loss_align"]
        + train.kl.weight * losses["loss_kl"]
    )
    return losses


def _rng_state(rng: np.random.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": rng.bit_generator.state}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict, rng: np.random.Generator) -> None:
    torch.set_rng_state(state["torch"])
    rng.bit_generator.state = state["numpy"]
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _restore_rank_rng(saved: dict | list[dict], rng: np.random.Generator, ranks: distributed.Ranks) -> None:
    """A data-parallel checkpoint holds every rank's RNG state (a list); a single-process one, one dict."""
    states = saved if isinstance(saved, list) else [saved]
    if len(states) != ranks.world_size:
        raise ValueError(f"checkpoint written by {len(states)} training process(es); resume with as many, not {ranks.world_size}")
    _restore_rng(states[ranks.rank], rng)


def _write_log(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp:
        pd.DataFrame(rows, columns=list(LOG_COLUMNS)).to_csv(tmp, index=False)


def train_model(
    model: nn.Module,
    samples: TrainSamples,
    params: Params,
    out_dir: Path,
    log_callback: Callable[[dict], None] | None = None,
    resume: bool = False,
    refresh: PseudoRefresh | None = None,
) -> dict:
    """Train `model` in place; checkpoint + log every epoch so `resume=True` continues exactly.

    Under torchrun (`train.distributed`) every rank trains its DDP replica and gets `log_callback`
    with the same, rank-averaged row; rank 0 alone writes.

    `refresh` keeps an EMA teacher of `model` and re-labels the pseudo-labelled samples (`train.pseudolabels.refresh_every`).

    `train.precision` picks the compute precision (`resolve_precision`); the optimizer state and the
    weights stay fp32.

    Returns the last epoch's log row plus `steps`, `precision`, `compiled` (whether `train.compile` took
    effect: it trains eagerly where inductor cannot run) and `step_seconds` (mean wall time per step).
    """
    train = params.train
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path = out_dir / "checkpoint.pt", out_dir / "train_log.csv"
    if train.num_threads > 0:
        torch.set_num_threads(train.num_threads)
    ranks = distributed.ranks()  # under torchrun: own seed, own GPU, rank 0 writes
    device = distributed.local_device(resolve_device(train.device), ranks)
    cuda = device.type == "cuda"
    seed = distributed.rank_seed(params.seed, ranks)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model.to(device)
    precision = resolve_precision(train.precision, device)
    # oneDNN's bf16 convolutions (and cuDNN's) want channels-last; fp32 on CPU keeps the default layout
    channels_last = (torch.channels_last_3d if train.spatial_dims == 3 else torch.channels_last) \
        if cuda or precision == "bf16" else None
    if channels_last is not None:
        model.to(memory_format=channels_last)
    # fused: one kernel for all parameters instead of a loop of small ops per tensor
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=1e-4, fused=True)
    total_steps = train.epochs * train.steps_per_epoch
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    if refresh is not None:
        refresh.attach(model)
    rows: list[dict] = []
    start_epoch = 0
    if resume and ckpt_path.exists():
        state = torch.load(str(ckpt_path), map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        rows = list(state["rows"])
        start_epoch = int(state["epoch"])
        _restore_rank_rng(state["rng"], rng, ranks)
        if refresh is not None and "refresh" in state:
            refresh.load_state_dict(state["refresh"])
        if ranks.main:
            _write_log(log_path, rows)  # a kill can land between the checkpoint and the log write
    step = distributed.training_step(model, partial(compute_losses, params=params), ranks, device, train.compile)
    loop_seconds = 0.0
    bar = tqdm(total=total_steps, initial=start_epoch * train.steps_per_epoch, file=sys.stderr, desc="train", leave=False,
               disable=not ranks.main)
    for epoch in range(start_epoch, train.epochs):
        t0 = time.perf_counter()
        p = pdm_probability(epoch, train.pdm) if train.variant == "medsegllm" else 0.0
        set_pdm_probability(model, p)
        model.train()
        # losses stay on the device until the epoch ends: no host sync per step
        sums = torch.zeros(len(LOSS_KEYS), dtype=torch.float64, device=device)
        skipped = torch.zeros((), device=device)
        for _ in range(train.steps_per_epoch):
            batch = sample_batch(
                samples, train.batch_size, tuple(train.roi_size), train.lesion_oversample, rng, train.intensity_aug,
                train.labelled_share, train.scanner_aug,
            )
            batch = {k: v.to(device) for k, v in batch.items()}
            if p > 0 and train.pdm.amplitude_mix > 0:
                batch["image"] = mix_amplitudes(batch["image"], batch["device"], p, train.pdm.amplitude_mix,
                                                train.pdm.amplitude_band)
            if channels_last is not None:
                batch["image"] = batch["image"].contiguous(memory_format=channels_last)
            with autocast_for(device, precision):
                losses = step(batch)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            found_inf = flag_nonfinite_step(optimizer)  # the same on every rank: DDP reduced the gradients
            optimizer.step()
            scheduler.step()
            if refresh is not None:
                refresh.update(model)
            skipped += found_inf
            step_losses = torch.stack([losses[k].detach() for k in LOSS_KEYS]).double()
            sums += torch.where(found_inf.bool(), 0.0, step_losses)  # the epoch's means cover the steps taken
            bar.update(1)
        n_skipped = int(skipped.item())
        taken = train.steps_per_epoch - n_skipped
        if taken == 0:
            raise RuntimeError(f"epoch {epoch + 1}: every step's gradients held NaN/inf, so training diverged; "
                               "lower train.lr or train with train.precision: fp32")
        sums = dict(zip(LOSS_KEYS, sums.tolist()))
        loop_seconds += time.perf_counter() - t0
        bar.set_postfix(loss=f"{sums['loss'] / taken:.3f}")
        sums = distributed.average(sums, ranks)  # the epoch's losses over every rank's batches
        row = {"epoch": epoch + 1, **{k: v / taken for k, v in sums.items()}, "skipped_steps": n_skipped, "pdm_p": p,
               "lr": scheduler.get_last_lr()[0], "seconds": time.perf_counter() - t0}
        rows.append(row)
        if refresh is not None:
            refresh.end_epoch(epoch + 1)
        rng_states = distributed.gather(_rng_state(rng), ranks)
        if ranks.main:
            with atomic_path(ckpt_path) as tmp:
                torch.save(
                    {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "epoch": epoch + 1, "rows": rows, "rng": rng_states if ranks.parallel else rng_states[0],
                     **({"refresh": refresh.state_dict()} if refresh is not None else {})},
                    tmp,
                )
            _write_log(log_path, rows)
        distributed.barrier(ranks)
        if log_callback is not None:
            log_callback(row)
    bar.close()
    if not rows:
        raise ValueError("no epochs to run")
    model.to(memory_format=torch.contiguous_format)
    steps_run = (train.epochs - start_epoch) * train.steps_per_epoch
    return {**rows[-1], "steps": len(rows) * train.steps_per_epoch, "precision": precision,
            "compiled": distributed.is_compiled(step), "step_seconds": loop_seconds / steps_run if steps_run else None}
