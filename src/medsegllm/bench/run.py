"""`python -m medsegllm.bench`: run every benchmark in one process and write BENCHMARKS.md + results.json."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from medsegllm.bench.demo import read_demo, run_paper_table
from medsegllm.bench.ingest import bench_ingest
from medsegllm.bench.model import bench_cohort, bench_models, median_round
from medsegllm.bench.pipeline import bench_pipeline
from medsegllm.bench.report import render
from medsegllm.bench.reports import bench_reports
from medsegllm.bench.timing import machine_info
from medsegllm.common.io import write_json

if TYPE_CHECKING:
    from medsegllm.config import Params


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m medsegllm.bench",
        description="Ingest, training-step and inference benchmarks against dcm2niix, MONAI LoadImage and a "
                    "plain MONAI loop, side by side in one run; writes BENCHMARKS.md and a JSON copy.",
    )
    parser.add_argument("--slices", type=int, default=200, help="slices of the synthetic CT series")
    parser.add_argument("--size", type=int, default=512, help="rows = columns of each CT slice")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions per ingest/training contender (median)")
    parser.add_argument("--ingest-cohort", type=int, nargs=3, default=(16, 64, 256), metavar=("SERIES", "SLICES", "SIZE"),
                        help="cohort for the whole ingest stage's throughput with 1 and 2 workers")
    parser.add_argument("--train-steps", type=int, default=15, help="training steps per timed repetition")
    parser.add_argument("--batch-size", type=int, default=16, help="training batch size (params.yaml default: 16)")
    parser.add_argument("--train-series", type=int, default=8, help="synthetic in-memory training series")
    parser.add_argument("--train-shape", type=int, nargs=3, default=(80, 80, 30), metavar=("X", "Y", "Z"),
                        help="shape of each training series")
    parser.add_argument("--infer-shape", type=int, nargs=3, default=(80, 80, 30), metavar=("X", "Y", "Z"),
                        help="volume for the inference benchmark")
    parser.add_argument("--infer-reps", type=int, default=9, help="timed inference repetitions (median)")
    parser.add_argument("--model-rounds", type=int, default=3,
                        help="odd number of times the training and inference sections run whole, each in a fresh process "
                             "(1: in this one); the tables show the round with the median engine goal figure")
    parser.add_argument("--channels", type=int, nargs="+", default=None,
                        help="U-Net channels (default: params train.channels)")
    parser.add_argument("--no-pipeline", action="store_true",
                        help="skip the timed `dvc repro` in a fresh copy of the project and use --data-dir's outputs")
    parser.add_argument("--data-dir", type=Path, default=Path("data"),
                        help="with --no-pipeline: the outputs of an earlier `make run` to report")
    parser.add_argument("--reports-backends", nargs="*", default=["rules", "smollm2"],
                        help="description backends to time on the demo cohort's reports (cold and warm cache)")
    parser.add_argument("--seeds", type=int, default=3,
                        help="seeds (params seed, seed+1, ...) of the paper's table retrained on the demo's data; "
                             "each row reports the mean and a 95 %% Student-t interval across them")
    parser.add_argument("--extra-seeds", type=int, default=1,
                        help="seeds for the table's extra rows (batch norm + DAN, no pseudo-label refresh)")
    parser.add_argument("--no-ablations", action="store_true",
                        help="skip the paper's table (retraining every variant per seed: the bulk of the run time)")
    parser.add_argument("--out-md", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--out-json", type=Path, default=Path("benchmarks/results.json"))
    parser.add_argument("--gpu-json", type=Path, default=Path("benchmarks/gpu.json"),
                        help="a GPU run of benchmarks/gpu.sh to report beside this run's figures, if present")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a fresh temp folder)")
    parser.add_argument("--only", choices=["ingest", "models", "pipeline", "demo"], default=None,
                        help="re-measure this section only and keep every other figure of --out-json's run "
                             "(the file says which run each section comes from); models: training and inference, "
                             "measured together because inference runs the models just trained; pipeline: the timed "
                             "`dvc repro` in a fresh copy of the project and the reports benchmark on its cohort; "
                             "demo: --data-dir's `make run` figures and the paper's table retrained on its data")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.extra_seeds < 0:
        parser.error("--seeds must be >= 1 and --extra-seeds >= 0")
    if args.model_rounds < 1 or args.model_rounds % 2 == 0:
        parser.error("--model-rounds must be odd (1, 3, 5, ...): the tables show the median round")
    return args


def devices() -> list[str]:
    """CPU always; CUDA too when present."""
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def run_bench(args: argparse.Namespace, command: str) -> dict:
    """All benchmarks in order; returns the results dict that render() and the JSON file share."""
    from medsegllm.config import load_params

    started = time.perf_counter()
    results: dict = {
        "command": command,
        "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "json_path": str(args.out_json),
    }
    results["ingest"] = measure_ingest(args)
    results["devices"] = measure_models(args)
    params = load_params()
    with tempfile.TemporaryDirectory(prefix="medsegllm-pipeline-", dir=args.workdir) as pipeline_work:
        data_dir = args.data_dir
        if not args.no_pipeline:
            results["pipeline"] = measure_pipeline(Path(pipeline_work), params)
            data_dir = Path(results["pipeline"]["data_dir"])
        results["data_dir"] = str(data_dir)
        results["demo"] = measure_demo(args, data_dir, params)
        results["reports"] = measure_reports(args, data_dir, params)
    gpu_json = Path(args.gpu_json)
    results["gpu_run"] = json.loads(gpu_json.read_text()) if gpu_json.exists() else None
    results["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    results["total_seconds"] = time.perf_counter() - started
    return results


def measure_ingest(args: argparse.Namespace) -> dict:
    """Section 1 in a scratch folder of its own."""
    with tempfile.TemporaryDirectory(prefix="medsegllm-bench-", dir=args.workdir) as work:
        print(f"[bench] ingest: {args.slices} x {args.size}^2 CT series", file=sys.stderr)
        return bench_ingest(args.slices, args.size, args.reps, Path(work), tuple(args.ingest_cohort))


def measure_models(args: argparse.Namespace) -> list[dict]:
    """Sections 2 and 3 per device: the training loops, then inference on the models they trained."""
    from medsegllm.config import Params

    channels = list(args.channels or Params().train.channels)
    results = []
    for device in devices():
        if args.model_rounds == 1:
            print(f"[bench] training + inference on {device}", file=sys.stderr)
            rounds = [bench_models(bench_cohort(args.train_series, tuple(args.train_shape)), args.batch_size,
                                   args.train_steps, args.reps, tuple(args.infer_shape), args.infer_reps, device, channels)]
        else:
            rounds = [_round_in_fresh_process(args, device, channels, i) for i in range(args.model_rounds)]
        results.append(median_round(rounds))
    return results


def _round_in_fresh_process(args: argparse.Namespace, device: str, channels: list[int], index: int) -> dict:
    """One round of sections 2 and 3 in a new interpreter (`bench.model_round`): it compiles from nothing and
    carries no state of an earlier round."""
    print(f"[bench] training + inference on {device}, round {index + 1} of {args.model_rounds} (a fresh process)",
          file=sys.stderr)
    sizes = {"--device": [device], "--batch-size": [args.batch_size], "--train-steps": [args.train_steps],
             "--reps": [args.reps], "--train-series": [args.train_series], "--train-shape": args.train_shape,
             "--infer-shape": args.infer_shape, "--infer-reps": [args.infer_reps], "--channels": channels}
    with tempfile.TemporaryDirectory(prefix="medsegllm-bench-round-", dir=args.workdir) as work:
        out = Path(work) / "round.json"
        command = [sys.executable, "-m", "medsegllm.bench.model_round", "--out", str(out)]
        command += [str(v) for flag, values in sizes.items() for v in (flag, *values)]
        subprocess.run(command, check=True)
        return json.loads(out.read_text())


def remeasure(args: argparse.Namespace, command: str) -> dict:
    """The last full run's results with `args.only` measured again, and that run's provenance noted."""
    results = json.loads(Path(args.out_json).read_text())
    started = time.perf_counter()
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    machine = machine_info()
    if args.only == "ingest":
        results["ingest"] = measure_ingest(args)
    elif args.only == "models":
        results["devices"] = measure_models(args)
    elif args.only == "pipeline":
        from medsegllm.config import load_params

        params = load_params()
        with tempfile.TemporaryDirectory(prefix="medsegllm-pipeline-", dir=args.workdir) as work:
            results["pipeline"] = measure_pipeline(Path(work), params)
            results["reports"] = measure_reports(args, Path(results["pipeline"]["data_dir"]), params)
    else:
        from medsegllm.config import load_params

        results["data_dir"] = str(args.data_dir)
        results["demo"] = measure_demo(args, Path(args.data_dir), load_params())
    earlier = [e for e in results.get("remeasured", []) if e["section"] != args.only]
    results["remeasured"] = [*earlier, {"section": args.only, "command": command, "started_utc": when,
                                        "machine": machine, "seconds": round(time.perf_counter() - started, 1)}]
    return results


def measure_demo(args: argparse.Namespace, data_dir: Path, params: Params) -> dict | None:
    """The demo run's figures and, unless --no-ablations, the paper's table retrained on its data."""
    from medsegllm.common.deid import resolve_salt

    demo = read_demo(data_dir)
    if demo is not None and not args.no_ablations:
        seeds = [params.seed + i for i in range(args.seeds)]
        with tempfile.TemporaryDirectory(prefix="medsegllm-ablation-", dir=args.workdir) as work:
            demo["table"] = run_paper_table(data_dir, params, resolve_salt(params.ingest), Path(work),
                                            seeds, args.extra_seeds)
        demo["goals"] = [demo["goals"][1], *demo["table"]["goals"]]
    return demo


def measure_pipeline(work: Path, params: Params) -> dict:
    """Section 5: `dvc repro` of this project in a fresh copy under `work`, then a no-op rerun."""
    from medsegllm.common.deid import resolve_salt

    print("[bench] pipeline: dvc repro in a fresh copy of the project, then a no-op rerun", file=sys.stderr)
    return bench_pipeline(Path.cwd(), work, {params.ingest.salt_env: resolve_salt(params.ingest)})


def measure_reports(args: argparse.Namespace, data_dir: Path, params: Params) -> dict | None:
    """Section 4 on the cohort of `data_dir`: extraction against the truth, describe per backend."""
    print(f"[bench] reports: extraction vs truth, describe with {args.reports_backends}", file=sys.stderr)
    return bench_reports(data_dir / "cohort", args.reports_backends, params.reports)


def write_outputs(results: dict, out_md: Path, out_json: Path) -> None:
    """JSON first (the source of truth), then the Markdown rendered from it."""
    write_json(Path(out_json), results)
    Path(out_md).write_text(render(results))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    command = "python -m medsegllm.bench " + shlex.join(sys.argv[1:] if argv is None else argv)
    results = remeasure(args, command.strip()) if args.only else run_bench(args, command.strip())
    write_outputs(results, args.out_md, args.out_json)
    print(f"[bench] wrote {args.out_md} and {args.out_json}", file=sys.stderr)
