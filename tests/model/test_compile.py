"""train.compile: the training step through torch.compile (inductor) trains like eager, or falls back."""

import logging

import pytest
import torch

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
    monkeypatch.setattr(distributed, "compile_blocker", lambda device: "no C++ compiler for inductor (test)")
    model = torch.nn.Linear(2, 2)
    with caplog.at_level(logging.WARNING, logger="medsegllm.train.distributed"):
        step = distributed.training_step(model, compute_losses, distributed.Ranks(), torch.device("cpu"), compile=True)
    assert not isinstance(step, torch._dynamo.eval_frame.OptimizedModule) and step.model is model
    assert "no C++ compiler" in caplog.text and "training eagerly" in caplog.text
    monkeypatch.setattr(distributed, "compile_blocker", lambda device: None)
    assert isinstance(distributed.training_step(model, compute_losses, distributed.Ranks(), torch.device("cpu"), True),
                      torch._dynamo.eval_frame.OptimizedModule)
