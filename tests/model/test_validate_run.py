"""The validate stage end to end on a tiny ingest folder and a tiny untrained model, plus the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medsegllm.common.io import save_nifti, write_parquet
from medsegllm.config import Params, TrainParams
from medsegllm.knowledge import SEG_CLASSES
from medsegllm.validate.report import Case, render_report
from medsegllm.validate.run import GateFailed, run_validate

# (device, modality, labelled); dev_c and dev_d are held out, so their labelled series validate.
SERIES = [("dev_a", "CT", False), ("dev_b", "MR", False), ("dev_c", "CT", True), ("dev_d", "MR", True), ("dev_d", "MR", True)]


@pytest.fixture(scope="module")
def ingest_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ingest")
    rng = np.random.default_rng(0)
    rows = []
    for i, (device, modality, labelled) in enumerate(SERIES):
        sid = f"s{i:02d}"
        volume = rng.random((24, 20, 4)).astype(np.float32)
        label = np.zeros(volume.shape, np.uint8)
        label[4:14, 4:12, :] = 1
        label[16:20, 12:18, 1:3] = 2
        label[6:9, 6:9, 2] = 3
        save_nifti(root / "volumes" / f"{sid}.nii.gz", volume, np.diag([4.0, 4.0, 5.0, 1.0]))
        if labelled:
            save_nifti(root / "labels" / f"{sid}.nii.gz", label, np.diag([4.0, 4.0, 5.0, 1.0]))
        rows.append(
            {
                "series_id": sid, "device_id": device, "modality": modality, "has_label": labelled,
                "volume_path": f"volumes/{sid}.nii.gz", "label_path": f"labels/{sid}.nii.gz" if labelled else None,
                "spacing": [4.0, 4.0, 5.0], "raw_histogram": rng.random(8).tolist(), "histogram": rng.random(8).tolist(),
            }
        )
    write_parquet(root / "manifest.parquet", pd.DataFrame(rows))
    return root


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    from medsegllm.model.checkpoint import model_meta, save_checkpoint
    from medsegllm.model.network import build_model

    rng = np.random.default_rng(1)
    model = build_model(TrainParams(channels=[4, 8], roi_size=(16, 16)), ["dev_a", "dev_b"], rng.normal(size=(4, 384)), rng.normal(size=(3, 384)))
    return save_checkpoint(tmp_path_factory.mktemp("model") / "model.pt", model, model_meta(model, list(SEG_CLASSES)))


def _params(**gates) -> Params:
    return Params.model_validate(
        {"split": {"holdout_devices": ["dev_c", "dev_d"], "val_fraction": 0.99}, "validate": {"bootstrap": 50, "gates": gates}}
    )


def test_failing_gate_writes_everything_then_raises(ingest_dir: Path, model_path: Path, tmp_path: Path):
    pd.DataFrame({"epoch": [0, 1], "loss": [1.0, 0.5]}).to_csv(tmp_path / "train_log.csv", index=False)
    with pytest.raises(GateFailed, match="dice_mean"):
        run_validate(model_path, ingest_dir, tmp_path / "out", _params(min_dice=0.99), train_dir=tmp_path)
    out = tmp_path / "out"
    metrics = json.loads((out / "metrics.json").read_text())
    assert all(v is None or isinstance(v, (int, float)) for v in metrics.values())
    assert metrics["n_series"] == 3 and metrics["gate_passed"] == 0
    assert metrics["dice_seen_devices"] is None and metrics["dice_holdout_devices"] is not None
    assert metrics["js_intensity_raw"] is not None and metrics["js_features"] is not None
    table = pd.read_csv(out / "per_device.csv")
    assert list(table.columns) == ["device_id", "modality", "holdout", "n", "dice_mean", "ci_low", "ci_high", "dice_lesion"]
    assert table.set_index("device_id").loc["dev_d", "n"] == 2 and table["holdout"].all()
    gate = json.loads((out / "gate.json").read_text())
    assert gate["passed"] is False and {c["name"] for c in gate["checks"]} == {"dice_mean", "js_features", "device_dice_gap"}
    validation = json.loads((out / "validation.json").read_text())
    assert validation["series_ids"] == ["s02", "s03", "s04"] and validation["n_skipped"] == 2
    assert gate["validation_data_hash"] == validation["validation_data_hash"]
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3  # JS chart, overlay, training curve


def test_passing_gate_returns_metrics(ingest_dir: Path, model_path: Path, tmp_path: Path):
    result = run_validate(model_path, ingest_dir, tmp_path, _params(min_dice=0.0, max_js=1.0, max_device_gap=1.0, min_device_series=1))
    assert result["gate"]["passed"] and result["metrics"]["gate_passed"] == 1
    assert 0.0 <= result["metrics"]["dice_mean"] <= 1.0


def test_report_is_self_contained_and_escapes():
    image = np.zeros((8, 8))
    ref = np.zeros((8, 8), np.uint8)
    ref[2:5, 2:5] = 3
    gate = {"passed": True, "checks": [{"name": "dice_mean", "op": ">=", "value": 0.8, "threshold": 0.5, "passed": True}]}
    table = pd.DataFrame({"device_id": ["<dev>"], "n": [1], "dice_mean": [float("nan")]})
    html = render_report(
        metrics={"dice_mean": 0.8, "js_features": 0.1},
        per_device=table,
        per_modality=table,
        gate=gate,
        cases=[Case("best", "abc123", 0.8, image, ref, ref)],
        class_names=SEG_CLASSES,
        pseudo_summary={"dice_fused": 0.7, "nested": {"x": 1}},
    )
    assert "&lt;dev&gt;" in html and "<dev>" not in html and "n/a" in html
    assert "<link" not in html and "<script" not in html and "dice_fused" in html


def test_device_gap_leaves_out_devices_with_too_few_series():
    from medsegllm.validate.run import summarize

    rows = []
    for device, n, dice in [("dev_a", 3, 0.6), ("dev_b", 3, 0.5), ("dev_c", 1, 0.95)]:
        for _ in range(n):
            rows.append({"device_id": device, "modality": "CT", "dice_liver": dice, "dice_kidney": dice,
                         "dice_lesion": np.nan, "hd95_liver": 1.0, "hd95_kidney": 1.0, "hd95_lesion": np.nan,
                         "lesions": 0, "lesions_detected": 0, "ref_lesion": 0, "pred_lesion": 0})
    per_series = pd.DataFrame(rows)
    metrics, per_device, _ = summarize(per_series, SEG_CLASSES, {"dev_a", "dev_b", "dev_c"}, _params(min_device_series=3))
    assert metrics["device_dice_gap"] == pytest.approx(0.1)
    assert set(per_device["device_id"]) == {"dev_a", "dev_b", "dev_c"}  # still reported
    metrics, _, _ = summarize(per_series, SEG_CLASSES, {"dev_a", "dev_b", "dev_c"}, _params(min_device_series=1))
    assert metrics["device_dice_gap"] == pytest.approx(0.45)
