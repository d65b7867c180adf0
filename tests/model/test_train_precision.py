"""train.precision: auto picks bf16 only where it is native; bf16 training tracks fp32 on a tiny case."""

import math

import pydantic
import pytest
import torch

from medsegllm.bench.model import bench_params, prompts, synthetic_samples
from medsegllm.config import Params
from medsegllm.model.network import build_model
from medsegllm.train import engine
from medsegllm.train.engine import resolve_precision, train_model


@pytest.mark.parametrize(("native", "expected"), [(False, "fp32"), (True, "bf16")])
def test_auto_precision_follows_native_bf16(monkeypatch, native, expected) -> None:
    monkeypatch.setattr(engine, "bf16_supported", lambda device: native)
    assert resolve_precision("auto", torch.device("cpu")) == expected
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"  # explicit choices are kept
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"


def test_precision_is_validated() -> None:
    assert Params().train.precision == "auto"
    with pytest.raises(pydantic.ValidationError):
        Params.model_validate({"train": {"precision": "fp16"}})


def _train(tmp_path, precision: str) -> tuple[list[dict], dict, torch.nn.Module]:
    samples = synthetic_samples(2, (40, 40, 6), n_devices=2, pseudo_share=0.0)
    params = bench_params("unet_baseline", 4, 3, 2, "cpu", [4, 8], precision, base=Params())
    params.train.roi_size = (32, 32)
    torch.manual_seed(0)
    model = build_model(params.train, samples.device_ids, *prompts())
    rows: list[dict] = []
    result = train_model(model, samples, params, tmp_path / precision, log_callback=rows.append)
    return rows, result, model


def test_bf16_training_tracks_fp32(tmp_path) -> None:
    rows32, result32, model32 = _train(tmp_path, "fp32")
    rows16, result16, model16 = _train(tmp_path, "bf16")
    assert (result32["precision"], result16["precision"]) == ("fp32", "bf16")
    assert all(p.dtype == torch.float32 for p in model16.parameters())  # autocast: the weights stay fp32
    assert all(p.is_contiguous() for p in model16.parameters())  # handed back in the default layout
    for a, b in zip(rows32, rows16, strict=True):
        assert math.isfinite(b["loss"])
        assert b["loss"] == pytest.approx(a["loss"], rel=0.05)
    assert rows16[0]["loss"] != rows32[0]["loss"]  # bf16 really ran: the check can fail
