"""Smoke test of the benchmark: tiny sizes, checks structure and rendering, never timings."""

from __future__ import annotations

import json
from pathlib import Path

from medsegllm.bench.report import SECTIONS, render
from medsegllm.bench.run import main


def test_bench_tiny_run_writes_every_section(tmp_path: Path) -> None:
    out_md, out_json = tmp_path / "BENCHMARKS.md", tmp_path / "bench" / "results.json"
    main(["--slices", "6", "--size", "48", "--reps", "1", "--train-steps", "1", "--batch-size", "4",
          "--train-series", "2", "--train-shape", "40", "40", "4", "--infer-shape", "40", "40", "3",
          "--infer-reps", "1", "--channels", "8", "16", "--data-dir", str(tmp_path / "no-demo"), "--gpu-json", str(tmp_path / "no-gpu.json"),
          "--out-md", str(out_md), "--out-json", str(out_json)])
    results = json.loads(out_json.read_text())
    assert {"machine", "ingest", "devices", "demo", "command"} <= set(results)
    ingest = results["ingest"]
    assert ingest["series"]["volume_shape"] == [48, 48, 6]
    assert ingest["ours"]["median_s"] > 0 and ingest["monai_loadimage"]["median_s"] > 0
    assert ingest["harmonize"]["median_s"] > 0
    assert [g["goal"] for g in ingest["goals"]]
    cpu = results["devices"][0]
    assert cpu["device"] == "cpu"
    for key in ("monai_loop", "engine_unet_baseline", "engine_medsegllm"):
        assert cpu["train"][key]["samples_per_s"] > 0
    for key in ("monai_sliding_window", "predict_volume_unet_baseline", "predict_volume_medsegllm"):
        assert cpu["inference"][key]["slices_per_s"] > 0
    assert results["demo"] is None
    text = out_md.read_text()
    for section in SECTIONS:
        assert section in text
    assert "No complete demo run found" in text
    assert "No GPU run recorded" in text
    assert render(results) == text


def test_render_reports_demo_run_when_present(tmp_path: Path) -> None:
    from medsegllm.bench.demo import read_demo

    (tmp_path / "model").mkdir()
    (tmp_path / "validation").mkdir()
    (tmp_path / "model" / "train_metrics.json").write_text(json.dumps({"variant": "medsegllm", "parameters": 10, "steps": 2}))
    (tmp_path / "validation" / "metrics.json").write_text(json.dumps({"dice_mean": 0.5, "js_intensity_raw": 0.3,
                                                                       "js_intensity_harmonized": 0.03}))
    (tmp_path / "validation" / "per_device.csv").write_text(
        "device_id,modality,holdout,n,dice_mean,ci_low,ci_high,dice_lesion\ndev_a,CT,False,2,0.5,0.4,0.6,0.1\n")
    demo = read_demo(tmp_path)
    assert demo is not None and abs(demo["js_intensity_reduction"] - 0.9) < 1e-9
    assert demo["goals"][1]["met"] is True
    assert all("mtime_utc" in f for f in demo["files"].values())
    assert demo["pseudo_rounds"] == []
    (tmp_path / "model" / "pseudo_rounds.csv").write_text(
        "epoch,round,n_series,fraction_changed,dice_lesion_tumour,dice_organs,n_scored_tumour\n"
        "0,0,3,0.0,0.30,0.89,2\n8,1,3,0.02,,0.88,0\n")
    from medsegllm.bench.report import _pseudo

    text = "\n".join(_pseudo(read_demo(tmp_path)["pseudo_rounds"]))
    assert "| 0 | 0 | 0.300 | 0.890 | 0.0000 |" in text and "| 1 | 8 | n/a | 0.880 | 0.0200 |" in text
    assert "first teacher alone" not in text  # no pseudolabels/summary.json here
    text = "\n".join(_pseudo(read_demo(tmp_path)["pseudo_rounds"], {"dice_lesion_tumour": 0.0, "dice_organs": 0.85}))
    assert "| first teacher alone, before fusion with the reports | - | 0.000 | 0.850 | - |" in text


def test_ablation_goals_compare_the_same_run_variants() -> None:
    from medsegllm.bench.demo import ablation_goals
    from medsegllm.bench.report import _ablations

    demo = {
        "metrics": {"js_features": 0.1, "dice_holdout_devices": 0.7},
        "ablations": {
            "without DAN+PDM": {"metrics": {"js_features": 0.5, "dice_holdout_devices": 0.6}},
            "plain MONAI U-Net, voxel labels only": {"metrics": {"js_features": 0.6, "dice_holdout_devices": 0.65}},
        },
    }
    js, margin = ablation_goals(demo)
    assert abs(js["value"] - 0.8) < 1e-9 and js["met"] is True
    assert abs(margin["value"] - 0.05) < 1e-9 and margin["met"] is True
    demo["metrics"]["js_features"] = 0.6  # DAN+PDM raising divergence must read as not met
    assert ablation_goals(demo)[0]["met"] is False
    table = "\n".join(_ablations(demo))
    assert "without DAN+PDM" in table and "demo model (make run)" in table
