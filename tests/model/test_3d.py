"""`train.spatial_dims: 3`: config checks, 3D patch batches, every backbone trained and run on
volumes, and the pseudolabel -> train -> validate -> segment chain with a 3D network."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from medsegllm.config import Params, parse_params
from medsegllm.knowledge import LESION_CLASS, SEG_CLASSES
from medsegllm.model.dan import DomainAwareNorm, DomainRouter
from medsegllm.model.inference import bottleneck_features, predict_volume
from medsegllm.model.losses import seg_loss
from medsegllm.model.network import build_model
from medsegllm.model.pdm import ProgressiveDomainMixing
from medsegllm.train.data import SeriesData, TrainSamples, build_samples, index_slices, load_prompts, sample_batch
from medsegllm.train.engine import train_model
from tests.model.synthetic import SHAPE, tiny_params

UNET_3D = {"spatial_dims": 3, "channels": [4, 8, 16], "roi_size": [32, 32, 8], "batch_size": 2}
SWIN_3D = {"spatial_dims": 3, "backbone": "swinunetr", "norm": "instance", "dan": {"enabled": False},
           "channels": [12, 24], "roi_size": [64, 64, 32], "batch_size": 1}


def test_config_roi_must_match_spatial_dims_and_backbone_strides() -> None:
    assert parse_params("train: {spatial_dims: 3, roi_size: [64, 64, 16]}\n").train.roi_size == (64, 64, 16)
    with pytest.raises(ValidationError, match="roi_size has 2 values; train.spatial_dims 3 needs 3"):
        parse_params("train: {spatial_dims: 3}\n")
    with pytest.raises(ValidationError, match="roi_size has 3 values; train.spatial_dims 2 needs 2"):
        parse_params("train: {roi_size: [64, 64, 16]}\n")
    with pytest.raises(ValidationError, match="spatial_dims"):
        parse_params("train: {spatial_dims: 1, roi_size: [64]}\n")
    # unet/segresnet: every axis a multiple of the total stride (8 for 4 levels), z included
    for backbone in ("unet", "segresnet"):
        with pytest.raises(ValidationError, match="positive multiple of 8"):
            parse_params(f"train: {{backbone: {backbone}, spatial_dims: 3, roi_size: [64, 64, 12]}}\n")
    with pytest.raises(ValidationError, match="positive multiple of 4"):
        tiny_params(channels=[4, 8, 16], roi_size=[30, 32])
    # swinunetr: multiples of 32 on every axis, at least 64 in-plane; a 32-slice z is allowed
    assert tiny_params(**SWIN_3D).train.roi_size == (64, 64, 32)
    for roi in ([64, 64, 16], [32, 64, 32], [64, 48, 64]):
        with pytest.raises(ValidationError, match="multiple of 32 and at least 64 on x and y"):
            tiny_params(**{**SWIN_3D, "roi_size": roi})


def test_demo3d_config_is_params_yaml_in_3d(prompts) -> None:
    from pathlib import Path

    from medsegllm.config import load_params

    root = Path(__file__).resolve().parents[2]
    demo, base = load_params(root / "configs/demo3d.yaml"), load_params(root / "params.yaml")
    assert demo.train.spatial_dims == 3 and len(demo.train.roi_size) == 3
    assert demo.split == base.split and demo.train.variant == base.train.variant and demo.train.pdm == base.train.pdm
    model = build_model(demo.train, ["a", "b"], *prompts).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 1, *demo.train.roi_size), torch.tensor([0])).shape == (1, 4, *demo.train.roi_size)


def _series(rng: np.random.Generator, shape: tuple[int, int, int], lesion_z: int, pseudo: bool, idx: int) -> SeriesData:
    label = np.zeros(shape, np.uint8)
    label[4:20, 4:20, :] = 1
    label[10:13, 10:13, lesion_z] = LESION_CLASS
    weight = None
    if pseudo:
        weight = np.full(shape, 0.8, np.float32)
        weight[:, :, 0] = 0.0  # an unconfident slice
    return SeriesData(f"s{idx}", rng.random(shape, dtype=np.float32), label, weight, device_idx=idx % 2, study_idx=idx,
                      text_emb=np.ones(5, np.float32) if idx == 0 else None, subtype_idx=idx - 1)


def test_sample_batch_3d_patches_keep_the_batch_contract() -> None:
    rng = np.random.default_rng(0)
    series = [_series(rng, (24, 28, 6), 2, False, 0), _series(rng, (40, 36, 20), 15, True, 1)]
    samples = TrainSamples(series, ["a", "b"], *index_slices(series), text_dim=5)
    roi = (16, 16, 8)
    batch = sample_batch(samples, 6, roi, 0.5, np.random.default_rng(3), intensity_aug=1.0)
    assert batch["pseudo"].any() and not batch["pseudo"].all()  # both kinds of series in this draw
    assert batch["image"].shape == (6, 1, *roi) and batch["image"].dtype == torch.float32
    assert batch["label"].shape == batch["weight"].shape == (6, *roi) and batch["label"].dtype == torch.long
    assert {k: batch[k].shape for k in ("device", "study", "subtype", "pseudo", "has_text")} == dict.fromkeys(
        ("device", "study", "subtype", "pseudo", "has_text"), (6,))
    assert batch["text"].shape == (6, 5) and 0.0 <= float(batch["image"].min()) and float(batch["image"].max()) <= 1.0
    # the lesion half: every patch holds a usable lesion voxel (in the pseudo series: in a confident slice)
    lesion = (batch["label"][:3] == LESION_CLASS) & (batch["weight"][:3] > 0)
    assert lesion.flatten(1).any(1).all()
    for b in range(6):
        if batch["pseudo"][b]:
            assert set(batch["weight"][b].unique().tolist()) <= {0.0, float(np.float32(0.8)), 1.0}  # 1.0: padding only
        else:
            assert (batch["weight"][b] == 1).all()
            assert (batch["label"][b, :, :, 6:] == 0).all()  # series 0 is 6 slices deep: z padded with background
            assert batch["has_text"][b] and torch.equal(batch["text"][b], torch.ones(5))
    again = sample_batch(samples, 6, roi, 0.5, np.random.default_rng(3), intensity_aug=1.0)
    assert all(torch.equal(batch[k], again[k]) for k in batch)  # seeded: the same patches
    plain = sample_batch(samples, 6, roi, 0.5, np.random.default_rng(3))
    assert (plain["image"][~plain["pseudo"]][:, 0, :, :, 6:] == 0).all()  # padding is image 0 without augmentation
    flat = sample_batch(samples, 6, roi[:2], 0.5, np.random.default_rng(3))
    assert flat["image"].shape == (6, 1, 16, 16) and flat["label"].shape == (6, 16, 16)


def test_3d_head_dan_pdm_and_loss_are_exact_on_volumes(prompts) -> None:
    params = tiny_params(**UNET_3D, norm="batch", dan={"enabled": True, "shared_affine": True})
    model = build_model(params.train, ["a", "b"], *prompts).eval()
    dan = [m for m in model.backbone.modules() if isinstance(m, DomainAwareNorm)]
    assert dan and all(isinstance(m.shared_norm, torch.nn.BatchNorm3d) for m in dan)
    assert not any(type(m) is torch.nn.BatchNorm2d for m in model.modules())
    x = torch.rand(2, 1, 16, 16, 8)
    with torch.no_grad():
        out = model.outputs(x, torch.tensor([0, 1]))
        emb = model.pixel_embeddings(out["features"])
        expected = model.log_scale.exp() * torch.einsum("bdxyz,cd->bcxyz", emb, model.class_prompts)
        assert out["logits"].shape == (2, 4, 16, 16, 8)
        assert torch.allclose(out["logits"], expected + model.class_bias[None, :, None, None, None], atol=1e-4)
        mask = torch.zeros(2, 16, 16, 8, dtype=torch.bool)
        mask[:, 2:9, 3:7, 1:5] = True
        pooled = F.normalize((emb * mask[:, None]).sum((2, 3, 4)) / mask.sum((1, 2, 3))[:, None], dim=1)
        assert torch.allclose(model.pooled_embedding(out, mask), pooled, atol=1e-5)
    # PDM mixes 5D features across devices (instance statistics over x, y, z)
    router = DomainRouter(2)
    router.set(torch.tensor([0, 1]), training=True, shared_prob=0.0)
    mix = ProgressiveDomainMixing(router, beta=0.3).train()
    mix.probability = 1.0
    f = torch.randn(2, 3, 4, 4, 4)
    torch.manual_seed(0)
    mixed = mix(f)
    assert mixed.shape == f.shape and not torch.allclose(mixed, f)
    # weighted seg loss on volumes: weight-0 voxels do not count
    logits, target = torch.randn(2, 4, 6, 6, 4), torch.randint(0, 4, (2, 6, 6, 4))
    weight = torch.ones(2, 6, 6, 4)
    weight[..., :2] = 0
    changed = logits.clone()
    changed[..., :2] = torch.randn(2, 4, 6, 6, 2) * 5
    cw = torch.tensor([1.0, 1.0, 1.0, 2.0])
    assert torch.isclose(seg_loss(logits, target, cw, weight), seg_loss(changed, target, cw, weight))
    assert not torch.isclose(seg_loss(logits, target, cw), seg_loss(changed, target, cw))


@pytest.mark.parametrize(
    ("train", "n_features"),
    [({**UNET_3D, "norm": "batch", "dan": {"enabled": True}}, 16),  # DAN + PDM, the paper's set-up
     ({**UNET_3D, "backbone": "segresnet"}, 16),
     (SWIN_3D, 12 * 16)],
    ids=["unet", "segresnet", "swinunetr"],
)
def test_3d_backbone_trains_and_segments_whole_volumes(train, n_features, stage_dirs, tmp_path, monkeypatch) -> None:
    from medsegllm.model import inference

    params = tiny_params(**train, epochs=1, steps_per_epoch=1 if train.get("backbone") == "swinunetr" else 2)
    samples = build_samples(stage_dirs["ingest"], stage_dirs["findings"], None, params)
    torch.manual_seed(0)
    model = build_model(params.train, samples.device_ids, *load_prompts(stage_dirs["findings"]))
    assert sum(isinstance(m, ProgressiveDomainMixing) for m in model.modules()) == 2
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = train_model(model, samples, params, tmp_path)
    assert np.isfinite(result["loss"]) and any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not [k for k, v in model.state_dict().items() if v.is_floating_point() and not v.isfinite().all()]
    calls = []
    real = inference.sliding_window_inference
    monkeypatch.setattr(inference, "sliding_window_inference",
                        lambda inputs, roi_size, *a, **k: calls.append((tuple(inputs.shape), tuple(roi_size))) or real(inputs, roi_size, *a, **k))
    volume = np.random.default_rng(0).random((40, 36, 10), dtype=np.float32)
    probs = predict_volume(model, volume, "unseen_scanner", batch_size=2, precision="fp32")
    assert calls == [((1, 1, 40, 36, 10), tuple(params.train.roi_size))]  # one call: the whole volume, 3D windows
    assert probs.shape == (4, 40, 36, 10) and np.allclose(probs.sum(axis=0), 1.0, atol=1e-4)
    bf16 = predict_volume(model, volume, "unseen_scanner", batch_size=2, precision="bf16")
    assert not np.array_equal(bf16, probs) and np.abs(bf16 - probs).max() < 0.1  # bf16 ran, close to fp32
    z_levels = -(-max(10, params.train.roi_size[2]) // model.total_stride)
    assert bottleneck_features(model, volume, "unseen").shape == (z_levels, n_features)
    model.to(memory_format=torch.channels_last_3d)  # what train_model does on CUDA: no 4D weights in a 3D model


def test_3d_baselines_predict_volumes(prompts) -> None:
    volume = np.random.default_rng(0).random((20, 24, 5), dtype=np.float32)
    for train in (UNET_3D, SWIN_3D):
        model = build_model(tiny_params(**train, variant="unet_baseline").train, ["a"], *prompts)
        assert predict_volume(model, volume, "a", batch_size=1).shape == (4, 20, 24, 5)
        mirrored = predict_volume(model, volume, "a", batch_size=1, mirror=True)  # volumes mirror in x and y too
        assert mirrored.shape == (4, 20, 24, 5) and np.allclose(mirrored.sum(axis=0), 1.0, atol=1e-5)


def test_3d_pseudolabel_train_validate_segment(stage_dirs, tmp_path) -> None:
    """The stage functions with a 3D network: teacher, student with EMA refresh rounds, validation,
    registration (an MLflow example input of the 3D ROI) and segment from the registered model."""
    from medsegllm.common.io import load_nifti, write_parquet
    from medsegllm.config import SynthParams
    from medsegllm.model.checkpoint import load_model
    from medsegllm.pseudolabel.run import run_pseudolabel
    from medsegllm.register.run import run_register
    from medsegllm.segment.run import run_segment
    from medsegllm.synth.cohort import generate_cohort
    from medsegllm.train.run import run_train
    from medsegllm.validate.run import run_validate

    root = stage_dirs["root"]
    manifest = pd.read_parquet(stage_dirs["ingest"] / "manifest.parquet")  # what validate reads besides the volumes
    hist = np.random.default_rng(0).random((len(manifest), 8))
    manifest = manifest.assign(spacing=[[4.0, 4.0, 5.0]] * len(manifest), raw_histogram=list(hist), histogram=list(hist))
    write_parquet(stage_dirs["ingest"] / "manifest.parquet", manifest)
    params = tiny_params(**UNET_3D, epochs=2, steps_per_epoch=3, pseudolabels={"refresh_every": 1, "refresh_start": 1})
    params.pseudolabel.teacher_epochs = 2
    summary = run_pseudolabel(stage_dirs["ingest"], stage_dirs["findings"], root / "pseudo", params)
    assert summary["n_series"] == 4 and summary["n_teacher_series"] == 2
    _, teacher_meta = load_model(root / "pseudo" / "teacher.pt")
    assert teacher_meta["train"]["spatial_dims"] == 3
    table = pd.read_parquet(root / "pseudo" / "pseudolabels.parquet")
    assert all(np.asarray(load_nifti(root / "pseudo" / p)[0]).shape == SHAPE for p in table["mask_path"])

    metrics = run_train(stage_dirs["ingest"], stage_dirs["findings"], root / "pseudo", root / "train", params)
    assert metrics["n_pseudo_series"] == 4 and metrics["pseudo_rounds"] == 2
    log = pd.read_csv(root / "train" / "train_log.csv")
    assert len(log) == 2 and log["loss_pseudo"].gt(0).all() and np.isfinite(log["loss"]).all()
    rounds = pd.read_csv(root / "train" / "pseudo_rounds.csv")
    assert rounds["round"].tolist() == [0, 1, 2]
    _, meta = load_model(root / "train" / "model.pt")
    assert meta["train"]["spatial_dims"] == 3 and meta["train"]["roi_size"] == [32, 32, 8]

    # labelled series validate only on a held-out device: dev_b's labelled s1 is the reference
    val = Params.model_validate({"split": {"holdout_devices": ["dev_b"], "val_fraction": 0.99},
                                 "validate": {"bootstrap": 20, "gates": {"min_dice": 0.0, "max_js": 1.0,
                                                                        "max_device_gap": 1.0, "min_device_series": 1}}})
    result = run_validate(root / "train" / "model.pt", stage_dirs["ingest"], root / "val", val)
    written = json.loads((root / "val" / "metrics.json").read_text())
    assert result["gate"]["passed"] and 0.0 <= written["dice_mean"] <= 1.0 and written["n_series"] >= 1
    assert written["js_features"] is not None and 0.0 <= written["js_features"] <= 1.0

    registry = Params.model_validate({"register": {"tracking_uri": f"sqlite:///{root}/mlflow.db"}})
    record = run_register(root / "train" / "model.pt", root / "val", root / "registry", registry)
    assert record["alias"] == "champion"

    generate_cohort(root / "cohort", SynthParams(n_studies=4), seed=0)
    seg = run_segment(record["model_uri"], root / "cohort" / "dicom", root / "seg", registry, "test-salt")
    assert seg["n_series"] >= 4 and seg["n_failed_series"] == 0
    for row in seg["series"]:
        label, _ = load_nifti(root / "seg" / row["nifti"])
        assert list(np.asarray(label).shape) == row["shape"] and set(np.unique(label)) <= set(range(len(SEG_CLASSES)))


def test_labelled_share_fixes_how_many_slices_come_from_voxel_labels() -> None:
    rng = np.random.default_rng(0)
    # one labelled series of 4 slices among pseudo-labelled ones of 40: drawn alike, labelled slices are ~1 in 31
    series = [_series(rng, (24, 24, 4), 2, False, 0)] + [_series(rng, (24, 24, 40), 15, True, i) for i in (1, 2, 3)]
    samples = TrainSamples(series, ["a", "b"], *index_slices(series), text_dim=5)
    uniform = sample_batch(samples, 64, (16, 16), 0.0, np.random.default_rng(1))
    half = sample_batch(samples, 64, (16, 16), 0.25, np.random.default_rng(1), labelled_share=0.5)
    assert int((~uniform["pseudo"]).sum()) < 10
    lesion_draws = 16  # 0.25 of 64 come from lesion slices of either kind; half of the other 48 are labelled
    assert int((~half["pseudo"][lesion_draws:]).sum()) == 24
    seeded = sample_batch(samples, 64, (16, 16), 0.0, np.random.default_rng(1), labelled_share=None)
    assert all(torch.equal(uniform[k], seeded[k]) for k in uniform)  # null keeps the old draw exactly
    only_labelled = TrainSamples(series[:1], ["a"], *index_slices(series[:1]), text_dim=5)
    assert not sample_batch(only_labelled, 8, (16, 16), 0.0, np.random.default_rng(1), labelled_share=0.5)["pseudo"].any()
