"""Per-series metrics, aggregation and divergence on small hand-built arrays."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medsegllm.validate.divergence import device_histograms, feature_js, js_divergence, mean_pairwise_js, split_half_js
from medsegllm.validate.metrics import (
    aggregate,
    bootstrap_ci,
    cohen_kappa,
    dice_per_class,
    hd95_per_class,
    kappa_ci,
    lesion_table,
    sensitivity_by_size,
    size_bin_labels,
)


def _maps() -> tuple[np.ndarray, np.ndarray]:
    ref = np.zeros((12, 12, 6), np.uint8)
    pred = np.zeros_like(ref)
    ref[2:6, 2:6, 1:4] = 1
    pred[2:6, 2:6, 1:4] = 1  # liver identical
    ref[8:10, 8:10, 2:4] = 3  # lesion present only in the reference
    return pred, ref


def test_dice_nan_for_class_absent_in_both_and_zero_for_missed():
    pred, ref = _maps()
    dice = dice_per_class(pred, ref, 4)
    assert dice[0] == pytest.approx(1.0)
    assert np.isnan(dice[1])  # kidney absent in both: excluded, not 1.0
    assert dice[2] == 0.0  # lesion missed


def test_hd95_in_mm_and_nan_when_empty():
    pred, ref = _maps()
    pred[6, 2:6, 1:4] = 1  # liver one voxel thicker along x
    hd = hd95_per_class(pred, ref, 4, (4.0, 4.0, 5.0))
    assert hd[0] == pytest.approx(4.0)
    assert np.isnan(hd[1]) and np.isnan(hd[2])


def test_lesion_table_sizes_in_mm_detection_and_false_positives():
    ref = np.zeros((10, 10, 4), bool)
    ref[1:3, 1:3, 1] = True  # 4 voxels
    ref[6:8, 6:8, 2] = True  # 4 voxels, missed
    pred = np.zeros_like(ref)
    pred[2, 2, 1] = True  # hits the first
    pred[9, 0, 3] = True  # overlaps nothing
    rows, false_positives = lesion_table(pred, ref, (2.0, 2.0, 3.0))
    assert [r["detected"] for r in rows] == [True, False] and false_positives == 1
    assert rows[0]["volume_mm3"] == pytest.approx(48.0)  # 4 voxels of 12 mm3
    assert rows[0]["diameter_mm"] == pytest.approx((6 * 48.0 / np.pi) ** (1 / 3))
    diagonal = np.zeros((4, 4, 4), bool)
    diagonal[0, 0, 0] = diagonal[1, 1, 1] = True  # 26-connected: one lesion
    assert len(lesion_table(diagonal, diagonal, (1.0, 1.0, 1.0))[0]) == 1
    assert lesion_table(pred, np.zeros_like(ref), (1.0, 1.0, 1.0)) == ([], 2)


def test_sensitivity_by_size_bins():
    lesions = pd.DataFrame({"diameter_mm": [3.0, 8.0, 12.0, 15.0, 40.0], "detected": [False, True, True, False, True]})
    table = sensitivity_by_size(lesions, [0.0, 10.0, 20.0]).set_index("size_bin")
    assert list(table.index) == size_bin_labels([0.0, 10.0, 20.0]) == ["0-10 mm", "10-20 mm", ">=20 mm"]
    assert table["lesions"].tolist() == [2, 2, 1] and table["detected"].tolist() == [1, 1, 1]
    assert table.loc["0-10 mm", "sensitivity"] == 0.5
    assert table.loc[">=20 mm", "ci_low"] < 1.0 == table.loc[">=20 mm", "ci_high"]  # Wilson, one of one
    empty = sensitivity_by_size(lesions.iloc[:0], [0.0, 10.0])
    assert empty["lesions"].tolist() == [0, 0] and empty["sensitivity"].isna().all()


def test_cohen_kappa_hand_checked():
    a = np.array([1, 1, 0, 0], bool)
    assert cohen_kappa(a, a) == pytest.approx(1.0)
    assert cohen_kappa(a, ~a) == pytest.approx(-1.0)
    # observed 3/4, chance 0.5*0.25 + 0.5*0.75 = 0.5 -> (0.75 - 0.5) / 0.5
    assert cohen_kappa(np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0])) == pytest.approx(0.5)
    # 2x2 table [[20, 5], [10, 15]]: po = 0.7, pe = 0.5*0.6 + 0.5*0.4 = 0.5 -> 0.4
    ref = np.array([1] * 25 + [0] * 25, bool)
    pred = np.array([1] * 20 + [0] * 5 + [1] * 10 + [0] * 15, bool)
    assert cohen_kappa(ref, pred) == pytest.approx(0.4)
    assert np.isnan(cohen_kappa(np.ones(3), np.ones(3)))
    low, high = kappa_ci(ref, pred, 200, seed=0)
    assert low < 0.4 < high and (low, high) == kappa_ci(ref, pred, 200, seed=0)


def test_bootstrap_ci_is_seeded_and_brackets_mean():
    rows = np.array([[0.9, np.nan], [0.5, 0.7], [0.6, 0.8], [0.95, 0.85]])
    low, high = bootstrap_ci(rows, 300, seed=1)
    assert (low, high) == bootstrap_ci(rows, 300, seed=1)
    assert low <= np.nanmean(rows) <= high
    assert bootstrap_ci(rows[:1], 300, seed=1) == (0.9, 0.9)


def test_bootstrap_resamples_studies_not_series():
    """Two studies of two identical series each: resampling studies gives only 3 possible means."""
    rows = np.array([0.2, 0.2, 0.8, 0.8])
    low, high = bootstrap_ci(rows, 400, seed=0, groups=np.array(["s1", "s1", "s2", "s2"]))
    assert (low, high) == (pytest.approx(0.2), pytest.approx(0.8))
    assert bootstrap_ci(rows, 400, seed=0, groups=np.array(["s"] * 4)) == (0.5, 0.5)  # one study: no spread


def test_aggregate_per_group():
    frame = pd.DataFrame(
        {"device_id": ["a", "a", "b"], "study_id": ["x", "y", "z"], "dice_liver": [0.8, 0.6, 0.4],
         "dice_lesion": [np.nan, 0.5, np.nan], "hd95_liver": [2.0, 4.0, 6.0], "hd95_lesion": [np.nan, 8.0, np.nan],
         "lesions": [0, 2, 1], "lesions_detected": [0, 1, 0]}
    )
    table = aggregate(frame, "device_id", ["liver", "lesion"], 50, seed=0).set_index("device_id")
    assert table.loc["a", "n"] == 2 and table.loc["a", "n_studies"] == 2
    assert table.loc["a", "dice_mean"] == pytest.approx((0.8 + 0.6 + 0.5) / 3)
    assert table.loc["a", "dice_liver"] == pytest.approx(0.7)
    assert table.loc["a", "dice_liver_ci_low"] >= 0.6 and table.loc["a", "dice_liver_ci_high"] <= 0.8
    assert table.loc["a", "hd95_mean"] == pytest.approx((2 + 4 + 8) / 3)
    assert table.loc["a", "lesion_sensitivity"] == 0.5 and table.loc["b", "lesion_sensitivity"] == 0.0
    assert np.isnan(table.loc["b", "dice_lesion"])


def test_js_divergence_bounds():
    assert js_divergence([1, 2, 3], [1, 2, 3]) == pytest.approx(0.0, abs=1e-9)
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(1.0, abs=1e-6)


def test_pairwise_js_only_within_modality():
    hists = {"ct1": np.array([1.0, 0.0]), "ct2": np.array([1.0, 0.0]), "mr1": np.array([0.0, 1.0])}
    groups = {"ct1": "CT", "ct2": "CT", "mr1": "MR"}
    assert mean_pairwise_js(hists, groups) == pytest.approx(0.0, abs=1e-9)
    assert mean_pairwise_js(hists) > 0.5
    assert np.isnan(mean_pairwise_js({"mr1": hists["mr1"], "ct1": hists["ct1"]}, groups))


def test_device_histograms_sum_per_device():
    manifest = pd.DataFrame({"device_id": ["a", "a", "b"], "histogram": [[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]]})
    hists = device_histograms(manifest, "histogram")
    np.testing.assert_allclose(hists["a"], [1.0, 2.0])


def test_feature_js_separates_shifted_devices():
    rng = np.random.default_rng(0)
    same = {"a": rng.normal(size=(400, 8)), "b": rng.normal(size=(400, 8))}
    shifted = {"a": same["a"], "b": same["b"] + 3.0}
    assert feature_js(same) < 0.1
    assert feature_js(shifted) > 0.2  # the shift lives on one of the 4 components averaged
    assert np.isnan(feature_js({"a": same["a"]}))


def test_split_half_js_compares_a_device_with_itself_only():
    rng = np.random.default_rng(0)
    # each series is one patient: its own offset; the second device's patients sit 3 units away
    patients = lambda shift: [rng.normal(size=(60, 8)) + rng.normal(scale=0.3) + shift for _ in range(6)]
    series = {"a": patients(0.0), "b": patients(3.0)}
    across = feature_js({d: np.concatenate(s) for d, s in series.items()})
    floor = split_half_js(series)
    assert across > 0.2 and floor < across / 2  # the devices differ by more than their patients
    # patients that differ a lot make a high floor, whatever the devices do
    varied = {d: [s + rng.normal(scale=2.0) for s in ss] for d, ss in series.items()}
    assert split_half_js(varied) > floor
    assert np.isnan(split_half_js({"a": series["a"][:1], "b": series["b"][:1]}))  # one series per device: no halves
