"""The validate stage: score the model on the validation split, measure cross-device divergence,
apply the quality gates and write metrics, a per-device table, a verdict and an HTML report.

All outputs are written before a failing gate raises, so a failed run can still be inspected.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medsegllm.common.deid import check_same_salt, resolve_salt
from medsegllm.common.io import load_nifti, remove_partials, write_json, write_with
from medsegllm.common.splits import assign_split
from medsegllm.config import Params, PostprocessParams
from medsegllm.knowledge import SEG_CLASSES
from medsegllm.model.postprocess import label_map
from medsegllm.pseudolabel.fusion import report_lesions
from medsegllm.segment.guided import guided_label
from medsegllm.train.data import load_findings
from medsegllm.validate.divergence import device_histograms, feature_js, mean_pairwise_js, split_half_js
from medsegllm.validate.metrics import (
    aggregate,
    bootstrap_ci,
    cohen_kappa,
    dice_per_class,
    hd95_per_class,
    kappa_ci,
    lesion_table,
    nanmean,
    sensitivity_by_size,
)
from medsegllm.validate.report import Case, write_report

log = logging.getLogger(__name__)

LEAD_COLUMNS = ["device_id", "modality", "holdout"]


class GateFailed(RuntimeError):
    """A quality gate failed; the message is a table of the failed checks."""


def validation_hash(series_ids: list[str]) -> str:
    """Fingerprint of the validation set, so metrics are compared only on the same data."""
    return hashlib.sha256("\n".join(sorted(series_ids)).encode()).hexdigest()


def validation_rows(manifest: pd.DataFrame, params: Params) -> pd.DataFrame:
    """Manifest rows of the validation split."""
    split = assign_split(manifest, params.split.holdout_devices, params.split.val_fraction, params.seed)
    return manifest[split.to_numpy() == "val"].reset_index(drop=True)


def _reference_paths(val: pd.DataFrame, ingest_dir: Path, truth_dir: Path | None, salt: str | None) -> dict[str, Path]:
    """Hidden truth when given (demo), else the ingested voxel labels of labelled series."""
    if truth_dir is not None and salt is not None:
        from medsegllm.common.truth import truth_index

        index = truth_index(truth_dir, salt)
        return {sid: index[sid] for sid in val.series_id if sid in index}
    return {row.series_id: ingest_dir / row.label_path for row in val.itertuples() if row.has_label and row.label_path}


def _load_reference(path: Path, from_truth: bool, params: Params) -> np.ndarray:
    if from_truth:
        from medsegllm.common.truth import truth_on_grid

        return np.asarray(truth_on_grid(path, params.ingest), dtype=np.uint8)
    return np.asarray(load_nifti(path)[0], dtype=np.uint8)


def _case_slice(volume: np.ndarray, ref: np.ndarray, pred: np.ndarray, lesion: int) -> tuple[np.ndarray, ...]:
    """The middle axial slice of the reference lesion, else of the reference foreground."""
    for mask in (ref == lesion, ref > 0):
        zs = np.flatnonzero(mask.any(axis=(0, 1)))
        if zs.size:
            z = int(zs[zs.size // 2])
            break
    else:
        z = volume.shape[2] // 2
    return volume[:, :, z], ref[:, :, z], pred[:, :, z]


def _finite_or_none(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _gate(metrics: dict[str, float], params: Params) -> dict[str, Any]:
    """Each check passes only on a finite value within its threshold; NaN (not measurable) fails."""
    g = params.validation.gates
    specs = [("dice_mean", ">=", g.min_dice), ("js_features", "<=", g.max_js), ("device_dice_gap", "<=", g.max_device_gap)]
    checks = []
    for name, op, threshold in specs:
        value = metrics.get(name, float("nan"))
        ok = math.isfinite(value) and (value >= threshold if op == ">=" else value <= threshold)
        checks.append({"name": name, "op": op, "value": _finite_or_none(value), "threshold": threshold, "passed": bool(ok)})
    return {"passed": all(c["passed"] for c in checks), "checks": checks}


def _failure_table(gate: dict[str, Any]) -> str:
    lines = [f"{'check':<18} {'value':>8}   threshold", "-" * 40]
    for c in gate["checks"]:
        if not c["passed"]:
            value = "n/a" if c["value"] is None else f"{c['value']:.3f}"
            lines.append(f"{c['name']:<18} {value:>8}   {c['op']} {c['threshold']:.3f}")
    return "\n".join(lines)


def evaluate_series(
    probs: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...], lesion_class: int, postprocess: PostprocessParams
) -> dict[str, Any]:
    """Dice/HD95 per foreground class, one row per reference lesion, false-positive lesions and
    lesion presence (for study-level detection), on the label map `segment` would write."""
    n_classes = probs.shape[0]
    pred = label_map(probs, spacing, postprocess)
    lesions, false_positives = lesion_table(pred == lesion_class, ref == lesion_class, spacing)
    return {
        "pred": pred,
        "dice": dice_per_class(pred, ref, n_classes),
        "hd95": hd95_per_class(pred, ref, n_classes, spacing),
        "lesion_rows": lesions,
        "lesions": len(lesions),
        "lesions_detected": sum(r["detected"] for r in lesions),
        "false_positive_lesions": false_positives,
        "ref_lesion": bool((ref == lesion_class).any()),
        "pred_lesion": bool((pred == lesion_class).any()),
    }


def study_detection(per_series: pd.DataFrame) -> pd.DataFrame:
    """Lesion present per study, in reference and prediction: a study is positive if any series is."""
    key = next((c for c in ("study_id", "series_id") if c in per_series), None)
    study = per_series[key] if key else pd.Series(per_series.index, index=per_series.index)
    return per_series.assign(study_id=study).groupby("study_id")[["ref_lesion", "pred_lesion"]].any()


def summarize(
    per_series: pd.DataFrame, class_names: tuple[str, ...], seen_devices: set[str], params: Params
) -> tuple[dict[str, float], pd.DataFrame, pd.DataFrame]:
    """Headline metrics plus per-device and per-modality tables from the per-series results.

    Confidence intervals resample studies (the `study_id` column when present, else series).
    """
    fg = list(class_names[1:])
    n_boot, seed = params.validation.bootstrap, params.seed
    studies = per_series["study_id"].to_numpy() if "study_id" in per_series else None
    dice_cols = [f"dice_{c}" for c in fg]
    matrix = per_series[dice_cols].to_numpy(dtype=float)
    low, high = bootstrap_ci(matrix, n_boot, seed, studies)
    class_ci = {}
    for c in fg:
        c_low, c_high = bootstrap_ci(per_series[f"dice_{c}"].to_numpy(dtype=float), n_boot, seed, studies)
        class_ci.update({f"dice_{c}_ci_low": c_low, f"dice_{c}_ci_high": c_high})
    per_device = aggregate(per_series, "device_id", fg, n_boot, seed)
    per_modality = aggregate(per_series, "modality", fg, n_boot, seed)
    modality = per_series.groupby("device_id")["modality"].first()
    per_device["modality"] = per_device["device_id"].map(modality)
    per_device["holdout"] = ~per_device["device_id"].isin(seen_devices)
    per_device = per_device[LEAD_COLUMNS + [c for c in per_device.columns if c not in LEAD_COLUMNS]]
    seen = per_series["device_id"].isin(seen_devices).to_numpy()
    # One or two series make a device's mean a coin toss; the gap compares devices measured on enough.
    gated = per_device[per_device["n"] >= params.validation.gates.min_device_series]
    device_means = gated["dice_mean"].to_numpy(dtype=float)
    device_means = device_means[np.isfinite(device_means)]
    lesions = per_series["lesions"].sum()
    detection = study_detection(per_series)
    k_low, k_high = kappa_ci(detection["ref_lesion"].to_numpy(), detection["pred_lesion"].to_numpy(), n_boot, seed)
    metrics = {
        "dice_mean": nanmean(matrix),
        **{f"dice_{c}": nanmean(per_series[f"dice_{c}"].to_numpy()) for c in fg},
        "dice_mean_ci_low": low,
        "dice_mean_ci_high": high,
        **class_ci,
        "hd95_mean": nanmean(per_series[[f"hd95_{c}" for c in fg]].to_numpy(dtype=float)),
        "lesion_sensitivity": per_series["lesions_detected"].sum() / lesions if lesions else float("nan"),
        "lesions_reference": int(lesions),
        "lesions_false_positive": int(per_series["false_positive_lesions"].sum()) if "false_positive_lesions" in per_series else 0,
        "detection_kappa": cohen_kappa(detection["ref_lesion"].to_numpy(), detection["pred_lesion"].to_numpy()),
        "detection_kappa_ci_low": k_low,
        "detection_kappa_ci_high": k_high,
        "n_studies": len(detection),
        "dice_seen_devices": nanmean(matrix[seen]),
        "dice_holdout_devices": nanmean(matrix[~seen]),
        "device_dice_gap": float(device_means.max() - device_means.min()) if device_means.size else float("nan"),
        "n_series": len(per_series),
    }
    return metrics, per_device, per_modality


def report_guided_metrics(per_series: pd.DataFrame, class_names: tuple[str, ...], seen_devices: set[str]) -> dict[str, float]:
    """`dice_*_report_guided`: the headline Dice of the report-guided label maps (`segment/guided.py`),
    over the validation series whose study has a report (`n_series_report_guided` of them).

    An inference mode, not the model: the report, not the network, places the lesions. The model's
    own figures (`dice_mean`, ...) stay image-only, the paper's and BENCHMARKS.md's comparisons too.
    """
    if per_series.empty:
        return {"n_series_report_guided": 0}
    fg = class_names[1:]
    matrix = per_series[[f"dice_{c}" for c in fg]].to_numpy(dtype=float)
    seen = per_series["device_id"].isin(seen_devices).to_numpy()
    return {
        "dice_mean_report_guided": nanmean(matrix),
        **{f"dice_{c}_report_guided": nanmean(per_series[f"dice_{c}"].to_numpy(dtype=float)) for c in fg},
        "dice_seen_devices_report_guided": nanmean(matrix[seen]),
        "dice_holdout_devices_report_guided": nanmean(matrix[~seen]),
        "n_series_report_guided": len(per_series),
    }


def load_reference_network(path: Path, model_meta: dict) -> Any:
    """The same network trained without DAN and PDM, for the 'without' side of the feature JS.

    Refused when it is not that: another backbone, widths or variant, or DAN/PDM switched on.
    """
    from medsegllm.model.checkpoint import load_model

    reference, meta = load_model(path)
    ours, theirs = model_meta["train"], meta["train"]
    different = [k for k in ("variant", "backbone", "channels", "roi_size") if ours.get(k) != theirs.get(k)]
    enabled = [k for k in ("dan", "pdm") if theirs.get(k, {}).get("enabled")]
    if different or enabled:
        raise ValueError(
            f"--reference-checkpoint {path} is not this network trained without DAN+PDM "
            f"(differs in {different or 'nothing'}; enabled: {enabled or 'none'})"
        )
    return reference.eval()


def run_validate(
    model_path: Path,
    ingest_dir: Path,
    out_dir: Path,
    params: Params,
    truth_dir: Path | None = None,
    salt: str | None = None,
    pseudo_dir: Path | None = None,
    train_dir: Path | None = None,
    reference_model_path: Path | None = None,
    findings_dir: Path | None = None,
) -> dict:
    """Validate the model on the validation split; raise GateFailed (after writing) when a gate fails.

    With `truth_dir`, the hidden truth is the reference; `salt` defaults to the pipeline's salt.
    With `reference_model_path` (the same network trained with DAN and PDM off), its bottleneck
    feature JS is measured on the same series and reported beside the model's own.
    With `findings_dir` (the reports stage's output), the series whose study has a report are also
    scored report-guided, as `segment --reports` labels them (`report_guided_metrics`).
    """
    from medsegllm.model.checkpoint import load_model
    from medsegllm.model.inference import bottleneck_features, predict_volume, resolve_mirror

    ingest_dir, out_dir = Path(ingest_dir), Path(out_dir)
    remove_partials(out_dir)
    val = validation_rows(pd.read_parquet(ingest_dir / "manifest.parquet"), params)
    model, meta = load_model(model_path)
    model.eval()
    class_names = tuple(meta.get("classes") or SEG_CLASSES)
    lesion_class = class_names.index("lesion")
    seen_devices = set(meta["device_ids"])
    mirror = resolve_mirror(model.train_params, params.validation.mirror)
    from_truth = truth_dir is not None
    if from_truth:
        salt = salt or resolve_salt(params.ingest)  # truth is keyed by raw UIDs: map them like ingest did
        check_same_salt(ingest_dir, salt)
    references = _reference_paths(val, ingest_dir, truth_dir, salt)
    findings = None
    if findings_dir is not None:
        check_same_salt(findings_dir, other_dir=ingest_dir)
        findings = load_findings(findings_dir)
    reference_model = load_reference_network(reference_model_path, meta) if reference_model_path else None
    log.info("validating %d series (%d with a reference)", len(val), len(references))

    records, lesion_rows, slices, features, features_ref, guided_records = [], [], {}, {}, {}, []
    with torch.no_grad():
        for row in val.itertuples():
            volume, affine = load_nifti(ingest_dir / row.volume_path)
            volume = np.asarray(volume, dtype=np.float32)
            features.setdefault(row.device_id, []).append(bottleneck_features(model, volume, row.device_id))
            if reference_model is not None:
                features_ref.setdefault(row.device_id, []).append(bottleneck_features(reference_model, volume, row.device_id))
            if row.series_id not in references:
                continue
            ref = _load_reference(references[row.series_id], from_truth, params)
            probs = predict_volume(model, volume, row.device_id, mirror=mirror)
            result = evaluate_series(probs, ref, tuple(row.spacing), lesion_class, model.train_params.postprocess)
            slices[row.series_id] = _case_slice(volume, ref, result["pred"], lesion_class)
            ids = {"series_id": row.series_id, "study_id": getattr(row, "study_id", None) or row.series_id,
                   "device_id": row.device_id, "modality": row.modality}
            lesion_rows += [{**ids, **lesion} for lesion in result["lesion_rows"]]
            if findings is not None and row.accession_id in findings.index:
                lesions, tumour = report_lesions(findings, row.accession_id)
                guided = guided_label(probs, volume, affine, {"lesions": lesions, "tumour_present": tumour},
                                      model.train_params.postprocess, params.pseudolabel)
                guided_records.append({**ids, **{f"dice_{c}": v for c, v in
                                                 zip(class_names[1:], dice_per_class(guided, ref, len(class_names)))}})
            records.append(
                {
                    **ids,
                    **{f"dice_{c}": v for c, v in zip(class_names[1:], result["dice"])},
                    **{f"hd95_{c}": v for c, v in zip(class_names[1:], result["hd95"])},
                    **{k: result[k] for k in ("lesions", "lesions_detected", "false_positive_lesions", "ref_lesion", "pred_lesion")},
                }
            )
    n_skipped = len(val) - len(records)
    if n_skipped:
        log.warning("%d validation series have no reference and were skipped", n_skipped)
    if not records:
        raise ValueError(f"no validation series with a reference under {ingest_dir} (of {len(val)} in the split)")
    per_series = pd.DataFrame.from_records(records)
    metrics, per_device, per_modality = summarize(per_series, class_names, seen_devices, params)
    lesions = pd.DataFrame.from_records(
        lesion_rows, columns=["series_id", "study_id", "device_id", "modality", "volume_mm3", "diameter_mm", "detected"]
    )
    by_size = sensitivity_by_size(lesions, params.validation.lesion_size_bins_mm)
    for bin_row in by_size.itertuples():
        metrics[f"lesion_sensitivity_{bin_row.size_bin.replace(' ', '').replace('>=', 'from')}"] = bin_row.sensitivity

    if findings is not None:
        metrics.update(report_guided_metrics(pd.DataFrame.from_records(guided_records), class_names, seen_devices))
    groups = dict(zip(val.device_id, val.modality))
    metrics["js_intensity_raw"] = mean_pairwise_js(device_histograms(val, "raw_histogram"), groups)
    metrics["js_intensity_harmonized"] = mean_pairwise_js(device_histograms(val, "histogram"), groups)
    metrics["js_features"] = feature_js({d: np.concatenate(f) for d, f in features.items()}, groups)
    metrics["js_features_floor"] = split_half_js(features)  # what patient sampling alone gives
    if reference_model is not None:
        without = feature_js({d: np.concatenate(f) for d, f in features_ref.items()}, groups)
        metrics["js_features_without_dan_pdm"] = without
        metrics["js_features_reduction"] = 1.0 - metrics["js_features"] / without if without > 0 else float("nan")
    gate = _gate(metrics, params)
    metrics["gate_passed"] = int(gate["passed"])
    data_hash = validation_hash(list(per_series["series_id"]))
    gate["validation_data_hash"] = data_hash  # register compares champions only on the same data

    series_means = per_series[[f"dice_{c}" for c in class_names[1:]]].apply(lambda r: nanmean(r.to_numpy()), axis=1)
    order = series_means.fillna(-1.0).sort_values(kind="stable")
    cases = []
    for title, idx in (("best", order.index[-1]), ("worst", order.index[0])):
        sid = per_series.at[idx, "series_id"]
        cases.append(Case(title, sid, float(series_means[idx]), *slices[sid]))
    if len(per_series) == 1:
        cases = cases[:1]

    validation = {
        "validation_data_hash": data_hash,
        "series_ids": sorted(per_series["series_id"]),
        "n_skipped": n_skipped,
        "variant": meta.get("variant"),
        "mirror": mirror,
        "reference_checkpoint": str(reference_model_path) if reference_model_path else None,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    flat = {k: _finite_or_none(float(v)) for k, v in metrics.items()}  # JSON has no NaN: null instead
    write_json(out_dir / "metrics.json", flat)
    for name, table in (("per_device", per_device), ("per_modality", per_modality),
                        ("lesion_detection", by_size), ("lesions", lesions)):
        write_with(out_dir / f"{name}.csv", lambda p, t=table: t.to_csv(p, index=False))
    write_json(out_dir / "validation.json", validation)
    write_json(out_dir / "gate.json", gate)
    write_report(
        out_dir / "report.html",
        plots_dir=out_dir / "plots",
        metrics=metrics,
        per_device=per_device,
        per_modality=per_modality,
        lesion_detection=by_size,
        gate=gate,
        cases=cases,
        class_names=class_names,
        pseudo_summary=_read_json(pseudo_dir / "summary.json") if pseudo_dir else None,
        train_log=_read_csv(train_dir / "train_log.csv") if train_dir else None,
    )
    log.info("validation: dice_mean=%.3f js_features=%.3f gate=%s", metrics["dice_mean"], metrics["js_features"], gate["passed"])
    if not gate["passed"]:
        raise GateFailed(_failure_table(gate))
    return {"metrics": flat, "gate": gate, "validation": validation}


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _read_csv(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path) if path.exists() else None
