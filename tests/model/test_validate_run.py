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


def _checkpoint(folder: Path, **train) -> Path:
    from medsegllm.model.checkpoint import model_meta, save_checkpoint
    from medsegllm.model.network import build_model

    rng = np.random.default_rng(1)
    model = build_model(TrainParams(channels=[4, 8], roi_size=(16, 16), **train), ["dev_a", "dev_b"], rng.normal(size=(4, 384)), rng.normal(size=(3, 384)))
    return save_checkpoint(folder / "model.pt", model, model_meta(model, list(SEG_CLASSES)))


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("model"))


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
    assert "js_features_floor" in metrics  # NaN (null) when no device has two validation series
    table = pd.read_csv(out / "per_device.csv")
    assert list(table.columns[:8]) == ["device_id", "modality", "holdout", "n", "n_studies", "dice_mean", "ci_low", "ci_high"]
    for c in SEG_CLASSES[1:]:
        assert {f"dice_{c}", f"dice_{c}_ci_low", f"dice_{c}_ci_high"} <= set(table.columns)
    assert (table["ci_low"] <= table["dice_mean"] + 1e-9).all() and (table["dice_mean"] <= table["ci_high"] + 1e-9).all()
    assert table.set_index("device_id").loc["dev_d", "n"] == 2 and table["holdout"].all()
    assert set(pd.read_csv(out / "per_modality.csv")["modality"]) == {"CT", "MR"}
    assert metrics["dice_liver_ci_low"] <= metrics["dice_liver"] <= metrics["dice_liver_ci_high"]
    # each validated series has one 3x3-voxel lesion of 80 mm3 voxels: 720 mm3, 11.1 mm equivalent diameter
    lesions = pd.read_csv(out / "lesions.csv")
    assert len(lesions) == 3 and lesions["diameter_mm"].round(1).eq(11.1).all()
    by_size = pd.read_csv(out / "lesion_detection.csv").set_index("size_bin")
    assert by_size["lesions"].to_dict() == {"0-10 mm": 0, "10-20 mm": 3, "20-30 mm": 0, ">=30 mm": 0}
    assert metrics["lesions_reference"] == 3 and metrics["n_studies"] == 3
    assert metrics["lesion_sensitivity_10-20mm"] == by_size.loc["10-20 mm", "sensitivity"] == lesions["detected"].mean()
    assert metrics["lesion_sensitivity_0-10mm"] is None  # no lesion in the bin: not measured, not 0 or 1
    gate = json.loads((out / "gate.json").read_text())
    assert gate["passed"] is False and {c["name"] for c in gate["checks"]} == {"dice_mean", "js_features", "device_dice_gap"}
    validation = json.loads((out / "validation.json").read_text())
    assert validation["series_ids"] == ["s02", "s03", "s04"] and validation["n_skipped"] == 2
    assert gate["validation_data_hash"] == validation["validation_data_hash"]
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4  # device Dice, JS chart, overlay, training curve
    assert {p.name for p in (out / "plots").iterdir()} == {
        "dice_per_device.png", "js_divergence.png", "best_worst_cases.png", "training_curve.png"}
    assert "not measured" not in html or metrics.get("js_features_without_dan_pdm") is None

    from medsegllm.gates.run import DataGateFailed, run_check

    assert run_check("validate", out)["passed"]
    table.loc[0, "dice_liver_ci_high"] = table.loc[0, "dice_liver"] - 0.1  # a CI that misses its own mean
    table.to_csv(out / "per_device.csv", index=False)
    with pytest.raises(DataGateFailed, match="dice_liver"):
        run_check("validate", out)


def test_passing_gate_returns_metrics(ingest_dir: Path, model_path: Path, tmp_path: Path):
    result = run_validate(model_path, ingest_dir, tmp_path, _params(min_dice=0.0, max_js=1.0, max_device_gap=1.0, min_device_series=1))
    assert result["gate"]["passed"] and result["metrics"]["gate_passed"] == 1
    assert 0.0 <= result["metrics"]["dice_mean"] <= 1.0


@pytest.mark.parametrize("override", [None, False])
def test_validation_mirrors_as_the_model_says_unless_params_override(ingest_dir: Path, model_path: Path, tmp_path: Path,
                                                                     monkeypatch, override) -> None:
    from medsegllm.model import inference

    seen, real = [], inference.predict_volume
    monkeypatch.setattr(inference, "predict_volume", lambda *a, mirror, **k: seen.append(mirror) or real(*a, mirror=mirror, **k))
    params = _params(min_dice=0.0, max_js=1.0, max_device_gap=1.0, min_device_series=1)
    params = params.model_copy(update={"validation": params.validation.model_copy(update={"mirror": override})})
    run_validate(model_path, ingest_dir, tmp_path, params)
    expected = True if override is None else override  # the model's train.inference.mirror is on by default
    assert seen == [expected] * 3 and json.loads((tmp_path / "validation.json").read_text())["mirror"] is expected


def test_reference_checkpoint_without_dan_pdm(ingest_dir: Path, model_path: Path, tmp_path: Path):
    reference = _checkpoint(tmp_path / "ref", dan={"enabled": False}, pdm={"enabled": False})
    params = _params(min_dice=0.0, max_js=1.0, max_device_gap=1.0, min_device_series=1)
    result = run_validate(model_path, ingest_dir, tmp_path / "out", params, reference_model_path=reference)
    metrics = result["metrics"]
    assert metrics["js_features_without_dan_pdm"] is not None
    assert metrics["js_features_without_dan_pdm"] != metrics["js_features"]  # a different network's features
    assert metrics["js_features_reduction"] == pytest.approx(1 - metrics["js_features"] / metrics["js_features_without_dan_pdm"])
    with pytest.raises(ValueError, match="without DAN\\+PDM"):
        run_validate(model_path, ingest_dir, tmp_path / "bad", params, reference_model_path=model_path)


def test_report_is_self_contained_and_escapes():
    image = np.zeros((8, 8))
    ref = np.zeros((8, 8), np.uint8)
    ref[2:5, 2:5] = 3
    gate = {"passed": True, "checks": [{"name": "dice_mean", "op": ">=", "value": 0.8, "threshold": 0.5, "passed": True}]}
    table = pd.DataFrame({"device_id": ["<dev>"], "n": [1], "dice_mean": [float("nan")]})
    table["ci_low"], table["ci_high"], table["holdout"] = 0.1, 0.9, True
    html, figures = render_report(
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
    assert "n/a [0.100, 0.900]" in html  # mean and CI folded into one cell
    assert set(figures) == {"js_divergence", "dice_per_device", "best_worst_cases"}


def test_device_gap_leaves_out_devices_with_too_few_series():
    from medsegllm.validate.run import summarize

    rows = []
    for device, n, dice in [("dev_a", 3, 0.6), ("dev_b", 3, 0.5), ("dev_c", 1, 0.95)]:
        for _ in range(n):
            rows.append({"device_id": device, "modality": "CT", "dice_liver": dice, "dice_kidney": dice,
                         "dice_lesion": np.nan, "hd95_liver": 1.0, "hd95_kidney": 1.0, "hd95_lesion": np.nan,
                         "lesions": 0, "lesions_detected": 0, "ref_lesion": False, "pred_lesion": False})
    per_series = pd.DataFrame(rows)
    metrics, per_device, _ = summarize(per_series, SEG_CLASSES, {"dev_a", "dev_b", "dev_c"}, _params(min_device_series=3))
    assert metrics["device_dice_gap"] == pytest.approx(0.1)
    assert set(per_device["device_id"]) == {"dev_a", "dev_b", "dev_c"}  # still reported
    metrics, _, _ = summarize(per_series, SEG_CLASSES, {"dev_a", "dev_b", "dev_c"}, _params(min_device_series=1))
    assert metrics["device_dice_gap"] == pytest.approx(0.45)


# Run by the test on a copy of the report (the report itself carries no script): after load, write
# what Chromium rendered into the DOM, which --dump-dom then prints.
_PROBE = """<script>
const errors = [];
window.addEventListener('error', (e) => errors.push(String(e.message || e.target && e.target.src || e)), true);
window.addEventListener('load', () => {
  const out = document.createElement('pre'); out.id = 'probe';
  const imgs = [...document.images].map(i => ({id: i.id, w: i.naturalWidth, h: i.naturalHeight, done: i.complete}));
  const tables = Object.fromEntries([...document.querySelectorAll('table')].map(t =>
    [t.id, {rows: t.rows.length, height: t.getBoundingClientRect().height}]));
  out.textContent = JSON.stringify({errors, imgs, tables, h2: [...document.querySelectorAll('h2')].map(h => h.textContent)});
  document.body.appendChild(out);
});
</script>"""


def _chromium() -> str:
    """The Chromium binary; the test is skipped only where it cannot be installed (no apt-get)."""
    import shutil

    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    if shutil.which("apt-get") is None:
        pytest.skip("headless Chromium is not installed and apt-get is unavailable to install it")
    pytest.fail("Chromium is missing: `apt-get install -y chromium` (.ci/run installs it before the tests)")


def test_report_renders_in_headless_chromium(ingest_dir: Path, model_path: Path, tmp_path: Path):
    import subprocess

    pseudo = tmp_path / "pseudo"
    pseudo.mkdir()
    (pseudo / "summary.json").write_text(json.dumps({"dice_fused": 0.81, "dice_teacher": 0.64, "n_scored": 5}))
    pd.DataFrame({"epoch": [0, 1, 2], "loss": [1.0, 0.6, 0.4]}).to_csv(tmp_path / "train_log.csv", index=False)
    params = _params(min_dice=0.0, max_js=1.0, max_device_gap=1.0, min_device_series=1)
    run_validate(model_path, ingest_dir, tmp_path / "out", params, pseudo_dir=pseudo, train_dir=tmp_path)
    page = (tmp_path / "out" / "report.html").read_text()
    assert "<script" not in page
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", _PROBE + "</body>"))
    result = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    rendered = json.loads(html_unescape(dom.split('<pre id="probe">', 1)[1].split("</pre>", 1)[0]))
    assert rendered["errors"] == []  # no script or resource error while loading
    images = {i["id"]: i for i in rendered["imgs"]}
    assert set(images) == {"fig-dice_per_device", "fig-js_divergence", "fig-best_worst_cases", "fig-training_curve"}
    assert all(i["done"] and i["w"] > 100 and i["h"] > 100 for i in images.values())  # decoded PNGs, not broken icons
    tables = rendered["tables"]
    assert tables["per-device"]["rows"] == 1 + 2 and tables["per-device"]["height"] > 0  # header + dev_c, dev_d
    assert tables["per-class"]["rows"] == len(SEG_CLASSES)  # header + 3 classes
    assert tables["lesion-detection"]["rows"] == 1 + 4 and tables["pseudo-labels"]["rows"] == 1 + 3
    assert {"Dice per device", "Cross-device divergence", "Best and worst validation case", "Pseudo-label quality"} <= set(rendered["h2"])
    assert "0.810" in dom and "dice_fused" in dom


def html_unescape(text: str) -> str:
    import html

    return html.unescape(text)


def test_reported_series_are_also_scored_report_guided(ingest_dir: Path, model_path: Path, tmp_path: Path, monkeypatch):
    """With the reports stage's findings, each validation series whose study has a report is scored a second
    time on the report-guided label map (`segment --reports`); the image-only figures stay as they were."""
    import shutil

    from medsegllm.validate import run as validate_run

    ingested = tmp_path / "ingested"
    shutil.copytree(ingest_dir, ingested)
    manifest = pd.read_parquet(ingested / "manifest.parquet")
    manifest["accession_id"] = [f"acc{i}" for i in range(len(manifest))]
    write_parquet(ingested / "manifest.parquet", manifest)
    lesion = {"organ": "liver", "size_mm": 12.0, "subtype": "metastasis", "certainty": "definite"}
    findings = pd.DataFrame({"accession_id": ["acc2", "acc3"], "tumour_present": [True, False],
                             "lesions_json": [json.dumps([lesion]), "[]"]})
    write_parquet(tmp_path / "findings" / "findings.parquet", findings)  # acc4 (series s04) has no report
    calls = {}

    def background_only(probs, image, affine, report, postprocess, fusion):
        calls[len(calls)] = report
        return np.zeros(probs.shape[1:], dtype=np.uint8)

    monkeypatch.setattr(validate_run, "guided_label", background_only)
    params = _params(min_dice=0.0, max_js=1.0, max_device_gap=1.0, min_device_series=1)
    plain = run_validate(model_path, ingested, tmp_path / "plain", params)["metrics"]
    guided = run_validate(model_path, ingested, tmp_path / "guided", params, findings_dir=tmp_path / "findings")["metrics"]
    assert "dice_mean_report_guided" not in plain
    assert sorted(map(json.dumps, calls.values())) == sorted(
        [json.dumps({"lesions": [lesion], "tumour_present": True}), json.dumps({"lesions": [], "tumour_present": False})])
    assert guided["n_series_report_guided"] == 2
    assert guided["dice_mean_report_guided"] == 0.0 and guided["dice_holdout_devices_report_guided"] == 0.0
    assert {k: v for k, v in guided.items() if "report_guided" not in k} == plain
