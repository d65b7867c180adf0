"""The pseudolabel stage: teacher on the few labels + report prior -> masks with confidence."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from medsegllm.common.deid import check_same_salt, resolve_salt
from medsegllm.common.io import load_nifti, remove_partials, save_nifti, write_json, write_parquet
from medsegllm.common.schemas import PSEUDOLABELS
from medsegllm.config import Params
from medsegllm.knowledge import LESION_CLASS, SEG_CLASSES
from medsegllm.model.checkpoint import model_meta, save_checkpoint
from medsegllm.model.inference import predict_volume
from medsegllm.model.network import build_model
from medsegllm.pseudolabel.fusion import lesion_dice, organ_dice, pseudo_label_series, report_lesions
from medsegllm.train.data import build_samples, load_findings, load_prompts, train_split
from medsegllm.train.engine import train_model

log = logging.getLogger(__name__)


def teacher_params(params: Params) -> Params:
    """The teacher: the full model trained on voxel labels only, without report-driven terms."""
    raw = params.model_dump(by_alias=True)
    raw["train"].update(variant="medsegllm", epochs=params.pseudolabel.teacher_epochs)
    if params.pseudolabel.teacher_lesion_oversample is not None:
        raw["train"]["lesion_oversample"] = params.pseudolabel.teacher_lesion_oversample
    for term in ("alignment", "kl", "pseudolabels"):
        raw["train"][term]["enabled"] = False
    return Params.model_validate(raw)


def run_pseudolabel(
    ingest_dir: Path, findings_dir: Path, out_dir: Path, params: Params, truth_dir: Path | None = None, salt: str | None = None
) -> dict:
    """Train the teacher, then write a fused pseudo-label and confidence map per unlabelled train series.

    With `truth_dir`, pseudo-label Dice is scored against the hidden truth; `salt` defaults to the pipeline's salt.
    """
    t0 = time.perf_counter()
    ingest_dir, out_dir = Path(ingest_dir), Path(out_dir)
    remove_partials(out_dir)
    check_same_salt(findings_dir, other_dir=ingest_dir)
    if truth_dir is not None:
        salt = salt or resolve_salt(params.ingest)  # truth is keyed by raw UIDs: map them like ingest did
        check_same_salt(ingest_dir, salt)
    tparams = teacher_params(params)
    samples = build_samples(ingest_dir, findings_dir, None, tparams, labelled_only=True)
    class_prompts, subtype_prompts = load_prompts(findings_dir)
    torch.manual_seed(params.seed)  # initial weights: torch's default seed differs in every process
    teacher = build_model(tparams.train, samples.device_ids, class_prompts, subtype_prompts)
    train_result = train_model(teacher, samples, tparams, out_dir / "teacher_run")
    save_checkpoint(out_dir / "teacher.pt", teacher, model_meta(teacher, list(SEG_CLASSES), {"seed": params.seed}))

    truth: dict[str, Path] = {}
    if truth_dir is not None and salt is not None:
        from medsegllm.common.truth import truth_index, truth_on_grid

        truth = {str(k): Path(v) for k, v in truth_index(Path(truth_dir), salt).items()}
    findings = load_findings(findings_dir)
    rows = train_split(ingest_dir, params)
    alpha, threshold = params.pseudolabel.alpha, params.pseudolabel.confidence_threshold
    records, organ_scores = [], []
    for row in rows[~rows["has_label"].astype(bool)].itertuples(index=False):
        volume, affine = load_nifti(ingest_dir / row.volume_path)
        image = np.asarray(volume, dtype=np.float32)
        probs = predict_volume(teacher, image, row.device_id, mirror=teacher.train_params.inference.mirror)
        lesions, tumour = report_lesions(findings, row.accession_id)
        mask, confidence, weight = pseudo_label_series(probs, image, affine, lesions, tumour, params.pseudolabel)
        mask_rel, conf_rel = f"masks/{row.series_id}.nii.gz", f"confidence/{row.series_id}.nii.gz"
        save_nifti(out_dir / mask_rel, mask, affine)
        save_nifti(out_dir / conf_rel, weight, affine)
        dice_teacher = dice_fused = truth_lesion = None
        if row.series_id in truth:
            reference = np.asarray(truth_on_grid(truth[row.series_id], params.ingest))
            teacher_mask = probs.argmax(axis=0)
            dice_teacher = lesion_dice(teacher_mask, reference)
            dice_fused = lesion_dice(mask, reference)
            organ_scores.append((organ_dice(teacher_mask, reference), organ_dice(mask, reference)))
            truth_lesion = bool((reference == LESION_CLASS).any())
        records.append(
            {"series_id": row.series_id, "mask_path": mask_rel, "confidence_path": conf_rel,
             "mean_confidence": float(confidence.mean()), "confident_fraction": float((weight > 0).mean()),
             "dice_teacher": dice_teacher, "dice_fused": dice_fused, "truth_lesion": truth_lesion}
        )
    table = pd.DataFrame(records, columns=[*PSEUDOLABELS.names, "truth_lesion"])
    write_parquet(out_dir / "pseudolabels.parquet", pa.Table.from_pandas(table[PSEUDOLABELS.names], schema=PSEUDOLABELS, preserve_index=False))
    summary = {
        "n_series": len(table),
        "n_teacher_series": samples.n_labelled,
        "alpha": alpha,
        "confidence_threshold": threshold,
        "mean_confidence": float(table["mean_confidence"].mean()) if len(table) else None,
        "confident_fraction": float(table["confident_fraction"].mean()) if len(table) else None,
        "teacher_loss": train_result["loss"],
        "seconds": time.perf_counter() - t0,
    }
    scored = table.dropna(subset=["dice_fused"])
    if len(scored):
        tumour_rows = scored[scored["truth_lesion"].astype(bool)]
        summary.update(
            n_scored=len(scored),
            dice_teacher=float(scored["dice_teacher"].mean()),
            dice_fused=float(scored["dice_fused"].mean()),
            dice_teacher_tumour=float(tumour_rows["dice_teacher"].mean()) if len(tumour_rows) else None,
            dice_fused_tumour=float(tumour_rows["dice_fused"].mean()) if len(tumour_rows) else None,
            n_scored_tumour=len(tumour_rows),
            dice_organs_teacher=float(np.mean([t for t, _ in organ_scores])),
            dice_organs_fused=float(np.mean([f for _, f in organ_scores])),
        )
    write_json(out_dir / "summary.json", summary)
    log.info("pseudolabels: %s", summary)
    return summary
