import json

import numpy as np
import pandas as pd
import pytest
import torch

from medsegllm.common.io import load_nifti
from medsegllm.knowledge import LESION_CLASS, SEG_CLASSES
from medsegllm.model.checkpoint import load_model
from medsegllm.model.inference import predict_volume
from medsegllm.model.network import build_model
from medsegllm.pseudolabel.run import run_pseudolabel
from medsegllm.train.data import build_samples, load_prompts
from medsegllm.train.engine import train_model
from medsegllm.train.run import run_train
from tests.model.synthetic import Interrupted, stop_after_epoch, tiny_params


@pytest.mark.parametrize("augment", [{}, {"scanner_aug": {"enabled": True, "prob": 1.0}},
                                     {"pdm": {"p_max": 1.0, "ramp_epochs": 1, "amplitude_mix": 1.0, "amplitude_band": 0.2}}],
                         ids=["plain", "scanner_aug", "amplitude_mix"])
def test_resume_continues_exactly(stage_dirs, tmp_path, augment: dict) -> None:
    """Scanner augmentation included: its MONAI transforms draw from the checkpointed generator; so does
    PDM's image-level mixing, from torch's."""
    params = tiny_params(channels=[4, 8], epochs=2, steps_per_epoch=2, **augment)
    samples = build_samples(stage_dirs["ingest"], stage_dirs["findings"], None, params)
    prompts = load_prompts(stage_dirs["findings"])

    def fresh():
        torch.manual_seed(123)
        return build_model(params.train, samples.device_ids, *prompts)

    straight = fresh()
    train_model(straight, samples, params, tmp_path / "straight")
    with pytest.raises(Interrupted):
        train_model(fresh(), samples, params, tmp_path / "resumed", log_callback=stop_after_epoch(1))
    resumed = fresh()
    result = train_model(resumed, samples, params, tmp_path / "resumed", resume=True)
    assert result["epoch"] == 2
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    log = pd.read_csv(tmp_path / "resumed" / "train_log.csv")
    assert log["epoch"].tolist() == [1, 2]
    assert np.allclose(log["loss"], pd.read_csv(tmp_path / "straight" / "train_log.csv")["loss"])


def test_resume_after_the_last_checkpoint_restores_the_log(stage_dirs, tmp_path) -> None:
    """A kill between the final checkpoint and its log write must not lose the last epoch's row."""
    params = tiny_params(channels=[4, 8], epochs=2, steps_per_epoch=1)
    samples = build_samples(stage_dirs["ingest"], stage_dirs["findings"], None, params)
    model = build_model(params.train, samples.device_ids, *load_prompts(stage_dirs["findings"]))
    train_model(model, samples, params, tmp_path)
    (tmp_path / "train_log.csv").write_text("epoch\n1\n")  # the log as the kill left it
    result = train_model(model, samples, params, tmp_path, resume=True)
    assert result["epoch"] == 2
    assert pd.read_csv(tmp_path / "train_log.csv")["epoch"].tolist() == [1, 2]


def test_pseudolabel_then_train_end_to_end(stage_dirs) -> None:
    root = stage_dirs["root"]
    params = tiny_params()
    # a teacher that finds the liver, so the reports' lesions get placed: at 8 epochs it found a quarter of
    # it on a CPU without AVX-512 (fp32 kernels) and s3's lesion fell outside; 16 find it on either
    params.pseudolabel.teacher_epochs = 16
    summary = run_pseudolabel(stage_dirs["ingest"], stage_dirs["findings"], root / "pseudo", params)
    assert summary["n_series"] == 4 and summary["n_teacher_series"] == 2
    table = pd.read_parquet(root / "pseudo" / "pseudolabels.parquet")
    lesion_masks = [int((np.asarray(load_nifti(root / "pseudo" / path)[0]) == LESION_CLASS).sum()) for path in table["mask_path"]]
    assert sum(count > 0 for count in lesion_masks) >= 2
    assert set(table["series_id"]) == {"s2", "s3", "s4", "s5"}
    assert (root / "pseudo" / "teacher.pt").exists()
    assert all((root / "pseudo" / p).exists() for p in [*table["mask_path"], *table["confidence_path"]])

    metrics = run_train(stage_dirs["ingest"], stage_dirs["findings"], root / "pseudo", root / "train", params)
    assert metrics["n_labelled_series"] == 2 and metrics["n_pseudo_series"] == 4
    assert json.loads((root / "train" / "train_metrics.json").read_text())["parameters"] == metrics["parameters"]
    log = pd.read_csv(root / "train" / "train_log.csv")
    assert len(log) == 2 and log["loss_pseudo"].gt(0).all() and log["loss_align"].gt(0).any()
    model, meta = load_model(root / "train" / "model.pt")
    assert meta["classes"] == list(SEG_CLASSES) and meta["device_ids"] == ["dev_a", "dev_b"]
    probs = predict_volume(model, np.zeros((32, 32, 2), np.float32), "dev_c")
    assert probs.shape == (4, 32, 32, 2)

    baseline = run_train(stage_dirs["ingest"], stage_dirs["findings"], root / "pseudo", root / "base",
                         tiny_params(variant="unet_baseline", epochs=1))
    assert baseline["n_pseudo_series"] == 0 and baseline["loss_align"] == 0.0


def test_intensity_augmentation_stays_in_range_and_changes_the_slice() -> None:
    import numpy as np

    from medsegllm.train.data import augment_intensity

    rng = np.random.default_rng(0)
    image = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    out = augment_intensity(image, rng)
    assert out.dtype == np.float32 and out.shape == image.shape
    assert out.min() >= 0 and out.max() <= 1 and not np.allclose(out, image)


def test_amplitude_mixing_changes_the_medsegllm_batches_only(stage_dirs, tmp_path, monkeypatch) -> None:
    """Image-level PDM runs once the schedule's probability is above 0, never for the baseline."""
    from medsegllm.train import engine

    calls = []
    original = engine.mix_amplitudes
    monkeypatch.setattr(engine, "mix_amplitudes", lambda *a, **k: calls.append(a[2]) or original(*a, **k))
    pdm = {"p_max": 1.0, "ramp_epochs": 1, "amplitude_mix": 1.0}
    for variant in ("medsegllm", "unet_baseline"):
        params = tiny_params(channels=[4, 8], epochs=2, steps_per_epoch=2, variant=variant, pdm=pdm)
        samples = build_samples(stage_dirs["ingest"], stage_dirs["findings"], None, params)
        train_model(build_model(params.train, samples.device_ids, *load_prompts(stage_dirs["findings"])), samples,
                    params, tmp_path / variant)
        assert calls == ([1.0, 1.0] if variant == "medsegllm" else [])  # epoch 1 has p = 0; epoch 2, p = p_max
        calls.clear()


def _poison_steps(monkeypatch, poisoned: set[int]) -> list[float]:
    """Make the loss (and so every gradient) NaN on the given 1-based steps; returns each step's clean loss."""
    from medsegllm.train import engine

    clean, real = [], engine.compute_losses

    def losses(*args, **kwargs):
        out = real(*args, **kwargs)
        clean.append(float(out["loss"].detach()))
        if len(clean) in poisoned:
            out = {**out, "loss": out["loss"] * float("nan")}
        return out

    monkeypatch.setattr(engine, "compute_losses", losses)
    return clean


def test_a_step_with_nonfinite_gradients_is_skipped_and_counted(stage_dirs, tmp_path, monkeypatch) -> None:
    params = tiny_params(channels=[4, 8], epochs=1, steps_per_epoch=3)
    samples = build_samples(stage_dirs["ingest"], stage_dirs["findings"], None, params)
    torch.manual_seed(0)
    model = build_model(params.train, samples.device_ids, *load_prompts(stage_dirs["findings"]))
    clean = _poison_steps(monkeypatch, {2})
    result = train_model(model, samples, params, tmp_path)
    assert result["skipped_steps"] == 1 and np.isclose(result["loss"], (clean[0] + clean[2]) / 2)  # mean of the steps taken
    assert all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point())
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["optimizer"]["state"]
    assert max(float(s["step"]) for s in state.values()) == 2.0  # AdamW counted only the updates it made
    assert pd.read_csv(tmp_path / "train_log.csv")["skipped_steps"].tolist() == [1]


def test_an_epoch_without_one_finite_step_stops_training_unchanged(stage_dirs, tmp_path, monkeypatch) -> None:
    params = tiny_params(channels=[4, 8], epochs=1, steps_per_epoch=2)
    samples = build_samples(stage_dirs["ingest"], stage_dirs["findings"], None, params)
    torch.manual_seed(0)
    model = build_model(params.train, samples.device_ids, *load_prompts(stage_dirs["findings"]))
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    _poison_steps(monkeypatch, {1, 2})
    with pytest.raises(RuntimeError, match="epoch 1: every step's gradients held NaN/inf"):
        train_model(model, samples, params, tmp_path)
    assert all(torch.equal(before[k], v) for k, v in model.named_parameters())  # (norm statistics move in the forward)
