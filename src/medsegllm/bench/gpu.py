"""GPU figures of issue #7 for one params file (the ~27 M-parameter `configs/gpu.yaml` on a GPU).

The CPU bench's own comparisons (`bench.model.bench_models`) at the file's sizes, on the GPU: our
engine vs the plain fp32 eager MONAI loop on the same network (eager, fp32 and with train.compile),
the method's engine as the file sets it (train.compile on), predict_volume vs MONAI
sliding_window_inference (eager and compiled). Beside them: the card's measured bf16 matrix peak
and each engine's achieved FLOP/s (torch's flop counter) over that peak.

It runs on CPU as well (fp32, small sizes) so the code path is tested where no GPU is lent;
figures are only claimed for the machine named in the output.
`python -m medsegllm.bench.gpu --params configs/gpu.yaml --out benchmarks/gpu.json`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from medsegllm.bench.model import bench_cohort, bench_models, bench_params, prompts
from medsegllm.bench.timing import machine_info, sync, timed
from medsegllm.common.io import write_json
from medsegllm.config import Params, load_params
from medsegllm.model.inference import autocast_for
from medsegllm.model.network import build_model
from medsegllm.train.data import TrainSamples, sample_batch
from medsegllm.train.engine import compute_losses, resolve_device, resolve_precision

UTILIZATION_GOAL = 0.40  # issue #7: the training step's FLOP/s over the card's measured bf16 matrix peak

# the engine rows of `bench_models` whose FLOP/s are rated: the method as the params file sets it, and
# the baseline network with train.compile (the row the engine-speed goal is judged on)
RATED_ROWS = {"medsegllm": "engine_medsegllm", "unet_baseline": "engine_unet_baseline_compiled"}


def matmul_peak_tflops(device: torch.device, n: int, reps: int) -> dict:
    """Measured dense matrix-product rate: bf16 on CUDA (the tensor-core peak), fp32 on CPU."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)

    def products() -> None:
        for _ in range(reps):
            a @ b
        sync(device)

    seconds, _ = timed(products)
    return {"dtype": str(dtype).removeprefix("torch."), "n": n, "reps": reps, "tflops": 2 * n**3 * reps / seconds / 1e12}


def step_flops(params: Params, samples: TrainSamples, device: torch.device) -> int:
    """FLOPs of one forward + backward of `params.train.variant`'s whole loss on one sampled batch.

    Counted eagerly by torch's flop counter: compiling fuses kernels but does the same arithmetic,
    so the count rates the compiled engine's steps too.
    """
    train = params.train
    model = build_model(train, samples.device_ids, *prompts()).to(device).train()
    batch = sample_batch(samples, train.batch_size, tuple(train.roi_size), train.lesion_oversample,
                         np.random.default_rng(params.seed))
    batch = {k: v.to(device) for k, v in batch.items()}
    with FlopCounterMode(display=False) as counter:
        with autocast_for(device, resolve_precision(train.precision, device)):
            loss = compute_losses(model, batch, params)["loss"]
        loss.backward()
    return counter.get_total_flops()


def run_gpu_bench(params: Params, matmul_n: int, train_shape: tuple[int, int, int], n_series: int, train_steps: int,
                  reps: int, infer_shape: tuple[int, int, int], infer_reps: int) -> dict:
    """Matrix peak, then `bench_models` on `params`' network and sizes, then FLOP/s of its engine rows."""
    device = resolve_device(params.train.device)
    print(f"[bench.gpu] {device}: matrix peak", file=sys.stderr)
    peak = matmul_peak_tflops(device, matmul_n, reps=10)
    train = params.train
    print("[bench.gpu] training and inference, ours vs plain MONAI", file=sys.stderr)
    cohort = bench_cohort(n_series, train_shape)
    models = bench_models(cohort, train.batch_size, train_steps, reps, infer_shape, infer_reps, str(device),
                          list(train.channels), base=params)
    print("[bench.gpu] FLOPs per training step", file=sys.stderr)
    rated = {}
    for variant, row in RATED_ROWS.items():
        engine = models["train"][row]
        flops = step_flops(bench_params(variant, train.batch_size, train_steps, 1, str(device), list(train.channels),
                                        base=params), cohort[variant], device)
        tflops = flops * engine["samples_per_s"] / engine["batch_size"] / 1e12
        rated[variant] = {"row": row, "compile": engine["compile"], "precision": engine["precision"],
                          "flops_per_step": flops, "tflops": tflops, "utilization": tflops / peak["tflops"]}
    method = rated["medsegllm"]
    return {
        "machine": machine_info(), "device": str(device), "matmul_peak": peak, "models": models, "flops": rated,
        "sizes": {"train_shape": list(train_shape), "n_series": n_series, "train_steps": train_steps, "reps": reps,
                  "infer_shape": list(infer_shape), "infer_reps": infer_reps},
        "goals": [
            {"goal": f"the method's training step (engine, {method['precision']}"
                     f"{', train.compile' if method['compile'] else ', eager'}) >= {UTILIZATION_GOAL:.0%} of the "
                     "measured matrix peak", "value": method["utilization"],
             "measure": "torch flop counter FLOPs per step x steps/s over the measured peak",
             "met": method["utilization"] >= UTILIZATION_GOAL},
        ],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m medsegllm.bench.gpu", description=__doc__.split("\n")[0])
    parser.add_argument("--params", type=Path, default=Path("configs/gpu.yaml"))
    parser.add_argument("--matmul-n", type=int, default=8192)
    parser.add_argument("--train-shape", type=int, nargs=3, default=(512, 512, 24))
    parser.add_argument("--train-series", type=int, default=8)
    parser.add_argument("--train-steps", type=int, default=10, help="steps per timed repetition (an engine epoch)")
    parser.add_argument("--reps", type=int, default=2, help="timed repetitions after one warm-up (which compiles)")
    parser.add_argument("--infer-shape", type=int, nargs=3, default=(512, 512, 48))
    parser.add_argument("--infer-reps", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/gpu.json"))
    args = parser.parse_args(argv)
    result = run_gpu_bench(load_params(args.params), args.matmul_n, tuple(args.train_shape), args.train_series,
                           args.train_steps, args.reps, tuple(args.infer_shape), args.infer_reps)
    result["params_file"] = str(args.params)
    write_json(args.out, result)
    print(f"[bench.gpu] wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
