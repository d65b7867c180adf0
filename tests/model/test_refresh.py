"""Dynamic pseudo-labels: EMA teacher, shared fusion, refresh rounds in training, resume with refresh."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from medsegllm.common.io import save_nifti, write_parquet
from medsegllm.config import PseudolabelParams
from medsegllm.knowledge import LESION_CLASS
from medsegllm.model.network import build_model
from medsegllm.pseudolabel.fusion import lesion_dice, organ_dice, pseudo_label_series
from medsegllm.train.data import TrainSamples, build_samples, load_prompts
from medsegllm.train.engine import train_model
from medsegllm.train.refresh import ROUND_COLUMNS, PseudoRefresh, pseudo_targets
from medsegllm.train.run import run_train
from tests.model.synthetic import AFFINE, Interrupted, phantom, stop_after_epoch, tiny_params

LESION = {"organ": "liver", "location": "right lobe", "laterality": None, "size_mm": 24.0,
          "subtype": "metastasis", "certainty": "definite"}  # metastasis: darker than liver, like the phantom's lesion
LESION_SERIES = {"s2", "s3"}  # unlabelled series of `stage_dirs` with a (reported) lesion


def _one_hot(label: np.ndarray) -> np.ndarray:
    return np.stack([(label == c).astype(np.float32) for c in range(4)]) * 0.9 + 0.025


@pytest.mark.parametrize(("warmup", "expected"), [
    (False, (1.1, 1.0, 1.29)),  # 0.9*1 + 0.1*2; buffer 0.9*0 + 0.1*10; 0.9*1.1 + 0.1*3
    (True, (2 / 11 + 18 / 11, 90 / 11, 0.25 * 20 / 11 + 0.75 * 3)),  # d = min(0.9, (1+n)/(10+n)): 2/11, then 3/12
])
def test_ema_update_matches_the_hand_computed_average(tmp_path, warmup, expected) -> None:
    params = tiny_params(pseudolabels={"ema_decay": 0.9, "refresh_every": 1, "ema_warmup": warmup})
    model = nn.Linear(1, 1, bias=False)
    model.register_buffer("stat", torch.zeros(1))
    refresh = PseudoRefresh(TrainSamples([], [], np.zeros((0, 2)), np.zeros(0), 0), [], params, tmp_path)
    with torch.no_grad():
        model.weight.fill_(1.0)
        refresh.attach(model)  # ema_0 = student_0 = 1
        model.weight.fill_(2.0)
        model.stat.fill_(10.0)
        refresh.update(model)
        assert refresh.ema.module.weight.item() == pytest.approx(expected[0])
        assert refresh.ema.module.stat.item() == pytest.approx(expected[1])  # buffers are averaged too
        model.weight.fill_(3.0)
        refresh.update(model)
        assert refresh.ema.module.weight.item() == pytest.approx(expected[2])
    assert model.weight.item() == 3.0


def test_a_better_teacher_gives_better_pseudo_labels() -> None:
    """Same report, same fusion as the pseudolabel stage: a teacher that sees the whole liver places the lesion right."""
    rng = np.random.default_rng(0)
    image, truth = phantom(rng, lesion=True, device=0)
    good = truth.copy()
    good[good == LESION_CLASS] = 1  # knows the organs, not the lesion: the report must add it
    poor = good.copy()
    poor[17:, :, :][poor[17:, :, :] == 1] = 0  # misses the right half of the liver, where the lesion is
    cfg = PseudolabelParams()
    scores = {}
    for name, teacher in (("good", good), ("poor", poor)):
        mask, confidence, weight = pseudo_label_series(_one_hot(teacher), image, AFFINE, [LESION], True, cfg)
        assert mask.shape == truth.shape and 0 <= weight.min() and confidence.max() <= 1
        scores[name] = (lesion_dice(mask, truth), organ_dice(mask, truth))
    assert scores["good"][0] > 0.5 > scores["poor"][0]
    assert scores["good"][1] > scores["poor"][1]
    empty, _, _ = pseudo_label_series(_one_hot(good), image, AFFINE, [LESION], False, cfg)
    assert not (empty == LESION_CLASS).any()  # no tumour in the report: no lesion


def _pseudo_dir(root: Path) -> Path:
    """Crude pseudo-labels for the unlabelled series: organs only, uniform confidence 0.9."""
    out, rows = root / "pseudo", []
    for i in range(2, 6):
        _, label = phantom(np.random.default_rng(i), lesion=False, device=i % 2)
        save_nifti(out / f"masks/s{i}.nii.gz", label, AFFINE)
        save_nifti(out / f"confidence/s{i}.nii.gz", np.full(label.shape, 0.9, np.float32), AFFINE)
        rows.append({"series_id": f"s{i}", "mask_path": f"masks/s{i}.nii.gz", "confidence_path": f"confidence/s{i}.nii.gz"})
    write_parquet(out / "pseudolabels.parquet", pd.DataFrame(rows))
    return out


def test_train_with_refresh_writes_the_rounds(stage_dirs) -> None:
    root = stage_dirs["root"]
    params = tiny_params(channels=[4, 8], epochs=2, steps_per_epoch=1, pseudolabels={"refresh_every": 1, "refresh_start": 1})
    metrics = run_train(stage_dirs["ingest"], stage_dirs["findings"], _pseudo_dir(root), root / "train", params)
    rounds = pd.read_csv(root / "train" / "pseudo_rounds.csv")
    assert tuple(rounds.columns) == ROUND_COLUMNS
    assert rounds["round"].tolist() == [0, 1, 2] and rounds["epoch"].tolist() == [0, 1, 2]
    assert rounds["n_series"].eq(4).all() and rounds["fraction_changed"].iloc[0] == 0
    assert rounds["fraction_changed"].between(0, 1).all() and rounds["fraction_changed"].iloc[1:].gt(0).any()
    assert rounds["dice_lesion_tumour"].isna().all()  # no hidden truth given: no Dice
    assert metrics["pseudo_rounds"] == 2

    off = tiny_params(channels=[4, 8], epochs=1, steps_per_epoch=1)  # refresh off: round 0 only
    run_train(stage_dirs["ingest"], stage_dirs["findings"], root / "pseudo", root / "off", off)
    assert pd.read_csv(root / "off" / "pseudo_rounds.csv")["round"].tolist() == [0]


def test_resume_with_refresh_continues_exactly(stage_dirs, tmp_path) -> None:
    """Rounds after epochs 1 and 3; a kill after epoch 2 resumes with the EMA of epoch 2 and the labels of round 1."""
    pseudo = _pseudo_dir(stage_dirs["root"])
    params = tiny_params(channels=[4, 8], epochs=3, steps_per_epoch=2,
                         pseudolabels={"refresh_every": 2, "refresh_start": 1, "ema_decay": 0.5})
    prompts = load_prompts(stage_dirs["findings"])

    def fresh(out: Path) -> tuple[nn.Module, TrainSamples, PseudoRefresh]:
        samples = build_samples(stage_dirs["ingest"], stage_dirs["findings"], pseudo, params)
        targets = pseudo_targets(stage_dirs["ingest"], stage_dirs["findings"], samples, params)
        for t in targets:  # the hidden truth, as `run_train --truth` would give it
            series_id = samples.series[t.index].series_id
            t.truth = phantom(np.random.default_rng(0), lesion=series_id in LESION_SERIES, device=0)[1]
        torch.manual_seed(123)
        return build_model(params.train, samples.device_ids, *prompts), samples, PseudoRefresh(samples, targets, params, out)

    straight, samples_a, refresh_a = fresh(tmp_path / "straight")
    train_model(straight, samples_a, params, tmp_path / "straight", refresh=refresh_a)
    model, samples_b, refresh_b = fresh(tmp_path / "resumed")
    with pytest.raises(Interrupted):
        train_model(model, samples_b, params, tmp_path / "resumed", log_callback=stop_after_epoch(2), refresh=refresh_b)
    resumed, samples_c, refresh_c = fresh(tmp_path / "resumed")
    train_model(resumed, samples_c, params, tmp_path / "resumed", resume=True, refresh=refresh_c)

    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    for (name, a), b in zip(refresh_a.ema.state_dict().items(), refresh_c.ema.state_dict().values()):
        assert torch.equal(a, b), name
    for a, c in zip(samples_a.series, samples_c.series):
        assert np.array_equal(a.label, c.label) and (a.weight is None or np.array_equal(a.weight, c.weight))
    straight_rounds = pd.read_csv(tmp_path / "straight" / "pseudo_rounds.csv").drop(columns="seconds")
    resumed_rounds = pd.read_csv(tmp_path / "resumed" / "pseudo_rounds.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(straight_rounds, resumed_rounds)
    assert straight_rounds["epoch"].tolist() == [0, 1, 3]
    assert straight_rounds["n_scored"].eq(4).all() and straight_rounds["n_scored_tumour"].eq(2).all()
    assert straight_rounds[["dice_lesion_tumour", "dice_lesion", "dice_organs"]].notna().all().all()


@pytest.mark.parametrize("refresh_mirror", [False, True])
def test_refresh_rounds_mirror_only_when_asked(stage_dirs, monkeypatch, refresh_mirror) -> None:
    """The rounds' teacher predictions follow `pseudolabels.refresh_mirror`, not the model's `inference.mirror` (on)."""
    import medsegllm.train.refresh as refresh_module

    calls = []
    real = refresh_module.predict_volume

    def recording(model, volume, device_id, **kwargs):
        calls.append(kwargs["mirror"])
        return real(model, volume, device_id, **kwargs)

    monkeypatch.setattr(refresh_module, "predict_volume", recording)
    root = stage_dirs["root"]
    params = tiny_params(channels=[4, 8], epochs=1, steps_per_epoch=1, inference={"mirror": True},
                         pseudolabels={"refresh_every": 1, "refresh_start": 1, "refresh_mirror": refresh_mirror})
    run_train(stage_dirs["ingest"], stage_dirs["findings"], _pseudo_dir(root), root / "train", params)
    assert calls == [refresh_mirror] * 4  # one round over the four pseudo-labelled series
