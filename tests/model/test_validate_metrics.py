"""Per-series metrics, aggregation and divergence on small hand-built arrays."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medsegllm.validate.divergence import device_histograms, feature_js, js_divergence, mean_pairwise_js
from medsegllm.validate.metrics import (
    aggregate,
    bootstrap_ci,
    cohen_kappa,
    dice_per_class,
    hd95_per_class,
    lesion_detection,
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


def test_lesion_detection_counts_overlapping_components():
    ref = np.zeros((10, 10, 4), bool)
    ref[1:3, 1:3, 1] = ref[6:8, 6:8, 2] = True
    pred = np.zeros_like(ref)
    pred[2, 2, 1] = True
    assert lesion_detection(pred, ref) == (2, 1)
    assert lesion_detection(pred, np.zeros_like(ref)) == (0, 0)


def test_cohen_kappa():
    a = np.array([1, 1, 0, 0], bool)
    assert cohen_kappa(a, a) == pytest.approx(1.0)
    assert cohen_kappa(a, ~a) == pytest.approx(-1.0)
    assert cohen_kappa(np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0])) == pytest.approx(0.5)
    assert np.isnan(cohen_kappa(np.ones(3), np.ones(3)))


def test_bootstrap_ci_is_seeded_and_brackets_mean():
    rows = np.array([[0.9, np.nan], [0.5, 0.7], [0.6, 0.8], [0.95, 0.85]])
    low, high = bootstrap_ci(rows, 300, seed=1)
    assert (low, high) == bootstrap_ci(rows, 300, seed=1)
    assert low <= np.nanmean(rows) <= high
    assert bootstrap_ci(rows[:1], 300, seed=1) == (0.9, 0.9)


def test_aggregate_per_group():
    frame = pd.DataFrame(
        {"device_id": ["a", "a", "b"], "dice_liver": [0.8, 0.6, 0.4], "dice_lesion": [np.nan, 0.5, np.nan]}
    )
    table = aggregate(frame, "device_id", ["dice_liver", "dice_lesion"], 50, seed=0).set_index("device_id")
    assert table.loc["a", "n"] == 2
    assert table.loc["a", "dice_mean"] == pytest.approx((0.8 + 0.6 + 0.5) / 3)
    assert table.loc["b", "dice_lesion"] != table.loc["b", "dice_lesion"]  # NaN


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
