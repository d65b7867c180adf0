"""GPU figures of issue #7 for one params file (the ~27 M-parameter `configs/gpu.yaml` on a GPU):
the card's measured bf16 matrix peak, the training step's achieved FLOP/s (torch's flop counter)
over that peak, the engine's samples/s, and inference throughput on 512x512 slices.

It runs on CPU as well (fp32, small sizes) so the code path is tested where no GPU is lent;
figures are only claimed for the machine named in the output.
`python -m medsegllm.bench.gpu --params configs/gpu.yaml --out benchmarks/gpu.json`.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from medsegllm.bench.model import prompts, synthetic_samples
from medsegllm.bench.timing import machine_info, summary, sync, timed
from medsegllm.common.io import write_json
from medsegllm.config import Params, load_params
from medsegllm.model.inference import predict_volume
from medsegllm.model.network import build_model
from medsegllm.train.data import sample_batch
from medsegllm.train.engine import compute_losses, resolve_device


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


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def training_step(params: Params, device: torch.device, n_series: int, shape: tuple[int, int, int], steps: int) -> dict:
    """FLOPs of one forward+backward of the full loss, counted by torch; then `steps` timed steps.

    Two timings: `compute` feeds batches already on the device (the model's own speed), `engine`
    adds the engine's numpy batch sampling and host-to-device copy per step, as in `train_model`.
    """
    samples = synthetic_samples(n_series, shape, n_devices=4, pseudo_share=0.75)
    model = build_model(params.train, samples.device_ids, *prompts()).to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.train.lr)
    rng = np.random.default_rng(params.seed)
    train = params.train

    def draw() -> dict[str, torch.Tensor]:
        batch = sample_batch(samples, train.batch_size, tuple(train.roi_size), train.lesion_oversample, rng)
        return {k: v.to(device, non_blocking=True) for k, v in batch.items()}

    def step(batch: dict[str, torch.Tensor]) -> None:
        with _autocast(device):
            loss = compute_losses(model, batch, params)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    fixed = draw()
    with FlopCounterMode(display=False) as counter:
        step(fixed)
    flops = counter.get_total_flops()
    for _ in range(2):
        step(fixed)
    sync(device)

    def compute() -> None:
        for _ in range(steps):
            step(fixed)
        sync(device)

    def engine() -> None:
        for _ in range(steps):
            step(draw())
        sync(device)

    compute_s, _ = timed(compute)
    engine_s, _ = timed(engine)
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "batch_size": train.batch_size, "roi": list(train.roi_size), "steps": steps,
        "flops_per_step": flops,
        "compute": {"seconds": compute_s, "samples_per_s": steps * train.batch_size / compute_s,
                    "tflops": flops * steps / compute_s / 1e12},
        "engine": {"seconds": engine_s, "samples_per_s": steps * train.batch_size / engine_s,
                   "tflops": flops * steps / engine_s / 1e12},
    }


def inference(params: Params, device: torch.device, shape: tuple[int, int, int], reps: int) -> dict:
    """`predict_volume` (sliding window over axial slices) on a random volume of `shape`."""
    samples_devices = ["bench_device_0"]
    model = build_model(params.train, samples_devices, *prompts()).to(device)
    volume = np.random.default_rng(1).random(shape, dtype=np.float32)
    predict_volume(model, volume, samples_devices[0])
    sync(device)
    times = [timed(lambda: predict_volume(model, volume, samples_devices[0]))[0] for _ in range(reps)]
    stats = summary(times)
    return {"volume_shape": list(shape), **stats, "slices_per_s": shape[2] / stats["median_s"],
            "parameters": sum(p.numel() for p in model.parameters())}


def run_gpu_bench(params: Params, matmul_n: int, train_shape: tuple[int, int, int], train_steps: int,
                  infer_shape: tuple[int, int, int], infer_reps: int) -> dict:
    device = resolve_device(params.train.device)
    print(f"[bench.gpu] {device}: matrix peak", file=sys.stderr)
    peak = matmul_peak_tflops(device, matmul_n, reps=10)
    print("[bench.gpu] training step", file=sys.stderr)
    train = training_step(params, device, n_series=8, shape=train_shape, steps=train_steps)
    train["utilization_compute"] = train["compute"]["tflops"] / peak["tflops"]
    train["utilization_engine"] = train["engine"]["tflops"] / peak["tflops"]
    print("[bench.gpu] inference", file=sys.stderr)
    infer = inference(params, device, infer_shape, infer_reps)
    return {
        "machine": machine_info(), "device": str(device), "matmul_peak": peak, "train": train, "inference": infer,
        "goals": [
            {"goal": "training step >= 40 % of the measured matrix peak", "value": train["utilization_engine"],
             "met": train["utilization_engine"] >= 0.40},
            {"goal": ">= 200 slices/s on 512x512 (2D model)", "value": infer["slices_per_s"],
             "met": infer["slices_per_s"] >= 200},
        ],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m medsegllm.bench.gpu", description=__doc__.split("\n")[0])
    parser.add_argument("--params", type=Path, default=Path("configs/gpu.yaml"))
    parser.add_argument("--matmul-n", type=int, default=8192)
    parser.add_argument("--train-shape", type=int, nargs=3, default=(512, 512, 24))
    parser.add_argument("--train-steps", type=int, default=30)
    parser.add_argument("--infer-shape", type=int, nargs=3, default=(512, 512, 300))
    parser.add_argument("--infer-reps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/gpu.json"))
    args = parser.parse_args(argv)
    result = run_gpu_bench(load_params(args.params), args.matmul_n, tuple(args.train_shape), args.train_steps,
                           tuple(args.infer_shape), args.infer_reps)
    result["params_file"] = str(args.params)
    write_json(args.out, result)
    print(f"[bench.gpu] wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
