"""The train stage: samples -> model -> `model.pt`, `train_log.csv`, `train_metrics.json`."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pandas as pd
import torch

from medsegllm.common.deid import check_same_salt, resolve_salt
from medsegllm.common.io import remove_partials, write_json
from medsegllm.config import Params
from medsegllm.ingest.standardize import load_standardization
from medsegllm.knowledge import SEG_CLASSES
from medsegllm.model.checkpoint import model_meta, save_checkpoint
from medsegllm.model.network import build_model
from medsegllm.train.data import build_samples, describe, load_prompts
from medsegllm.train import distributed
from medsegllm.train.engine import resolve_device, train_model
from medsegllm.train.refresh import PseudoRefresh, pseudo_targets, write_rounds
from medsegllm.train.tracking import TrainingRun, start_training_run

log = logging.getLogger(__name__)


def run_train(
    ingest_dir: Path, findings_dir: Path, pseudo_dir: Path | None, out_dir: Path, params: Params, resume: bool = False,
    truth_dir: Path | None = None, salt: str | None = None,
) -> dict:
    """Train the configured variant on the train split; the baseline sees labelled series only.

    With pseudo-labels, `pseudo_rounds.csv` logs their rounds (`train.pseudolabels.refresh_every`);
    `truth_dir` (hidden truth, demo only) adds their Dice to it and nothing else.
    With `train.mlflow`, rank 0 logs the training as an MLflow run (`train/tracking.py`), whose store
    is checked before the first epoch; a resume continues that run.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    remove_partials(out_dir)
    check_same_salt(findings_dir, other_dir=ingest_dir)
    baseline = params.train.variant == "unet_baseline"
    use_pseudo = pseudo_dir is not None and not baseline and params.train.pseudolabels.enabled
    samples = build_samples(ingest_dir, findings_dir, pseudo_dir if use_pseudo else None, params, labelled_only=not use_pseudo)
    log.info("train samples: %s", describe(samples))
    class_prompts, subtype_prompts = load_prompts(findings_dir)
    torch.manual_seed(params.seed)  # initial weights: torch's default seed differs in every process
    model = build_model(params.train, samples.device_ids, class_prompts, subtype_prompts)
    refresh = None
    if use_pseudo:
        truth = None
        if truth_dir is not None:
            from medsegllm.common.truth import truth_index

            salt = salt or resolve_salt(params.ingest)  # truth is keyed by raw UIDs: map them like ingest did
            check_same_salt(Path(ingest_dir), salt)
            truth = truth_index(Path(truth_dir), salt)
        refresh = PseudoRefresh(samples, pseudo_targets(ingest_dir, findings_dir, samples, params, truth), params, out_dir)
    else:
        write_rounds(out_dir, [])
    tracker: TrainingRun | None = None
    if params.train.mlflow and os.environ.get("RANK", "0") == "0":  # torchrun's rank 0 alone logs
        tracker = start_training_run(params, out_dir, resume)

    def log_epoch(row: dict) -> None:
        tracker.log_epoch(row, refresh.rows if refresh is not None else ())

    try:
        with distributed.process_group(resolve_device(params.train.device)) as ranks:  # DDP under torchrun
            result = train_model(model, samples, params, out_dir, log_callback=log_epoch if tracker else None,
                                 resume=resume, refresh=refresh)
    except Exception:
        if tracker is not None:
            tracker.fail()
        raise
    run_id = {"mlflow_run_id": tracker.run_id} if tracker is not None else {}
    if ranks.main:
        # ingest's MR standardization travels with the model: `segment` must map new MR series the same way
        extra = {"seed": params.seed, **run_id,  # the run id: `register` links the registered version to the training run
                 "mr_standardization": load_standardization(ingest_dir)}
        save_checkpoint(out_dir / "model.pt", model, model_meta(model, list(SEG_CLASSES), extra))
    metrics = {
        "variant": params.train.variant,
        **{k: result[k] for k in ("loss", "loss_seg", "loss_pseudo", "loss_align", "loss_kl", "epoch", "steps")},
        "step_seconds": result["step_seconds"],
        "n_labelled_series": samples.n_labelled,
        "n_pseudo_series": samples.n_pseudo,
        "n_slices": int(len(samples.slices)),
        "n_devices": len(samples.device_ids),
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "world_size": ranks.world_size,
        "pseudo_rounds": len(refresh.rows) - 1 if refresh is not None else 0,
        **(_round_dice(refresh.rows) if refresh is not None else {}),
        "seconds": time.perf_counter() - t0,
        **run_id,
    }
    if tracker is not None:
        tracker.finish(pd.read_csv(out_dir / "train_log.csv").to_dict("records"), refresh.rows if refresh is not None else [],
                       metrics)
    if ranks.main:
        write_json(out_dir / "train_metrics.json", metrics)
    return metrics


def _round_dice(rows: list[dict]) -> dict:
    """Pseudo-label lesion Dice on tumour studies before the first and after the last round (when scored)."""
    first, last = rows[0]["dice_lesion_tumour"], rows[-1]["dice_lesion_tumour"]
    return {} if first is None else {"pseudo_dice_lesion_tumour_round0": first, "pseudo_dice_lesion_tumour_last": last}
