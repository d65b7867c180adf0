"""The train stage: samples -> model -> `model.pt`, `train_log.csv`, `train_metrics.json`."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from medsegllm.common.deid import check_same_salt
from medsegllm.common.io import write_json
from medsegllm.config import Params
from medsegllm.knowledge import SEG_CLASSES
from medsegllm.model.checkpoint import model_meta, save_checkpoint
from medsegllm.model.network import build_model
from medsegllm.train.data import build_samples, describe, load_prompts
from medsegllm.train.engine import train_model

log = logging.getLogger(__name__)


def run_train(
    ingest_dir: Path, findings_dir: Path, pseudo_dir: Path | None, out_dir: Path, params: Params, resume: bool = False
) -> dict:
    """Train the configured variant on the train split; the baseline sees labelled series only."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    check_same_salt(findings_dir, other_dir=ingest_dir)
    baseline = params.train.variant == "unet_baseline"
    use_pseudo = pseudo_dir is not None and not baseline and params.train.pseudolabels.enabled
    samples = build_samples(ingest_dir, findings_dir, pseudo_dir if use_pseudo else None, params, labelled_only=not use_pseudo)
    log.info("train samples: %s", describe(samples))
    class_prompts, subtype_prompts = load_prompts(findings_dir)
    torch.manual_seed(params.seed)  # initial weights: torch's default seed differs in every process
    model = build_model(params.train, samples.device_ids, class_prompts, subtype_prompts)
    result = train_model(model, samples, params, out_dir, resume=resume)
    save_checkpoint(out_dir / "model.pt", model, model_meta(model, list(SEG_CLASSES), {"seed": params.seed}))
    metrics = {
        "variant": params.train.variant,
        **{k: result[k] for k in ("loss", "loss_seg", "loss_pseudo", "loss_align", "loss_kl", "epoch", "steps")},
        "step_seconds": result["step_seconds"],
        "n_labelled_series": samples.n_labelled,
        "n_pseudo_series": samples.n_pseudo,
        "n_slices": int(len(samples.slices)),
        "n_devices": len(samples.device_ids),
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "seconds": time.perf_counter() - t0,
    }
    write_json(out_dir / "train_metrics.json", metrics)
    return metrics
