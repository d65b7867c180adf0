"""Harmonization: one resampling path for images and labels, intensity maps per modality."""

from __future__ import annotations

import numpy as np
import pytest

from medsegllm.config import IngestParams
from medsegllm.ingest.harmonize import harmonize_label, harmonize_volume, mr_range, raw_histogram

PARAMS = IngestParams(target_spacing=(2.0, 2.0, 3.0))
# An LPS-stored (x towards L, y towards P) grid, as DICOM axial slices arrive before reorientation.
AFFINE = np.array([[-1.0, 0, 0, 20], [0, -1.0, 0, 30], [0, 0, 1.5, -10], [0, 0, 0, 1]])


def test_image_and_label_land_on_one_ras_grid():
    array = np.zeros((20, 16, 12), dtype=np.float32)
    array[5:15, 4:12, 3:9] = 100.0
    image, image_affine = harmonize_volume(array, AFFINE, "CT", PARAMS)
    label, label_affine = harmonize_label((array > 0).astype(np.uint8), AFFINE, PARAMS)
    assert image.shape == label.shape == (10, 8, 6) and label.dtype == np.uint8
    np.testing.assert_allclose(image_affine, label_affine)
    np.testing.assert_allclose(np.diag(image_affine)[:3], PARAMS.target_spacing)  # RAS: positive diagonal
    assert set(np.unique(label)) == {0, 1}
    assert int(label.sum()) * 2 * 2 * 3 == pytest.approx(int((array > 0).sum()) * 1.5, rel=0.2)  # mm^3 kept


def _lps_affine(rotation: np.ndarray, spacing: list[float], origin: list[float]) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3], affine[:3, 3] = rotation * np.asarray(spacing), origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


@pytest.mark.parametrize("rotation", [np.eye(3), np.array([[0.0, 0, 1], [1, 0, 0], [0, -1, 0]]),  # axial, sagittal
                                      np.linalg.qr(np.random.default_rng(3).normal(size=(3, 3)))[0]])  # oblique
def test_stacked_slice_layout_resamples_like_a_c_ordered_volume(rotation):
    """Ingest's F-contiguous (X, Y, Z) volumes take the transposed path in _resample; same grid, same labels,
    intensities equal to float rounding, whatever the orientation."""
    rng = np.random.default_rng(0)
    stacked = rng.normal(100.0, 50.0, size=(30, 40, 36)).astype(np.float32).transpose(2, 1, 0)  # (X, Y, Z) of (Z, Y, X)
    assert stacked.flags.f_contiguous and not stacked.flags.c_contiguous
    c_ordered = np.ascontiguousarray(stacked)
    affine = _lps_affine(rotation, [0.8, 0.9, 1.7], [-12.0, 7.0, 30.0])
    params = IngestParams(target_spacing=(2.0, 2.5, 3.0))
    (fast, fast_affine), (ref, ref_affine) = (harmonize_volume(a, affine, "CT", params) for a in (stacked, c_ordered))
    assert fast.shape == ref.shape and fast.flags.c_contiguous
    np.testing.assert_allclose(fast_affine, ref_affine, atol=1e-9)
    np.testing.assert_allclose(fast, ref, atol=1e-6)
    mask = stacked > 120.0
    (fast_label, _), (ref_label, _) = (harmonize_label(m, affine, params) for m in (mask, np.ascontiguousarray(mask)))
    np.testing.assert_array_equal(fast_label, ref_label)


def test_ct_window_maps_hu_to_unit_interval():
    array = np.array([-1000.0, -160.0, 40.0, 240.0, 3000.0], dtype=np.float32).reshape(5, 1, 1)
    params = IngestParams(target_spacing=(1.0, 1.0, 1.0))
    out, _ = harmonize_volume(np.repeat(np.repeat(array, 2, 1), 2, 2), np.eye(4), "CT", params)
    np.testing.assert_allclose(out[:, 0, 0], [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-6)


def test_mr_range_ignores_air_and_is_gain_invariant():
    rng = np.random.default_rng(0)
    body = rng.normal(500, 50, size=(30, 30, 10)).astype(np.float32)
    body[:10] = 0.0  # air
    low, high = mr_range(body, (1.0, 99.0))
    assert 350 < low < 450 and 550 < high < 650
    a, _ = harmonize_volume(body, np.eye(4), "MR", IngestParams(target_spacing=(1.0, 1.0, 1.0)))
    b, _ = harmonize_volume(3 * body, np.eye(4), "MR", IngestParams(target_spacing=(1.0, 1.0, 1.0)))
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_raw_histogram_counts_every_voxel(modality: str):
    values = np.array([-5000.0, 0.0, 100.0, 9000.0], dtype=np.float32)
    hist = raw_histogram(values, modality, 16)
    assert hist.shape == (16,) and hist.sum() == pytest.approx(1.0)
