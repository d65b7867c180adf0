"""Smoke test of the benchmark: tiny sizes, checks structure and rendering, never timings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medsegllm.bench import model as bench_model
from medsegllm.bench import run as bench_run
from medsegllm.bench.report import SECTIONS, render
from medsegllm.bench.run import main
from medsegllm.config import Params
from tests.conftest import ROOT


def test_bench_tiny_run_writes_every_section(tmp_path: Path, monkeypatch) -> None:
    out_md, out_json = tmp_path / "BENCHMARKS.md", tmp_path / "bench" / "results.json"
    main(["--slices", "6", "--size", "48", "--reps", "1", "--ingest-cohort", "3", "4", "32", "--train-steps", "1", "--batch-size", "4",
          "--train-series", "2", "--train-shape", "40", "40", "4", "--infer-shape", "40", "40", "3",
          "--infer-reps", "1", "--model-rounds", "1", "--channels", "8", "16", "--no-pipeline", "--data-dir", str(tmp_path / "no-demo"), "--gpu-json", str(tmp_path / "no-gpu.json"),
          "--out-md", str(out_md), "--out-json", str(out_json)])
    results = json.loads(out_json.read_text())
    assert {"machine", "ingest", "devices", "demo", "command"} <= set(results)
    ingest = results["ingest"]
    assert ingest["series"]["volume_shape"] == [48, 48, 6]
    assert ingest["ours"]["median_s"] > 0 and ingest["monai_loadimage"]["median_s"] > 0
    assert ingest["harmonize"]["median_s"] > 0
    assert [g["goal"] for g in ingest["goals"]]
    workers = ingest["workers"]
    assert workers["n_files"] == 12 and workers["import_s"] > 0 and workers["speedup_2_over_1"] > 0
    assert all(workers[f"workers_{n}"]["series_per_s"] > 0 for n in (1, 2))
    cpu = results["devices"][0]
    assert cpu["device"] == "cpu"
    for key in ("monai_loop", "engine_unet_baseline", "engine_unet_baseline_compiled", "engine_medsegllm"):
        assert cpu["train"][key]["samples_per_s"] > 0
    compiled_train = cpu["train"]["engine_unet_baseline_compiled"]
    assert compiled_train["compile"] and compiled_train["warmup_s"] > compiled_train["median_s"]  # its first epoch compiled
    assert "train.compile" in cpu["train"]["goals"][0]["measure"]
    for key in ("monai_sliding_window", "predict_volume_unet_baseline", "predict_volume_medsegllm",
                "predict_volume_unet_baseline_compiled", "predict_volume_medsegllm_compiled", "predict_volume_medsegllm_mirror"):
        assert cpu["inference"][key]["slices_per_s"] > 0
    compiled = cpu["inference"]
    assert compiled["not_compiled"] == {"medsegllm": None, "unet_baseline": None}
    # the bench compares in the default precision: bf16 on a CPU with native bf16, where kernels round differently
    tolerance = 1e-4 if compiled["precision_auto"] == "fp32" else 0.05
    assert all(compiled["compile_s"][n] > 0 and compiled["compiled_max_abs_diff"][n] < tolerance for n in ("medsegllm", "unet_baseline"))
    assert results["demo"] is None
    text = out_md.read_text()
    assert "with test-time mirroring" in text
    for section in SECTIONS:
        assert section in text
    assert "No complete demo run found" in text
    assert "Not run (`--no-pipeline`)" in text
    assert "No GPU run recorded" in text
    assert render(results) == text and "| 2 | " in text
    assert "predict_volume, medsegllm, compiled (`segment --compile`)" in text and "s of compiling before the first volume (an empty inductor cache" in text

    main(["--only", "ingest", "--slices", "4", "--size", "32", "--reps", "1", "--ingest-cohort", "2", "3", "32",
          "--out-md", str(out_md), "--out-json", str(out_json)])
    again = json.loads(out_json.read_text())
    assert again["ingest"]["series"]["volume_shape"] == [32, 32, 4] and again["ingest"]["workers"]["n_files"] == 6
    assert {k: v for k, v in again.items() if k not in ("ingest", "remeasured")} == {k: v for k, v in results.items() if k != "ingest"}
    assert [e["section"] for e in again["remeasured"]] == ["ingest"]
    assert "re-measured" in out_md.read_text() and render(again) == out_md.read_text()

    monkeypatch.setattr(bench_model, "compile_for_inference", lambda model: "no C++ compiler for inductor (test)")
    main(["--only", "models", "--model-rounds", "1", "--reps", "1", "--train-steps", "1", "--batch-size", "4", "--train-series", "2",
          "--train-shape", "40", "40", "4", "--infer-shape", "40", "40", "2", "--infer-reps", "1", "--channels", "8", "16",
          "--out-md", str(out_md), "--out-json", str(out_json)])
    third = json.loads(out_json.read_text())
    assert third["devices"][0]["inference"]["volume_shape"] == [40, 40, 2] and third["ingest"] == again["ingest"]
    assert [e["section"] for e in third["remeasured"]] == ["ingest", "models"]
    assert "Section `models` re-measured" in out_md.read_text() and render(third) == out_md.read_text()
    assert "unet_baseline was not compiled (no C++ compiler for inductor (test)): its compiled row ran eagerly." in out_md.read_text()
    assert not [g for g in third["devices"][0]["inference"]["goals"] if "compiled" in g["goal"]][0]["met"]

    # the demo section again, from another `make run`'s outputs; the table is skipped here (--no-ablations)
    _write_demo_run(tmp_path / "demo")
    main(["--only", "demo", "--no-ablations", "--data-dir", str(tmp_path / "demo"), "--out-md", str(out_md), "--out-json", str(out_json)])
    fourth = json.loads(out_json.read_text())
    assert third["demo"] is None and fourth["demo"]["js_intensity_reduction"] == pytest.approx(0.9)
    kept = ("demo", "data_dir", "remeasured")
    assert {k: v for k, v in fourth.items() if k not in kept} == {k: v for k, v in third.items() if k not in kept}
    assert fourth["data_dir"] == str(tmp_path / "demo")
    assert [e["section"] for e in fourth["remeasured"]] == ["ingest", "models", "demo"]
    assert "Section `demo` re-measured" in out_md.read_text() and render(fourth) == out_md.read_text()
    # a full run's pipeline section stays, but the demo figures now come from the folder given
    piped = {**fourth, "pipeline": {**json.loads((ROOT / "benchmarks" / "results.json").read_text())["pipeline"],
                                    "data_dir": "/tmp/the-full-runs-copy/data"}}
    assert "Read as-is from the files of an earlier `make run`" in render(piped)
    assert "Produced by this benchmark's own `dvc repro`" in render({**piped, "data_dir": "/tmp/the-full-runs-copy/data"})

    # the timed `dvc repro` again (faked here; tests/code/test_bench_pipeline.py runs the real one), the reports
    # benchmark on its copy's cohort; the demo figures stay those of the folder given before
    timed = {**piped["pipeline"], "data_dir": str(tmp_path / "copy" / "data")}
    reports_on = []
    monkeypatch.setattr(bench_run, "bench_pipeline", lambda project, work, env: timed)
    monkeypatch.setattr(bench_run, "bench_reports", lambda cohort, backends, params: reports_on.append(cohort))
    main(["--only", "pipeline", "--out-md", str(out_md), "--out-json", str(out_json)])
    fifth = json.loads(out_json.read_text())
    assert fifth["pipeline"] == timed and reports_on == [tmp_path / "copy" / "data" / "cohort"]
    kept = ("pipeline", "reports", "remeasured")
    assert {k: v for k, v in fifth.items() if k not in kept} == {k: v for k, v in fourth.items() if k not in kept}
    assert [e["section"] for e in fifth["remeasured"]] == ["ingest", "models", "demo", "pipeline"]
    assert "Section `pipeline` re-measured" in out_md.read_text() and render(fifth) == out_md.read_text()

    # three rounds of the models section: the median round by the engine goal figure is shown, every round named
    rounds = []
    for value, inference in ((1.2, 1.7), (1.6, 1.5), (1.4, 1.9)):
        r = json.loads(json.dumps(results["devices"][0]))
        r["train"]["paired_baseline_compiled_vs_monai"] = r["train"]["goals"][0]["value"] = value
        r["inference"]["paired_baseline_vs_monai"] = inference
        rounds.append(r)
    chosen = bench_model.median_round(rounds)
    assert chosen["rounds"]["chosen"] == 2 and chosen["train"]["goals"][0]["value"] == 1.4
    assert "the median of 3 rounds of this section, which ranged 1.20 to 1.60" in chosen["train"]["goals"][0]["measure"]
    assert [f["inference, default precision"] for f in chosen["rounds"]["figures"]] == [1.7, 1.5, 1.9]
    text = render({**results, "devices": [chosen]})
    assert "engine, train.compile 1.20x / 1.60x / 1.40x." in text and "inference, default precision 1.70x / 1.50x / 1.90x." in text
    assert text.count("The tables show round 3, the median by the engine's train.compile ratio.") == 2
    assert "ran 3 times" not in render(results)  # a single round names no rounds
    with pytest.raises(ValueError, match="odd number of rounds"):
        bench_model.median_round(rounds[:2])
    with pytest.raises(SystemExit):
        main(["--model-rounds", "2"])


def test_model_rounds_each_run_in_a_fresh_process(tmp_path: Path, monkeypatch) -> None:
    """Three real rounds of sections 2 and 3, each its own interpreter (inductor blocked through the
    environment, which the child processes inherit, to keep the test short)."""
    out_md, out_json = tmp_path / "BENCHMARKS.md", tmp_path / "results.json"
    out_json.write_text(json.dumps({**json.loads((ROOT / "benchmarks" / "results.json").read_text()), "remeasured": []}))
    monkeypatch.setenv("CXX", "/nonexistent")  # no C++ compiler: every compiled row runs eagerly, and says so
    main(["--only", "models", "--model-rounds", "3", "--reps", "1", "--train-steps", "1", "--batch-size", "2",
          "--train-series", "2", "--train-shape", "32", "32", "2", "--infer-shape", "32", "32", "2", "--infer-reps", "1",
          "--channels", "4", "8", "--out-md", str(out_md), "--out-json", str(out_json)])
    cpu = json.loads(out_json.read_text())["devices"][0]
    figures = cpu["rounds"]["figures"]
    assert len(figures) == 3 and all(f["engine, train.compile"] > 0 for f in figures)
    compiled = sorted(f["engine, train.compile"] for f in figures)
    assert cpu["train"]["paired_baseline_compiled_vs_monai"] == compiled[1]  # the median round is the one shown
    assert not cpu["train"]["engine_unet_baseline_compiled"]["compile"]  # the child saw the environment
    text = out_md.read_text()
    assert "ran 3 times whole, each time in a fresh process" in text
    assert f"= {cpu['train']['goals'][0]['value']:.3f} | **" in text  # the engine goal's figure to 3 decimals


def test_machine_names_the_cpu_and_remeasured_sections_say_when_it_changed(tmp_path: Path) -> None:
    """A section re-measured on another CPU than the full run's must say so: its ratios may not compare."""
    from medsegllm.bench.report import _machine
    from medsegllm.bench.timing import cpu_model, machine_info

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t: avx512_bf16\n\nprocessor\t: 1\nmodel name\t: AMD EPYC 9R14\n")
    assert cpu_model(cpuinfo) == "AMD EPYC 9R14"
    assert cpu_model(tmp_path / "missing") != ""  # platform's name where there is no /proc/cpuinfo
    full = {**machine_info(), "cpu_model": "Intel Xeon 8488C", "cpu_bf16": True}
    run = {"command": "c", "started_utc": "t", "total_seconds": 1.0, "load_average_end": [0.0] * 3, "machine": full,
           "remeasured": [{"section": "models", "command": "c2", "started_utc": "t2", "seconds": 5.0,
                           "machine": {**full, "cpu_model": "AMD EPYC 9R14"}},
                          {"section": "ingest", "command": "c3", "started_utc": "t3", "seconds": 5.0, "machine": full}]}
    text = "\n".join(_machine(run))
    assert "- CPU: Intel Xeon 8488C (native bf16: yes); CPUs:" in text
    assert "CPU AMD EPYC 9R14 (native bf16: yes), the full run's Intel Xeon 8488C (native bf16: yes): compare" in text
    assert "the same CPU (Intel Xeon 8488C (native bf16: yes))" in text
    older = {k: v for k, v in full.items() if k not in ("cpu_model", "cpu_bf16")}  # results.json from before
    text = "\n".join(_machine({**run, "machine": older, "remeasured": [{**run["remeasured"][0], "machine": older}]}))
    assert "- CPU: model not recorded;" in text and "the full run's model not recorded: compare" in text


def _write_demo_run(data_dir: Path) -> None:
    """The files of a `make run` that the demo section reads, with made-up figures."""
    (data_dir / "model").mkdir(parents=True)
    (data_dir / "validation").mkdir()
    (data_dir / "model" / "train_metrics.json").write_text(json.dumps({"variant": "medsegllm", "parameters": 10, "steps": 2}))
    (data_dir / "validation" / "metrics.json").write_text(json.dumps({"dice_mean": 0.5, "js_intensity_raw": 0.3,
                                                                       "js_intensity_harmonized": 0.03}))
    (data_dir / "validation" / "per_device.csv").write_text(
        "device_id,modality,holdout,n,dice_mean,ci_low,ci_high,dice_lesion\ndev_a,CT,False,2,0.5,0.4,0.6,0.1\n")


def test_render_reports_demo_run_when_present(tmp_path: Path) -> None:
    from medsegllm.bench.demo import read_demo

    _write_demo_run(tmp_path)
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


def test_mean_ci_is_the_student_t_interval() -> None:
    from medsegllm.bench.demo import mean_ci

    stats = mean_ci([0.5, 0.7, None, float("nan")])  # missing seeds are left out, not counted as zero
    half = 12.706204736 * (0.02**0.5) / 2**0.5  # t(0.975, df=1) * sd / sqrt(n)
    assert stats["n"] == 2 and abs(stats["mean"] - 0.6) < 1e-12 and abs(stats["sd"] - 0.02**0.5) < 1e-12
    assert abs(stats["ci_low"] - (0.6 - half)) < 1e-6 and abs(stats["ci_high"] - (0.6 + half)) < 1e-6
    three = mean_ci([1.0, 2.0, 3.0])
    assert abs(three["ci_high"] - (2.0 + 4.302652730 * 1.0 / 3**0.5)) < 1e-6
    one = mean_ci([0.4])
    assert one["mean"] == 0.4 and one["ci_low"] is None and one["ci_high"] is None
    assert mean_ci([])["mean"] is None


def _run(seed: int, **values: float) -> dict:
    return {"seed": seed, "values": values}


def test_table_goals_are_judged_on_the_paired_interval() -> None:
    from medsegllm.bench.demo import table_goals

    rows = {
        "full": {"runs": [_run(1, dice_holdout=0.80, js_travel=0.05, js_features=0.50, dice_holdout_guided=0.9),
                          _run(2, dice_holdout=0.82, js_travel=0.05, js_features=0.40, dice_holdout_guided=0.9),
                          _run(3, dice_holdout=0.81, js_travel=0.06, js_features=0.60)]},
        "unet": {"runs": [_run(1, dice_holdout=0.70, dice_seen=0.85, dice_holdout_guided=0.8),
                          _run(2, dice_holdout=0.72, dice_seen=0.86, dice_holdout_guided=0.7),
                          _run(3, dice_holdout=0.71, dice_seen=0.84, dice_holdout_guided=0.7)]},
        "align": {"runs": [_run(1, js_travel=0.60, js_features=0.55), _run(2, js_travel=0.55, js_features=0.60),
                           _run(3, js_travel=0.58, js_features=0.50)]},
        "unet_aug": {"runs": [_run(1, dice_holdout=0.79), _run(2, dice_holdout=0.83), _run(3, dice_holdout=0.79)]},
        "bn_dan_tt": {"runs": [_run(1, js_travel=0.30)]},  # an extra row: one seed
    }
    margin, drop, beyond_aug, js, js_dan, js_patients, guided = table_goals(rows)
    # report-guided: context, paired on the seeds where both rows have it (seed 3's full run lacks it)
    assert guided["goal"].startswith("context") and abs(guided["value"] - 0.15) < 1e-9 and guided["stats"]["n"] == 2
    # the paper's DAN with own statistics is context, paired with + alignment on its one seed: no interval
    assert js_dan["goal"].startswith("context") and abs(js_dan["value"] - 0.5) < 1e-9 and js_dan["met"] is None
    assert "no interval" in js_dan["note"]
    # the DESIGN bar is judged on the travelling subjects; the validation patients' reduction is context
    assert "travelling subjects" in js["goal"] and js_patients["goal"].startswith("context")
    assert abs(js_patients["value"] - (1 - 0.50 / 0.55 + 1 - 0.40 / 0.60 + 1 - 0.60 / 0.50) / 3) < 1e-9
    assert js_patients["met"] is False
    assert abs(margin["value"] - 0.10) < 1e-9 and margin["stats"]["sd"] < 1e-12 and margin["met"] is True
    assert abs(drop["value"] - 0.14) < 1e-9 and drop["met"] is True
    # paired differences 0.01, -0.01, 0.02: a positive mean whose interval reaches below 0
    assert abs(beyond_aug["value"] - 0.02 / 3) < 1e-9 and beyond_aug["met"] is False
    assert "below the bar" in beyond_aug["note"]
    del rows["unet_aug"]
    assert table_goals(rows)[2]["note"] == "not measured"
    assert js["met"] is True and js["stats"]["ci_low"] >= 0.8
    # the same mean margin with a wide interval reaching below 0.05 is not met
    rows["full"]["runs"][0]["values"]["dice_holdout"] = 0.70
    rows["full"]["runs"][1]["values"]["dice_holdout"] = 0.92
    margin = table_goals(rows)[0]
    assert abs(margin["value"] - 0.10) < 1e-9 and margin["met"] is False and "below the bar" in margin["note"]
    # DAN+PDM raising the divergence reads as not met; one seed has no interval: not measurable
    rows["full"]["runs"] = [_run(1, dice_holdout=0.9, js_travel=0.7, js_features=0.7)]
    margin, _, _, js, _, _, _ = table_goals(rows)
    assert js["value"] < 0 and js["met"] is None and margin["met"] is None and "no interval" in margin["note"]


def _tiny_demo(root: Path):
    """A 12-study synthetic cohort through synth, ingest and reports (rules): the inputs of the paper table."""
    import os

    from medsegllm.config import load_params
    from medsegllm.ingest.run import run_ingest
    from medsegllm.reports.run import run_reports
    from medsegllm.synth.cohort import generate_cohort

    raw = load_params(ROOT / "params.yaml").model_dump(by_alias=True)
    raw["synth"]["n_studies"] = 12
    raw["reports"]["backend"] = "rules"
    raw["pseudolabel"]["teacher_epochs"] = 1
    raw["train"].update(epochs=1, steps_per_epoch=2, batch_size=4, channels=[8, 16], roi_size=[64, 64], num_threads=1,
                        mlflow=True)  # the table must switch tracking off: its variants never reach the tracking store
    raw["validate"]["bootstrap"] = 5
    from medsegllm.config import Params

    params = Params.model_validate(raw)
    salt = os.environ["MEDSEGLLM_SALT"]
    generate_cohort(root / "cohort", params.synth, params.seed)
    run_ingest(root / "cohort" / "dicom", root / "ingested", params.ingest, salt, holdout_devices=params.split.holdout_devices)
    run_reports(root / "cohort" / "reports.jsonl", root / "findings", params.reports, salt)
    return params, salt


def test_paper_table_on_a_tiny_cohort_with_two_seeds(tmp_path: Path, monkeypatch) -> None:
    from medsegllm.bench.demo import COLUMNS, ROWS, mean_ci, run_paper_table
    from medsegllm.bench.report import _paper_table
    from medsegllm.bench.run import parse_args

    assert parse_args([]).seeds == 3 and parse_args(["--seeds", "2"]).seeds == 2
    with pytest.raises(SystemExit):
        parse_args(["--seeds", "0"])
    monkeypatch.chdir(tmp_path)  # a relative MLflow store would land here, never in the checkout
    params, salt = _tiny_demo(tmp_path)
    table = run_paper_table(tmp_path, params, salt, tmp_path / "work", seeds=[5, 6], extra_seeds=1)
    rows = {r["key"]: r for r in table["rows"]}
    assert list(rows) == [r["key"] for r in ROWS]
    for row in ROWS:
        assert rows[row["key"]]["seeds"] == ([5, 6] if row["core"] else [5])
    assert [s["seed"] for s in table["pseudolabel_stages"]] == [5, 6]
    assert len(table["seconds_by_job"]["pseudolabel"]) == 2 and len(table["seconds_by_job"]["bn_dan"]) == 1
    assert all("mlflow_run_id" not in r["train_metrics"] for row in rows.values() for r in row["runs"])
    for row in rows.values():  # every cell is the t-interval of the per-seed values the JSON keeps
        for column in COLUMNS:
            assert row["summary"][column] == mean_ci([r["values"][column] for r in row["runs"]])
        assert all(r["metrics"]["dice_mean"] is not None and r["per_device"] for r in row["runs"])
    unet, full = rows["unet"], rows["full"]
    assert unet["summary"]["dice"]["n"] == 2 and unet["summary"]["dice"]["ci_low"] is not None
    assert unet["summary"]["pseudo_dice_final"]["n"] == 0  # no pseudo-labels in the baseline
    assert full["runs"][0]["train_metrics"]["n_pseudo_series"] > 0
    # the seed reaches training: two seeds of the same row give different weights, hence different Dice
    assert full["runs"][0]["values"]["dice"] != full["runs"][1]["values"]["dice"]
    assert table["js_features"]["after"] == full["summary"]["js_features"]
    assert table["js_features"]["before"] == rows["align"]["summary"]["js_features"]
    assert table["js_travel"]["after"] == full["summary"]["js_travel"]
    assert table["js_travel"]["before"] == rows["align"]["summary"]["js_travel"]
    # every model is measured on the travelling subjects, above their rescan floor
    travel = [(r["values"]["js_travel"], r["values"]["js_travel_retest"]) for row in rows.values() for r in row["runs"]]
    assert all(0 <= floor < js <= 1 for js, floor in travel)
    _assert_oracle_trained_on_the_truth(tmp_path, params, salt, rows["oracle"]["runs"][0])
    holdout = {d["device_id"]: d["holdout"] for d in table["per_device"]}  # held out = never seen in training
    configured = {d for d in params.split.holdout_devices if d in holdout}
    assert table["holdout_devices"] and all(set(h) >= configured for h in table["holdout_devices"])
    assert any(holdout.values()) and all(holdout[d] for d in params.split.holdout_devices if d in holdout)
    assert [g["met"] is None or isinstance(g["met"], bool) for g in table["goals"]] == [True] * 7

    text = "\n".join(_paper_table({"table": table}))
    assert "2 seeds: 5, 6" in text and "| TransUNet 0.88 (mapped to SwinUNETR) |" in text
    assert table["inference_mirror"] is params.train.inference.mirror
    assert ("Every row predicts with test-time mirroring" in text) is params.train.inference.mirror
    assert "| U-Net 0.85 |" in text and "| MedSegLLM 0.91 |" in text
    s = unet["summary"]["dice"]
    assert f"| {unet['name']} | 2 | {s['mean']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}] |" in text
    assert "full method without pseudo-label refresh (fewer seeds, to fit the time budget) | 1 |" in text
    assert "(1 seed)" in text and "| 0.68 |" in text and "| 0.83 |" in text
    assert "4 synthetic bodies imaged by every scanner" in text and "| floor: the full method's feature JS" in text
    assert "Held-out devices (in no model's training data): " in text or "Held-out device sets differ" in text
    assert text.count("| plain MONAI U-Net, voxel labels only | 5 |") == 1  # per-seed rows


def _assert_oracle_trained_on_the_truth(data_dir: Path, params, salt: str, run: dict) -> None:
    """The oracle row's pseudo-labels are the hidden truth at confidence 1, for the full method's series."""
    import pandas as pd

    from medsegllm.common.io import load_nifti
    from medsegllm.common.truth import truth_index, truth_on_grid

    oracle_dir = data_dir / "work" / f"seed_{run['seed']}" / "oracle" / "pseudolabels"
    stage = pd.read_parquet(data_dir / "work" / f"seed_{run['seed']}" / "pseudolabels" / "pseudolabels.parquet")
    table = pd.read_parquet(oracle_dir / "pseudolabels.parquet")
    assert table["series_id"].tolist() == stage["series_id"].tolist()
    assert len(table) == run["train_metrics"]["n_pseudo_series"] > 0
    truth = truth_index(data_dir / "cohort" / "truth", salt)
    for row in table.itertuples(index=False):
        reference = truth_on_grid(truth[row.series_id], params.ingest)
        assert np.array_equal(np.asarray(load_nifti(oracle_dir / row.mask_path)[0]), reference)
        assert (np.asarray(load_nifti(oracle_dir / row.confidence_path)[0]) == 1.0).all()


def test_rows_say_whether_they_train_with_scanner_augmentation() -> None:
    """Each row's name holds whatever params.yaml says: the augmentation is set per row, not inherited."""
    from medsegllm.bench.demo import ROWS, _variant_params
    from medsegllm.config import Params

    rows = {r["key"]: r for r in ROWS}
    for enabled in (True, False):
        base = Params.model_validate({"train": {"scanner_aug": {"enabled": enabled, "noise_max": 0.2}}})
        unet_aug = _variant_params(base, rows["unet_aug"]["overrides"], 1).train
        assert unet_aug.variant == "unet_baseline" and unet_aug.scanner_aug.enabled and unet_aug.scanner_aug.noise_max == 0.2
        for key in ("unet", "pseudo", "align", "swinunetr", "no_scanner_aug", "unet_raw"):
            assert not _variant_params(base, rows[key]["overrides"], 1).train.scanner_aug.enabled, key


def test_refresh_mirrored_row_differs_from_the_full_row_only_in_refresh_mirroring() -> None:
    """The side-by-side of refresh_mirror: the row mirrors its refresh rounds whatever params.yaml says."""
    from medsegllm.bench.demo import ROWS, _variant_params
    from medsegllm.config import Params

    rows = {r["key"]: r for r in ROWS}
    for mirror in (True, False):
        base = Params.model_validate({"train": {"pseudolabels": {"refresh_mirror": mirror}}})
        full = _variant_params(base, rows["full"]["overrides"], 1).train.model_dump()
        mirrored = _variant_params(base, rows["refresh_mirrored"]["overrides"], 1).train.model_dump()
        assert full["pseudolabels"]["refresh_mirror"] is mirror and mirrored["pseudolabels"]["refresh_mirror"] is True
        full["pseudolabels"]["refresh_mirror"] = True
        assert full == mirrored


def test_own_statistics_dan_row_differs_from_the_dan_row_only_in_seen_scanners_statistics() -> None:
    from medsegllm.bench.demo import ROWS, _variant_params
    from medsegllm.config import Params

    rows = {r["key"]: r for r in ROWS}
    base = Params.model_validate({})
    dan = _variant_params(base, rows["bn_dan"]["overrides"], 1).train.model_dump()
    own = _variant_params(base, rows["bn_dan_tt"]["overrides"], 1).train.model_dump()
    assert dan["dan"]["seen_stats"] == "running" and own["dan"]["seen_stats"] == "test_time" and own["dan"]["enabled"]
    dan["dan"]["seen_stats"] = "test_time"
    assert dan == own


def test_rows_plan_runs_the_chosen_rows_on_every_seed_and_renders_means() -> None:
    from medsegllm.bench.demo import plan
    from medsegllm.bench.rows import parse_args, render

    assert plan([1, 2], 0, ["full", "uniform_draw"]) == [
        (1, "pseudolabel"), (1, "full"), (1, "uniform_draw"), (2, "pseudolabel"), (2, "full"), (2, "uniform_draw")]
    assert [k for s, k in plan([1, 2], 1) if s == 2] == ["pseudolabel", "unet", "pseudo", "align", "full", "unet_aug", "swinunetr"]
    with pytest.raises(SystemExit):
        parse_args(["--rows", "no_such_row"])
    runs = {"full": [{"seed": 1, "values": {"dice": 0.5, "dice_holdout": 0.4, "lesions_fp": 10.0}},
                     {"seed": 2, "values": {"dice": 0.6, "dice_holdout": None, "lesions_fp": 20.0}}]}
    text = render(runs)
    assert "| full | 1 | 0.500 | 0.400 | n/a | n/a | n/a | 10.000 |" in text
    assert "| full | mean | 0.550 | 0.400 | n/a | n/a | n/a | 15.000 |" in text


def test_engine_bench_says_when_compile_fell_back(monkeypatch) -> None:
    from medsegllm.bench import model as bench_model
    from medsegllm.train import distributed

    # blocked where the engine decides: the bench reports the engine's own decision (train_model's `compiled`)
    monkeypatch.setattr(distributed, "compile_blocker", lambda device: "no C++ compiler for inductor (test)")
    samples = bench_model.synthetic_samples(2, (40, 40, 4), n_devices=2, pseudo_share=0.0)
    stats, _ = bench_model.bench_engine("unet_baseline", samples, 4, 1, 1, "cpu", [8, 16], compile=True, base=Params())
    assert stats["compile"] is False  # the row trained eagerly, and says so
