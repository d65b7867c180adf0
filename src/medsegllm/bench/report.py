"""Render results.json as BENCHMARKS.md: every figure beside its baseline, with ratio and goal verdict."""

from __future__ import annotations

from medsegllm.bench.reports import render_reports
from medsegllm.bench.timing import ratio

SECTIONS = ("## Machine", "## 1. Ingest", "## 2. Training step", "## 3. Inference", "## 4. Reports",
            "## 5. Whole pipeline (dvc repro)", "## GPU", "## Demo pipeline (make run)")


def _f(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _verdict(met: bool | None) -> str:
    return {True: "**met**", False: "**not met**", None: "not measurable"}[met]


def _goals(goals: list[dict]) -> list[str]:
    lines = ["", "| goal | measured | verdict |", "|---|---|---|"]
    for g in goals:
        value = g.get("value")
        shown = _f(value, g.get("digits", 2))
        if g.get("measure") and value is not None:
            shown = f"{g['measure']} = {shown}"
        note = f" ({g['note']})" if g.get("note") else ""
        lines.append(f"| {g['goal']} | {shown} | {_verdict(g['met'])}{note} |")
    return lines


def _runs(stats: dict | None) -> str:
    return "n/a" if stats is None else ", ".join(f"{t:.3f}" for t in stats["runs_s"])


def _machine(r: dict) -> list[str]:
    m = r["machine"]
    return [
        "## Machine", "",
        f"- command: `{r['command']}`",
        f"- started (UTC): {r['started_utc']}, total wall time {r['total_seconds']:.0f} s",
        f"- platform: {m['platform']} ({m['processor']}), Python {m['python']}, torch {m['torch']}",
        f"- CPU: {_cpu(m)}; CPUs: {m['cpu_count']}, torch threads: {m['torch_threads']}, "
        f"load average at start (1/5/15 min): {', '.join(str(v) for v in m['load_average_1_5_15'])}, "
        f"at end: {', '.join(str(v) for v in r['load_average_end'])}",
        f"- GPU: {m['gpu'] or 'no GPU on this machine'}",
        "",
        "**Noise warning:** the CPU cores were shared with other jobs during this run (see the load average "
        "against the CPU count). Absolute times are noisy; the ratios compare contenders measured back to back "
        "(ingest and inference interleaved per repetition) and are the figures to trust. Each figure is the "
        "median of the listed runs.",
        *_remeasured(r.get("remeasured", []), m),
    ]


def _cpu(m: dict) -> str:
    """Model name and native bf16 (it sets the default precision); runs from before they were recorded say so."""
    if "cpu_model" not in m:
        return "model not recorded"
    return f"{m['cpu_model']} (native bf16: {'yes' if m['cpu_bf16'] else 'no'})"


def _remeasured(entries: list[dict], full_run: dict) -> list[str]:
    """Sections measured again after the full run: when, by which command, on which CPU, under what load."""
    lines = []
    for e in entries:
        m = e["machine"]
        same = m.get("cpu_model") is not None and m.get("cpu_model") == full_run.get("cpu_model")
        cpu = (f"the same CPU ({_cpu(m)})" if same else
               f"CPU {_cpu(m)}, the full run's {_cpu(full_run)}: compare its figures with no other section's")
        lines += ["", f"**Section `{e['section']}` re-measured** after the run above: `{e['command']}`, started "
                  f"{e['started_utc']} ({e['seconds']:.0f} s), {m['cpu_count']} CPUs, {m['platform']}, {cpu}, "
                  f"load average at start {', '.join(str(v) for v in m['load_average_1_5_15'])}. Its figures replace that "
                  "section's; every other section is from the full run, and each section's ratios are from one run."]
    return lines


def _ingest(r: dict) -> list[str]:
    i = r["ingest"]
    s = i["series"]
    ours = i["ours"]["median_s"]
    rows = [
        ("medsegllm ingest read+assemble (scan, decode, sort, stack)", i["ours"]),
        ("dcm2niix -z n -b n (subprocess, incl. NIfTI write)", i["dcm2niix"]),
        ("MONAI LoadImage(reader=PydicomReader) on the folder", i["monai_loadimage"]),
    ]
    lines = [
        "## 1. Ingest", "",
        f"One synthetic CT series: {s['n_slices']} slices of {s['rows']}x{s['columns']} {s['dtype']} "
        f"({s['megabytes']} MiB of pixels), one file per slice, shuffled file names and instance numbers, "
        f"files in the page cache (written {s['write_seconds']} s before). Volume {s['volume_shape']}. "
        "The three readers run interleaved per repetition.", "",
        "| reader | median s | runs (s) | its time / our time |", "|---|---|---|---|",
    ]
    for index, (name, stats) in enumerate(rows):
        if stats is None:
            lines.append(f"| {name} | n/a | not found | n/a |")
            continue
        vs = "baseline (1.00x)" if index == 0 else _x(stats["median_s"] / ours)
        lines.append(f"| {name} | {_f(stats['median_s'], 3)} | {_runs(stats)} | {vs} |")
    ph = i["ours_phases_median_s"]
    lines += ["", f"Paired (per-repetition) ratios, steadier under load: MONAI / ours = {_x(i['paired_ratio_monai_over_ours'])}, "
              f"ours / dcm2niix = {_x(i['paired_ratio_ours_over_dcm2niix'])}. Where our time goes (medians): header scan "
              f"{_f(ph['scan_headers'], 3)} s, decode {_f(ph['decode'], 3)} s (the scan's slice records, no second header parse; native pixel data read "
              f"straight into the sorted volume), build_volume {_f(ph['build_volume'], 3)} s; reading the files' bytes alone: "
              f"{_f(ph.get('read_files'), 3)} s."]
    h = i["harmonize"]
    lines += [
        "", f"Harmonization, reported separately (MONAI Orientation + Spacing to {h['target_spacing']} mm, "
        f"then CT window to [0, 1]; the other readers do not do this): median {_f(h['median_s'], 3)} s "
        f"(runs {_runs(h)}), i.e. {_x(h['median_s'] / ours)} the read+assemble time.",
    ]
    lines += _ingest_workers(i.get("workers"))
    lines += ["", "Targets (the numbers come from the benchmark brief; DESIGN.md asks for the comparison itself):",
              *_goals(i["goals"])]
    return lines


def _ingest_workers(w: dict | None) -> list[str]:
    if not w:
        return []
    lines = [
        "", f"Whole stage (`run_ingest`: scan, decode, sort, harmonize, de-identify, write NIfTI and tables) on a cohort "
        f"of {w['n_series']} synthetic CT series of {w['slices']} slices of {w['size']}x{w['size']} ({w['n_files']} files, "
        f"{w['megabytes']} MiB of pixels), each run into a fresh output folder, on {w['cpu_count']} CPUs:", "",
        "| workers | median s | runs (s) | series/s | files/s | MiB/s |", "|---|---|---|---|---|---|",
    ]
    for workers in (1, 2):
        r = w[f"workers_{workers}"]
        lines.append(f"| {workers} | {_f(r['median_s'], 2)} | {_runs(r)} | {_f(r['series_per_s'], 2)} | "
                     f"{_f(r['files_per_s'], 0)} | {_f(r['mib_per_s'], 1)} |")
    lines += ["", f"2 workers vs 1, paired: {_x(w['speedup_2_over_1'])} (the header scan and the series both run in the "
              f"workers). Not in these figures: the one-time import of the workers' libraries, MONAI among them, "
              f"{_f(w['import_s'], 1)} s in a fresh interpreter, paid once per stage run (by the stage itself with one "
              "worker, by the forkserver the workers fork from with more)."]
    return lines


def _train_table(t: dict) -> list[str]:
    monai = t["monai_loop"]
    rows = [
        ("plain MONAI loop: UNet + DiceCELoss + Adam, fp32 eager, DataLoader", monai),
        ("our engine, unet_baseline (same MONAI UNet), default precision", t["engine_unet_baseline"]),
        ("our engine, unet_baseline, fp32", t["engine_unet_baseline_fp32"]),
        (f"our engine, unet_baseline, train.compile ({t['engine_unet_baseline_compiled']['precision']}; first epoch "
         f"{t['engine_unet_baseline_compiled']['warmup_s']:.0f} s with compiling)", t["engine_unet_baseline_compiled"]),
        ("our engine, medsegllm (DAN + PDM + alignment + KL + pseudo-labels"
         + (", train.compile)" if t["engine_medsegllm"].get("compile") else ")"), t["engine_medsegllm"]),
    ]
    lines = ["| loop | samples/s | median s per rep | runs (s) | params | vs MONAI loop |", "|---|---|---|---|---|---|"]
    for name, stats in rows:
        rel = "baseline" if stats is monai else _x(ratio(stats["samples_per_s"], monai["samples_per_s"]))
        lines.append(f"| {name} | {_f(stats['samples_per_s'], 1)} | {_f(stats['median_s'], 3)} | {_runs(stats)} | "
                     f"{stats['parameters']:,} | {rel} |")
    lines += ["", f"Paired with a MONAI-loop chunk timed right after each of our epochs (steadier under load): "
              f"unet_baseline default precision {_x(t['paired_baseline_vs_monai'])}, fp32 {_x(t['paired_baseline_fp32_vs_monai'])}, "
              f"compiled {_x(t['paired_baseline_compiled_vs_monai'])}."]
    return lines


def _train(r: dict) -> list[str]:
    return ["## 2. Training step", "", *[line for dev in r["devices"] for line in _train_device(dev, f"### {dev['device']}")]]


def _train_device(dev: dict, heading: str) -> list[str]:
    t = dev["train"]
    d = t["data"]
    return [
        heading, "",
        f"Batch {t['monai_loop']['batch_size']}, ROI {d['roi']}, channels {d['channels']}; "
        f"{d['n_series']} in-memory synthetic series of {d['series_shape']} (medsegllm: "
        f"{int(d['medsegllm_pseudo_share'] * 100)} % pseudo-labelled; baselines: all labelled). "
        f"Each rep is {t['monai_loop']['steps_per_rep']} steps including batch preparation; one warm-up rep "
        "(our engine: its first epoch) excluded. The loops run one after another in one process.", "",
        *_train_table(t), *_rounds(dev, "engine"), *_goals(t["goals"]), "",
    ]


def _rounds(dev: dict, section: str) -> list[str]:
    """Every round's paired ratios of one section, when the section ran more than once."""
    rounds = dev.get("rounds")
    if not rounds or len(rounds["figures"]) < 2:
        return []
    names = sorted(name for name in rounds["figures"][0] if name.startswith(section))  # JSON sorts keys too
    values = "; ".join(f"{name} " + " / ".join(_x(f[name]) for f in rounds["figures"]) for name in names)
    return ["", f"This section ran {len(rounds['figures'])} times whole, each time in a fresh process: paired ratios "
                f"per round, {values}. The tables show round {rounds['chosen'] + 1}, the median by the engine's "
                "train.compile ratio."]


def _inference(r: dict) -> list[str]:
    return ["## 3. Inference", "", *[line for dev in r["devices"] for line in _inference_device(dev, f"### {dev['device']}")]]


def _inference_device(dev: dict, heading: str) -> list[str]:
    i = dev["inference"]
    rows = [
        ("plain MONAI sliding_window_inference on the baseline's UNet (same weights)", i["monai_sliding_window"], None),
        ("predict_volume, unet_baseline, fp32", i["predict_volume_unet_baseline_fp32"],
         ratio(i["predict_volume_unet_baseline_fp32"]["slices_per_s"], i["monai_sliding_window"]["slices_per_s"])),
        (f"predict_volume, unet_baseline ({i['precision_auto']}, the default)", i["predict_volume_unet_baseline"], i["baseline_vs_monai"]),
        (f"predict_volume, medsegllm ({i['precision_auto']}, the default)", i["predict_volume_medsegllm"], i["medsegllm_vs_monai"]),
    ]
    if "predict_volume_medsegllm_mirror" in i:
        rows.append(("predict_volume, medsegllm, with test-time mirroring (train.inference.mirror, what validation and "
                     "`segment` run)", i["predict_volume_medsegllm_mirror"],
                     ratio(i["predict_volume_medsegllm_mirror"]["slices_per_s"], i["monai_sliding_window"]["slices_per_s"])))
    compiled = [name for name in ("unet_baseline", "medsegllm") if f"predict_volume_{name}_compiled" in i]
    rows += [(f"predict_volume, {name}, compiled (`segment --compile`)", i[f"predict_volume_{name}_compiled"],
              ratio(i[f"predict_volume_{name}_compiled"]["slices_per_s"], i["monai_sliding_window"]["slices_per_s"]))
             for name in compiled]
    lines = [
        heading, "",
        f"Volume {i['volume_shape']} (X, Y, Z), axial slices, ROI {i['roi']}, overlap 0.25, gaussian, "
        "sw_batch_size 32, softmax included; contenders interleaved per repetition after one warm-up call.", "",
        "| path | slices/s | median s | runs (s) | vs MONAI |", "|---|---|---|---|---|",
    ]
    for name, stats, rel in rows:
        lines.append(f"| {name} | {_f(stats['slices_per_s'], 1)} | {_f(stats['median_s'], 4)} | {_runs(stats)} | "
                     f"{'baseline' if rel is None else _x(rel)} |")
    return lines + [
        "", f"Paired (per-repetition) speed ratios vs MONAI, steadier under load: unet_baseline "
        f"{_x(i['paired_baseline_vs_monai'])} (fp32 {_x(i['paired_baseline_fp32_vs_monai'])}), medsegllm "
        f"{_x(i['paired_medsegllm_vs_monai'])}. The default precision is bf16 where the hardware runs it "
        f"natively (CUDA, AVX-512 BF16 CPUs); its argmax agrees with fp32 on "
        f"{_f(100 * i['argmax_agreement_auto_vs_fp32'], 2)} % of voxels here.",
        *[_compiled_note(i, name) for name in compiled], *_rounds(dev, "inference"), *_goals(i["goals"]), ""]


def _compiled_note(i: dict, name: str) -> str:
    """What compiling costs and when it pays off: the steady-state rows above leave the compile out."""
    if i["not_compiled"][name]:
        return f"\n{name} was not compiled ({i['not_compiled'][name]}): its compiled row ran eagerly."
    even = i[f"{name}_compiled_break_even_slices"]
    return (f"\n{name} compiled: {_f(i['compile_s'][name], 1)} s of compiling before the first volume (an empty inductor "
            f"cache, as on first use), paired {_x(i[f'paired_{name}_compiled_vs_monai'])} vs MONAI once compiled, largest "
            f"probability difference to eager {i['compiled_max_abs_diff'][name]:.1e}; "
            + (f"it pays for itself after about {even:,.0f} slices." if even else "it never pays for itself here."))


def _reports(r: dict) -> list[str]:
    return render_reports(r, _goals)


def _gpu(r: dict) -> list[str]:
    gpu = r["machine"]["gpu"]
    lines = ["## GPU", "", f"This run: measured on {gpu}, see the cuda subsections above." if gpu
             else "This run: no GPU on this machine, CPU figures only."]
    g = r.get("gpu_run")
    if g is None:
        return lines + ["", "No GPU run recorded (`benchmarks/gpu.json`): `bash benchmarks/gpu.sh` on an H100/H200 writes "
                            "it (the ~27 M-parameter `configs/gpu.yaml`); its code path is tested on CPU only."]
    peak, t = g["matmul_peak"], g["models"]["train"]
    lines += [
        "", f"Recorded GPU run (`benchmarks/gpu.json`, `{g['params_file']}`, "
        f"{t['engine_medsegllm']['parameters']:,} parameters) on {g['machine']['gpu'] or g['device']}, "
        f"torch {g['machine']['torch']}: sections 2 and 3 at that file's sizes, then each engine's FLOP/s.", "",
        f"Measured {peak['dtype']} matrix peak ({peak['n']}^3 products): {_f(peak['tflops'], 1)} TFLOP/s.", "",
        "| engine row | FLOPs per step (torch flop counter, forward + backward) | TFLOP/s | % of peak |",
        "|---|---|---|---|",
        *[f"| {name} ({f['precision']}, {'train.compile' if f['compile'] else 'eager'}) | "
          f"{f['flops_per_step'] / 1e9:,.1f} G | {_f(f['tflops'], 1)} | {_f(100 * f['utilization'], 1)} % |"
          for name, f in g["flops"].items()],
        *_goals(g["goals"]), "",
    ]
    where = f"on {g['device']}, `{g['params_file']}`'s network and sizes"
    return (lines + _train_device(g["models"], f"### Training step {where}")
            + _inference_device(g["models"], f"### Inference {where}"))


def _pipeline(r: dict) -> list[str]:
    p = r.get("pipeline")
    lines = ["## 5. Whole pipeline (dvc repro)", ""]
    if p is None:
        return lines + ["Not run (`--no-pipeline`): the demo figures below are read from an earlier run's files."]
    lines += [
        "`dvc repro` of the demo pipeline (`dvc.yaml`, every stage and its data gate) in a fresh copy of the project's "
        "working tree: empty DVC cache, new MLflow store, as a newcomer's `make run` after setup. Then `dvc repro` "
        "again with nothing changed. Per command: wall time, CPU time (its finished worker processes included) and "
        "the peak resident memory of its own process (worker processes' memory not included), as each "
        "`medsegllm` command logs them when it ends (`common/resources.py`).", "",
        "| command | wall s | CPU s | peak memory MiB |", "|---|---|---|---|",
        *[f"| `medsegllm {c['command']}` | {_f(c['wall_s'], 1)} | {_f(c['cpu_s'], 1)} | {_f(c['peak_rss_mib'], 0)} |"
          for c in p["commands"]],
        f"| **dvc repro, from nothing** (the commands above, Python start-up, DVC hashing and caching) | "
        f"**{_f(p['repro_seconds'], 1)}** | | |",
        f"| **dvc repro, nothing changed** ({p['noop_commands_run']} commands run) | **{_f(p['noop_seconds'], 1)}** | | |",
    ]
    return lines + _goals(p["goals"])


def _demo(r: dict) -> list[str]:
    d = r["demo"]
    lines = ["## Demo pipeline (make run)", ""]
    if d is None:
        return lines + [f"No complete demo run found under `{r['data_dir']}` (needs the files of `make run`); nothing reported."]
    m, t = d["metrics"], d["train_metrics"]
    source = (["Produced by this benchmark's own `dvc repro` (section 5), the same pipeline as `make run`:", ""]
              if r.get("pipeline") and r["pipeline"].get("data_dir") == r.get("data_dir") else
              ["Read as-is from the files of an earlier `make run` (not produced by this benchmark):", "",
               *[f"- `{f['path']}` (modified {f['mtime_utc']})" for _, f in sorted(d["files"].items())], ""])
    lines += [
        *source,
        f"Training: variant {t.get('variant')}, {t.get('parameters'):,} parameters, {t.get('steps')} steps, "
        f"{_f(t.get('step_seconds'), 3)} s/step, {_f(t.get('seconds'), 1)} s total.", "",
        "| metric | value |", "|---|---|",
    ]
    keys = ("dice_mean", "dice_mean_ci_low", "dice_mean_ci_high", "dice_liver", "dice_kidney", "dice_lesion",
            "dice_seen_devices", "dice_holdout_devices", "device_dice_gap", "hd95_mean", "js_intensity_raw",
            "js_intensity_harmonized", "js_features", "js_features_floor", "dice_mean_report_guided",
            "dice_lesion_report_guided", "dice_holdout_devices_report_guided", "n_series_report_guided", "gate_passed")
    lines += [f"| {k} | {_f(m.get(k), 3)} |" for k in keys if k in m]
    lines += ["", "Per device (validation/per_device.csv):", "",
              "| device | modality | holdout | n | Dice mean | 95 % CI | Dice lesion |", "|---|---|---|---|---|---|---|"]
    for row in d["per_device"]:
        lines.append(f"| {row['device_id']} | {row['modality']} | {row['holdout']} | {row['n']} | "
                     f"{float(row['dice_mean']):.3f} | {float(row['ci_low']):.3f}-{float(row['ci_high']):.3f} | "
                     f"{float(row['dice_lesion']):.3f} |")
    lines += _pseudo(d.get("pseudo_rounds") or [], d.get("pseudo_teacher"))
    lines += _paper_table(d)
    lines += _goals(d["goals"])
    return lines


def _pseudo(rounds: list[dict], teacher: dict | None = None) -> list[str]:
    """Pseudo-label Dice against the demo's hidden truth, per EMA-teacher refresh round (model/pseudo_rounds.csv)."""
    if not rounds:
        return []
    lines = ["", "Pseudo-labels against the hidden truth per refresh round (round 0: the pseudolabel stage; "
                 "the paper reports 0.72 -> 0.83):", "",
             "| round | epoch | lesion Dice, tumour studies | organ Dice | voxels changed |", "|---|---|---|---|---|"]
    if teacher is not None:
        lines.append(f"| first teacher alone, before fusion with the reports | - | "
                     f"{_f(teacher['dice_lesion_tumour'], 3)} | {_f(teacher['dice_organs'], 3)} | - |")
    for r in rounds:
        lines.append(f"| {r['round']} | {r['epoch']} | {_f(_num(r.get('dice_lesion_tumour')), 3)} | "
                     f"{_f(_num(r.get('dice_organs')), 3)} | {_f(_num(r.get('fraction_changed')), 4)} |")
    return lines


def _num(value: str | None) -> float | None:
    return float(value) if value not in (None, "") else None


def _ci(stats: dict | None, digits: int = 3) -> str:
    """mean [95 % CI] across seeds; one seed has no interval."""
    if not stats or not stats["n"]:
        return "-"
    if stats["ci_low"] is None:
        return f"{stats['mean']:.{digits}f} (1 seed)"
    return f"{stats['mean']:.{digits}f} [{stats['ci_low']:.{digits}f}, {stats['ci_high']:.{digits}f}]"


TABLE_COLUMNS = (("dice", "Dice overall"), ("dice_ct", "CT"), ("dice_mr", "MR"), ("dice_seen", "seen devices"),
                 ("dice_holdout", "held-out devices"), ("dice_liver", "liver"), ("dice_kidney", "kidney"),
                 ("dice_lesion", "lesion Dice"), ("hd95", "HD95 mm"), ("js_features", "feature JS, validation patients"),
                 ("js_travel", "feature JS, travelling subjects"),
                 ("pseudo_dice_final", "pseudo-label lesion Dice, final"), ("lesions_fp", "false-positive lesions"),
                 ("dice_guided", "Dice, report-guided"), ("dice_holdout_guided", "held-out devices, report-guided"),
                 ("dice_lesion_guided", "lesion Dice, report-guided"))


def _paper_table(d: dict) -> list[str]:
    """The paper's table: variants retrained on the demo's data per seed, mean and 95 % t-interval, paper beside."""
    t = d.get("table")
    if not t:
        return ["", "No paper table in this run (`--no-ablations`): the label-efficiency and DAN+PDM bars are not assessed."]
    seeds = t["seeds"]
    paper = t["paper"]
    lines = [
        "", f"### The paper's table on the demo cohort ({len(seeds)} seeds: {', '.join(map(str, seeds))})", "",
        "Every variant retrained by this benchmark on the demo's ingested data and findings at its 10 % voxel "
        "labels, validated by the same code against the hidden truth. Per seed, `seed` sets weight init, batch "
        "sampling, augmentation and the hash split of the seen devices' unlabelled series (held-out devices are "
        "always validation, labelled studies always train), and the pseudolabel stage is rerun for that split. "
        "Each cell: mean over seeds [95 % Student-t interval, not clipped to [0, 1]; with 3 seeds t = 4.30 "
        "times the standard error, so intervals are wide]. The paper's figures come from its own 800-scan "
        "cohort: they stand beside ours, they are not reproduced by this run. Dice overall is the mean of the "
        "liver, kidney and lesion Dice over the validation series, a series' lesion Dice counting only where its "
        "reference or its prediction has a lesion: a false-positive lesion in a lesion-free series adds a lesion "
        "Dice of 0 to the mean, so the liver and kidney columns show organ quality apart from lesion errors. HD95: "
        "the 95th-percentile Hausdorff distance in mm (MONAI), averaged over the series and the classes both the "
        "prediction and the reference have (a class missing on either side is left out, so a missed lesion "
        "does not raise it). The report-guided columns score the same models as `segment --reports` labels a "
        "reported study: the report's lesions placed over the row's organs by the pseudo-label fusion, over the "
        "validation series whose study has a report. They show what a hospital with reports gets; the model "
        "itself is the image-only columns, and the paper's figures compare those."
        + {True: " Every row predicts with test-time mirroring (`train.inference.mirror`: the mean softmax of the volume "
                 "and its x, y and x+y mirror images), its pseudo-label teachers too.",
           False: " No row predicts with test-time mirroring (`train.inference.mirror` off)."}.get(t.get("inference_mirror"), ""),
        "",
        "| model | seeds | " + " | ".join(name for _, name in TABLE_COLUMNS) + " | paper Dice |",
        "|---|---|" + "---|" * (len(TABLE_COLUMNS) + 1),
    ]
    for row in t["rows"]:
        paper_dice = row.get("paper_dice")
        shown = "-" if not paper_dice else f"{paper_dice[0]} {paper_dice[1]:.2f}"
        if row["key"] == "swinunetr" and paper_dice:
            shown += " (mapped to SwinUNETR)"
        fewer = "" if len(row["seeds"]) == len(seeds) else " (fewer seeds, to fit the time budget)"
        lines.append(f"| {row['name']}{fewer} | {len(row['seeds'])} | "
                     + " | ".join(_ci(row["summary"][c], 1 if c in ("lesions_fp", "hd95") else 3) for c, _ in TABLE_COLUMNS)
                     + f" | {shown} |")
    held_out = t["holdout_devices"]
    lines += ["", "Held-out devices (in no model's training data): " + ", ".join(held_out[0]) if len(held_out) == 1 else
              f"**Held-out device sets differ between runs** (a model's held-out devices are those absent from its "
              f"training data): {'; '.join(', '.join(h) for h in held_out)}. Compare the per-device table."]
    js, pd_ = t["js_features"], t["pseudo_dice"]
    travel = t.get("js_travel") or {}
    final = pd_["final"].get("full")
    lines += [
        "", "Before/after figures beside the paper's. Feature JS: the mean pairwise Jensen-Shannon divergence "
        "(bits) between devices of one modality, of per-slice bottleneck features on 4 principal components. "
        "On the validation patients each device shows its own 1-5 patients, so the figure is mostly patient "
        "sampling. The travelling subjects (`bench/travelling.py`) are "
        f"{travel.get('subjects')} synthetic bodies imaged by every scanner under one protocol, harmonized as ingest "
        "does, so only the scanners differ; each scanner's rescan of the same bodies gives the floor.", "",
        "| figure | ours | paper |", "|---|---|---|",
        f"| feature JS across devices, travelling subjects, before: + alignment, no DAN/PDM/scanner augmentation | "
        f"{_ci(travel.get('before'))} | {paper['js_features']['before']:.2f} |",
        f"| feature JS across devices, travelling subjects, after: full method | {_ci(travel.get('after'))} | "
        f"{paper['js_features']['after']:.2f} |",
        f"| floor: the full method's feature JS between each scanner's two sessions of the same subjects | "
        f"{_ci(travel.get('retest'))} | - |",
        f"| feature JS across devices, validation patients, before | {_ci(js['before'])} | - |",
        f"| feature JS across devices, validation patients, after | {_ci(js['after'])} | - |",
        f"| pseudo-label lesion Dice (tumour studies), before: pseudolabel stage | {_ci(pd_['round0'])} | "
        f"{paper['pseudo_dice']['before']:.2f} |",
        f"| pseudo-label lesion Dice (tumour studies), after: last refresh round, full method | {_ci(final)} | "
        f"{paper['pseudo_dice']['after']:.2f} |",
    ]
    if t["per_device"]:
        lines += ["", "Per device, full method vs plain U-Net (mean Dice over seeds; the seen devices' validation "
                      "series change with the seed):", "",
                  "| device | modality | held out | validation series (mean) | full method | U-Net | full - U-Net |",
                  "|---|---|---|---|---|---|---|"]
        for dev in t["per_device"]:
            f, u = dev["full"]["mean"], dev["unet"]["mean"]
            lines.append(f"| {dev['device_id']} | {dev['modality']} | {'yes' if dev['holdout'] else 'no'} | "
                         f"{dev['n_mean']:.1f} | {_f(f, 3)} | {_f(u, 3)} | "
                         f"{_f(None if f is None or u is None else f - u, 3)} |")
    lines += ["", "Per seed (every number is in the JSON copy):", "",
              "| model | seed | Dice overall | held-out devices | feature JS, validation patients | "
              "feature JS, travelling subjects (rescan floor) | train s |", "|---|---|---|---|---|---|---|"]
    for row in t["rows"]:
        for run in row["runs"]:
            v = run["values"]
            lines.append(f"| {row['name']} | {run['seed']} | {_f(v['dice'], 3)} | {_f(v['dice_holdout'], 3)} | "
                         f"{_f(v['js_features'], 3)} | {_f(v.get('js_travel'), 3)} ({_f(v.get('js_travel_retest'), 3)}) | "
                         f"{_f(run['train_seconds'], 0)} |")
    return lines


def render(results: dict) -> str:
    """The whole BENCHMARKS.md."""
    lines = ["# Benchmarks", "",
             "Generated by `python -m medsegllm.bench` (`make bench`); machine-readable copy: "
             f"`{results['json_path']}`. Do not edit by hand.", ""]
    for part in (_machine, _ingest, _train, _inference, _reports, _pipeline, _gpu, _demo):
        lines += part(results) + [""]
    return "\n".join(lines).rstrip() + "\n"
