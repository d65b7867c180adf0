"""The GPU benchmark's code path, run on CPU at toy sizes (its figures are only claimed on a GPU)."""

import math

import torch
from torch.utils.flop_counter import FlopCounterMode

from medsegllm.bench.gpu import run_gpu_bench, training_step
from medsegllm.bench.model import prompts
from medsegllm.bench.report import _gpu
from medsegllm.model.network import build_model
from tests.model.synthetic import tiny_params


def test_flop_count_scales_with_the_batch() -> None:
    """torch's counter sees every conv of forward and backward: twice the batch, twice the FLOPs."""
    cpu = torch.device("cpu")
    small = training_step(tiny_params(batch_size=2), cpu, n_series=2, shape=(32, 32, 4), steps=1)
    large = training_step(tiny_params(batch_size=4), cpu, n_series=2, shape=(32, 32, 4), steps=1)
    assert small["flops_per_step"] > 0
    assert math.isclose(large["flops_per_step"] / small["flops_per_step"], 2.0, rel_tol=0.05)


def test_step_counts_forward_and_backward() -> None:
    """A conv net's backward costs about twice its forward: the step must count about 3 forwards."""
    params = tiny_params(batch_size=2)
    step = training_step(params, torch.device("cpu"), n_series=2, shape=(32, 32, 4), steps=1)["flops_per_step"]
    model = build_model(params.train, ["d0"], *prompts())
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(2, 1, 32, 32), torch.zeros(2, dtype=torch.long))
    assert 2.5 < step / counter.get_total_flops() < 3.6


def test_bench_reports_utilization_and_throughput() -> None:
    result = run_gpu_bench(tiny_params(), matmul_n=128, train_shape=(32, 32, 4), train_steps=2,
                           infer_shape=(40, 40, 3), infer_reps=1)
    assert result["device"] == "cpu" and result["matmul_peak"]["dtype"] == "float32"
    assert result["matmul_peak"]["tflops"] > 0
    train = result["train"]
    assert 0 < train["utilization_compute"] and 0 < train["utilization_engine"]
    assert train["engine"]["samples_per_s"] > 0 and train["compute"]["tflops"] > 0
    assert result["inference"]["slices_per_s"] > 0 and result["inference"]["volume_shape"] == [40, 40, 3]
    assert {g["goal"] for g in result["goals"]} and all(isinstance(g["met"], bool) for g in result["goals"])
    text = "\n".join(_gpu({"machine": {"gpu": None}, "gpu_run": {**result, "params_file": "tiny.yaml"}}))
    assert f"{train['parameters']:,} parameters" in text and "% of peak" in text and "slices/s" in text
