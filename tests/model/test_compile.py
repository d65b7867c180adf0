"""torch.compile (inductor): the training step trains like eager, compiled inference predicts like eager, or both fall back."""

import logging

import numpy as np
import pytest
import torch

from medsegllm.model import compiled as compiled_module
from medsegllm.model.compiled import compile_for_inference
from medsegllm.model.inference import predict_volume
from medsegllm.model.network import build_model
from medsegllm.train import distributed
from medsegllm.train.data import build_samples, load_prompts
from medsegllm.train.engine import compute_losses, train_model
from tests.model.synthetic import tiny_params


def _train(stage_dirs, out, compile: bool) -> list[dict]:
    # params.yaml's network (instance norm, alignment, KL; PDM off: its random mixing draws differ when compiled),
    # tiny, in fp32 (inductor's bf16 kernels round differently from oneDNN's); one step per epoch, so rows are steps
    params = tiny_params(channels=[4, 8], norm="instance", dan={"enabled": False}, pdm={"enabled": False}, epochs=2,
                         steps_per_epoch=1, compile=compile, precision="fp32")
    samples = build_samples(stage_dirs["ingest"], stage_dirs["findings"], None, params)
    torch.manual_seed(0)
    model = build_model(params.train, samples.device_ids, *load_prompts(stage_dirs["findings"]))
    rows: list[dict] = []
    train_model(model, samples, params, out, log_callback=rows.append)
    return rows


@pytest.mark.e2e  # inductor compiles C++ kernels: about 50 s cold on 2 idle cores (120 s for 3 steps with PDM, loaded)
def test_compiled_training_matches_eager(stage_dirs, tmp_path) -> None:
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    eager = _train(stage_dirs, tmp_path / "eager", compile=False)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 0
    compiled = _train(stage_dirs, tmp_path / "compiled", compile=True)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # the step really went through dynamo
    torch._dynamo.reset()
    for e, c in zip(eager, compiled, strict=True):
        for key in ("loss", "loss_seg", "loss_align", "loss_kl"):
            assert c[key] == pytest.approx(e[key], rel=1e-4, abs=1e-5), (e["epoch"], key)


def test_compile_falls_back_to_eager_with_a_reason(monkeypatch, caplog) -> None:
    model = build_model(tiny_params(channels=[4, 8]).train, ["dev_a"], np.ones((4, 8), np.float32), np.ones((3, 8), np.float32))
    monkeypatch.setattr(distributed, "compile_blocker", lambda device: "no C++ compiler for inductor (test)")
    with caplog.at_level(logging.WARNING, logger="medsegllm.train.distributed"):
        step = distributed.training_step(model, compute_losses, distributed.Ranks(), torch.device("cpu"), compile=True)
    assert step.outputs is None and step.model is model and not distributed.is_compiled(step)
    assert "no C++ compiler" in caplog.text and "training eagerly" in caplog.text
    monkeypatch.setattr(distributed, "compile_blocker", lambda device: None)
    step = distributed.training_step(model, compute_losses, distributed.Ranks(), torch.device("cpu"), True)
    # the network's forward is compiled (lazily, at the first step); the model object itself is untouched
    assert step.outputs is not None and step.outputs is not model.outputs and step.model is model
    assert distributed.is_compiled(step)
    assert "outputs" not in vars(model)


def _network(**train: object) -> torch.nn.Module:
    params = tiny_params(channels=[4, 8], precision="fp32", **train)
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    return build_model(params.train, ["scanner_a", "scanner_b"], rng.standard_normal((4, 384)).astype(np.float32),
                       rng.standard_normal((3, 384)).astype(np.float32)).eval()


def _volumes() -> list[np.ndarray]:
    """Two slice sizes and slice counts: the last window batch is partial, so predict_volume must pad it."""
    rng = np.random.default_rng(1)
    return [rng.random((40, 37, 5), dtype=np.float32), rng.random((50, 45, 3), dtype=np.float32)]


def test_padded_window_batches_predict_like_unpadded() -> None:
    model = _network()
    eager = [predict_volume(model, v, "scanner_a", batch_size=8) for v in _volumes()]
    model.fixed_batch = 8  # what compile_for_inference sets, without compiling
    calls: list[int] = []
    model.register_forward_pre_hook(lambda _m, args: calls.append(args[0].shape[0]))
    for volume, expected in zip(_volumes(), eager, strict=True):
        np.testing.assert_allclose(predict_volume(model, volume, "scanner_a", batch_size=8), expected, atol=1e-6)
    assert set(calls) == {8}  # 5 slices x 4 windows = 20: batches of 8, 8 and 4 padded to 8


@pytest.mark.e2e  # inductor compiles C++ kernels: about 15 s cold on 2 cores for this tiny network
@pytest.mark.parametrize("network", [{"norm": "instance", "dan": {"enabled": False}},  # params.yaml's
                                     {"norm": "batch", "dan": {"enabled": True, "unseen_stats": "shared"}}],  # the paper's DAN
                         ids=["instance", "dan"])
def test_compiled_inference_matches_eager_with_one_graph(network: dict) -> None:
    """In fp32, so that the check is as tight on a CPU with native bf16 (where "auto" is bf16) as on one without."""
    model = _network(**network)
    eager = [predict_volume(model, v, "scanner_b", batch_size=8, precision="fp32") for v in _volumes()]
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    assert compile_for_inference(model, batch_size=8, precision="fp32") is None
    assert model.fixed_batch == 8
    for volume, expected in zip(_volumes(), eager, strict=True):
        np.testing.assert_allclose(predict_volume(model, volume, "scanner_b", batch_size=8, precision="fp32"), expected,
                                   atol=1e-5)
    # both volumes, their partial batches and an unseen scanner (DAN's shared branch) ran through the one
    # graph built by the warm-up
    predict_volume(model, _volumes()[0], "never_seen", batch_size=8, precision="fp32")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    torch._dynamo.reset()


def test_compiled_inference_refusals(monkeypatch) -> None:
    dan = _network(norm="batch", dan={"enabled": True, "unseen_stats": "test_time"})
    assert "test-time statistics" in compile_for_inference(dan)
    seen = _network(norm="batch", dan={"enabled": True, "seen_stats": "test_time"})
    assert "test-time statistics" in compile_for_inference(seen) and seen.fixed_batch is None
    assert dan.fixed_batch is None and getattr(dan, "_compiled_call_impl", None) is None
    assert compile_for_inference(torch.nn.Linear(2, 2)) == "not a MedSegLLM network"
    monkeypatch.setattr(compiled_module, "compile_blocker", lambda device: "no C++ compiler for inductor (test)")
    model = _network()
    assert compile_for_inference(model) == "no C++ compiler for inductor (test)" and model.fixed_batch is None
