import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medsegllm.model.inference import MIRROR_AXES, bottleneck_features, predict_volume
from medsegllm.model.network import build_model
from tests.model.synthetic import tiny_params


def test_factored_head_equals_explicit_cosine(prompts) -> None:
    class_prompts, subtype_prompts = prompts
    model = build_model(tiny_params().train, ["a", "b"], class_prompts, subtype_prompts).eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        out = model.outputs(x, torch.tensor([0, 1]))
        emb = model.pixel_embeddings(out["features"])
        cos = torch.einsum("bdhw,cd->bchw", emb, model.class_prompts)
        expected = model.log_scale.exp() * cos + model.class_bias[None, :, None, None]
        assert torch.allclose(out["logits"], expected, atol=1e-4)
        mask = torch.zeros(2, 32, 32, dtype=torch.bool)
        mask[:, 4:12, 8:20] = True
        pooled = F.normalize((emb * mask[:, None]).sum((2, 3)) / mask.sum((1, 2))[:, None], dim=1)
        assert torch.allclose(model.pooled_embedding(out, mask), pooled, atol=1e-5)


def test_head_runs_in_fp32_under_bf16_autocast(prompts) -> None:
    # autocast would run the head's products in bf16 (and recast the features for each); the head opts out
    model = build_model(tiny_params().train, ["a", "b"], *prompts).eval()
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model.outputs(torch.rand(2, 1, 32, 32), torch.tensor([0, 1]))
        assert out["logits"].dtype == out["norm"].dtype == torch.float32
        emb = model.pixel_embeddings(out["features"])  # the same features, in fp32 outside autocast
        expected = model.log_scale.exp() * torch.einsum("bdhw,cd->bchw", emb, model.class_prompts)
        assert torch.allclose(out["logits"], expected + model.class_bias[None, :, None, None], atol=1e-4)


def test_inference_shapes_for_both_variants(prompts) -> None:
    volume = np.random.default_rng(0).random((40, 36, 3), dtype=np.float32)
    for variant, backbone in (("medsegllm", "unet"), ("medsegllm", "segresnet"), ("unet_baseline", "unet")):
        model = build_model(tiny_params(variant=variant, backbone=backbone).train, ["a"], *prompts)
        probs = predict_volume(model, volume, "unknown_scanner", batch_size=2)
        assert probs.shape == (4, 40, 36, 3)
        assert np.allclose(probs.sum(axis=0), 1.0, atol=1e-5)
        feats = bottleneck_features(model, volume, "a")
        assert feats.shape == (3, 32)


def test_mirrored_inference_is_flip_equivariant(prompts) -> None:
    """Test-time mirroring averages over the flips training augments with, each mapped back: mirroring the input
    then mirrors the output, which the network alone does not do; the probabilities stay a distribution."""
    volume = np.random.default_rng(2).random((40, 36, 3), dtype=np.float32)
    model = build_model(tiny_params().train, ["a"], *prompts)
    plain = predict_volume(model, volume, "a", precision="fp32")
    mirrored = predict_volume(model, volume, "a", precision="fp32", mirror=True)
    assert np.allclose(mirrored.sum(axis=0), 1.0, atol=1e-5) and not np.allclose(mirrored, plain, atol=1e-3)
    for axes in MIRROR_AXES:
        out_axes = tuple(a + 1 for a in axes)  # (C, X, Y, Z) output
        flipped = np.ascontiguousarray(np.flip(volume, axes))
        assert not np.allclose(predict_volume(model, flipped, "a", precision="fp32"), np.flip(plain, out_axes), atol=1e-3)
        assert np.allclose(predict_volume(model, flipped, "a", precision="fp32", mirror=True), np.flip(mirrored, out_axes),
                           atol=1e-5)


def test_backbone_norm_choice_and_dan_needs_batch_norm(prompts) -> None:
    from pydantic import ValidationError

    from medsegllm.config import parse_params

    with pytest.raises(ValidationError, match="needs train.norm: batch"):
        parse_params("train:\n  norm: instance\n")
    train = parse_params("train:\n  norm: instance\n  dan: {enabled: false}\n").train
    model = build_model(train, ["a"], *prompts)
    norms = {type(m).__name__ for m in model.backbone.modules()}
    assert "InstanceNorm2d" in norms and "BatchNorm2d" not in norms


def test_inference_precision_bf16_matches_fp32_and_auto_follows_the_hardware(prompts) -> None:
    from medsegllm.model.inference import autocast_for, bf16_supported

    volume = np.random.default_rng(1).random((40, 36, 3), dtype=np.float32)
    model = build_model(tiny_params().train, ["a"], *prompts)
    fp32 = predict_volume(model, volume, "a", precision="fp32")
    bf16 = predict_volume(model, volume, "a", precision="bf16")
    assert not np.array_equal(fp32, bf16)  # bf16 really ran
    assert np.abs(fp32 - bf16).max() < 0.05 and np.allclose(bf16.sum(axis=0), 1.0, atol=1e-5)
    auto = predict_volume(model, volume, "a")
    assert np.array_equal(auto, bf16 if bf16_supported(torch.device("cpu")) else fp32)
    assert isinstance(autocast_for(torch.device("cpu"), "bf16"), torch.autocast)
    with pytest.raises(ValueError, match="precision"):
        autocast_for(torch.device("cpu"), "fp16")


def test_swinunetr_backbone_trains_segments_and_mixes(prompts, stage_dirs, tmp_path) -> None:
    """The transformer backbone behind the same head: PDM on its skip encoders, features padded to stride 32."""
    from pydantic import ValidationError

    from medsegllm.model.pdm import ProgressiveDomainMixing
    from medsegllm.train.data import build_samples, load_prompts
    from medsegllm.train.engine import train_model

    params = tiny_params(backbone="swinunetr", norm="instance", dan={"enabled": False}, channels=[12, 24],
                         roi_size=[64, 64], epochs=1, steps_per_epoch=2)
    samples = build_samples(stage_dirs["ingest"], stage_dirs["findings"], None, params)
    model = build_model(params.train, samples.device_ids, *load_prompts(stage_dirs["findings"]))
    assert type(model.backbone).__name__ == "SwinUNETR" and model.total_stride == 32
    assert sum(isinstance(m, ProgressiveDomainMixing) for m in model.backbone.modules()) == 2
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = train_model(model, samples, params, tmp_path)
    assert np.isfinite(result["loss"]) and any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    volume = np.random.default_rng(0).random((40, 36, 3), dtype=np.float32)
    probs = predict_volume(model, volume, samples.device_ids[0], batch_size=2)
    assert probs.shape == (4, 40, 36, 3) and np.allclose(probs.sum(axis=0), 1.0, atol=1e-4)
    assert bottleneck_features(model, volume, "unseen").shape == (3, 12 * 16)  # encoder10: 16x the feature size
    swin_baseline = tiny_params(variant="unet_baseline", backbone="swinunetr", channels=[12, 24], roi_size=[64, 64])
    baseline = build_model(swin_baseline.train, ["a"], *prompts)  # the transformer baseline: plain SwinUNETR, C outputs
    assert type(baseline.backbone).__name__ == "SwinUNETR" and baseline.backbone.out.conv.out_channels == 4
    assert predict_volume(baseline, volume, "a", batch_size=2).shape == (4, 40, 36, 3)
    with pytest.raises(ValidationError, match="multiple of 12"):
        tiny_params(backbone="swinunetr", channels=[16, 32])
    for roi in ([48, 48], [32, 32]):
        with pytest.raises(ValidationError, match="multiple of 32 and at least 64"):
            tiny_params(backbone="swinunetr", channels=[12, 24], roi_size=roi)
