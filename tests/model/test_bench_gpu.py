"""The GPU benchmark's code path, run on CPU at toy sizes (its figures are only claimed on a GPU)."""

import math

import torch
from torch.utils.flop_counter import FlopCounterMode

from medsegllm.bench.gpu import run_gpu_bench, step_flops
from medsegllm.bench.model import prompts, synthetic_samples
from medsegllm.bench.report import _gpu
from medsegllm.model import compiled
from medsegllm.model.network import build_model
from medsegllm.train import distributed
from tests.model.synthetic import tiny_params

CPU = torch.device("cpu")


def _samples():
    return synthetic_samples(2, (32, 32, 4), n_devices=2, pseudo_share=0.5)


def test_flop_count_scales_with_the_batch() -> None:
    """torch's counter sees every conv of forward and backward: twice the batch, twice the FLOPs."""
    small = step_flops(tiny_params(batch_size=2), _samples(), CPU)
    large = step_flops(tiny_params(batch_size=4), _samples(), CPU)
    assert small > 0
    assert math.isclose(large / small, 2.0, rel_tol=0.05)


def test_step_counts_forward_and_backward() -> None:
    """A conv net's backward costs about twice its forward: the step must count about 3 forwards."""
    params = tiny_params(batch_size=2)
    step = step_flops(params, _samples(), CPU)
    model = build_model(params.train, ["d0"], *prompts())
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(2, 1, 32, 32), torch.zeros(2, dtype=torch.long))
    assert 2.5 < step / counter.get_total_flops() < 3.6


def test_bench_rates_the_engine_rows_it_timed(monkeypatch) -> None:
    """The whole run at toy sizes: bench_models on the params file's network, then FLOP/s of its engine rows.
    Inductor is blocked (its compiled paths have tests of their own): the rows then say they ran eagerly."""
    for module in (distributed, compiled):
        monkeypatch.setattr(module, "compile_blocker", lambda device: "no C++ compiler for inductor (test)")
    params = tiny_params(compile=True)
    result = run_gpu_bench(params, matmul_n=128, train_shape=(40, 40, 4), n_series=4, train_steps=1, reps=1,
                           infer_shape=(40, 40, 3), infer_reps=1)
    assert result["device"] == "cpu" and result["matmul_peak"]["dtype"] == "float32" and result["matmul_peak"]["tflops"] > 0
    train = result["models"]["train"]
    assert train["data"]["roi"] == [32, 32] and train["data"]["channels"] == [8, 16, 32]  # the params file's sizes
    method, baseline = result["flops"]["medsegllm"], result["flops"]["unet_baseline"]
    assert method["compile"] is False and baseline["row"] == "engine_unet_baseline_compiled"
    assert method["flops_per_step"] > baseline["flops_per_step"] > 0  # the text head and alignment cost FLOPs
    engine = train["engine_medsegllm"]
    assert math.isclose(method["tflops"], method["flops_per_step"] * engine["samples_per_s"] / 4 / 1e12)
    assert math.isclose(method["utilization"], method["tflops"] / result["matmul_peak"]["tflops"])
    assert result["models"]["inference"]["predict_volume_medsegllm"]["slices_per_s"] > 0
    assert all(isinstance(g["met"], bool) for g in result["goals"]) and "eager" in result["goals"][0]["goal"]
    text = "\n".join(_gpu({"machine": {"gpu": None}, "gpu_run": {**result, "params_file": "tiny.yaml"}}))
    assert f"{engine['parameters']:,} parameters" in text and "% of peak" in text and "slices/s" in text
    assert "### Training step on cpu" in text and "### Inference on cpu" in text and "vs MONAI" in text
