"""Lesion post-processing on constructed probability maps: which components stay, what replaces the rest."""

import numpy as np
import pytest

from medsegllm.config import PostprocessParams
from medsegllm.knowledge import LESION_CLASS, SEG_CLASSES
from medsegllm.model.postprocess import HOST_CLASSES, label_map, sphere_volume_mm3

LIVER = SEG_CLASSES.index("liver")
KIDNEY = SEG_CLASSES.index("kidney")


def _probs(shape: tuple[int, ...]) -> np.ndarray:
    """Background everywhere, a liver block in the first half of x."""
    probs = np.zeros((len(SEG_CLASSES), *shape), dtype=np.float32)
    probs[0] = 0.6
    probs[LIVER][: shape[0] // 2] = 0.9
    return probs


def _paint_lesion(probs: np.ndarray, region: tuple[slice, ...]) -> None:
    probs[(LESION_CLASS, *region)] = 0.95


def test_hosts_are_the_organs_lesions_occur_in() -> None:
    assert set(HOST_CLASSES) == {SEG_CLASSES.index("liver"), SEG_CLASSES.index("kidney")}


def test_big_lesion_in_the_liver_stays_and_a_small_one_goes_back_to_liver() -> None:
    probs = _probs((20, 20, 10))
    _paint_lesion(probs, (slice(2, 6), slice(2, 6), slice(2, 5)))  # 48 voxels of 1 mm3: 4.5 mm sphere
    _paint_lesion(probs, (slice(8, 9), slice(8, 9), slice(2, 3)))  # one voxel
    labels = label_map(probs, (1.0, 1.0, 1.0), PostprocessParams(min_lesion_diameter_mm=4.0))
    assert (labels[2:6, 2:6, 2:5] == LESION_CLASS).all()
    assert labels[8, 8, 2] == LIVER  # the next most probable class, not background
    assert (labels == LESION_CLASS).sum() == 48


def test_a_lesion_touching_no_organ_is_dropped() -> None:
    probs = _probs((20, 20, 10))
    _paint_lesion(probs, (slice(14, 18), slice(2, 6), slice(2, 5)))  # in the background half, far from the liver
    labels = label_map(probs, (1.0, 1.0, 1.0), PostprocessParams(min_lesion_diameter_mm=0.0))
    assert not (labels == LESION_CLASS).any()
    kept = label_map(probs, (1.0, 1.0, 1.0), PostprocessParams(min_lesion_diameter_mm=0.0, lesions_in_organs=False))
    assert (kept == LESION_CLASS).sum() == 48


def test_a_lesion_at_the_organ_border_counts_as_in_the_organ() -> None:
    probs = _probs((20, 20, 10))
    _paint_lesion(probs, (slice(10, 14), slice(2, 6), slice(2, 5)))  # starts right where the liver ends
    labels = label_map(probs, (1.0, 1.0, 1.0), PostprocessParams(min_lesion_diameter_mm=0.0))
    assert (labels == LESION_CLASS).sum() == 48


@pytest.mark.parametrize("spacing, kept", [((1.0, 1.0, 2.0), True), ((0.5, 0.5, 1.0), False)])
def test_size_is_physical_volume(spacing: tuple[float, float, float], kept: bool) -> None:
    probs = _probs((20, 20, 6))
    _paint_lesion(probs, (slice(2, 5), slice(2, 5), slice(1, 3)))  # 18 voxels: 36 mm3, or 4.5 mm3
    cfg = PostprocessParams(min_lesion_diameter_mm=3.0)
    assert sphere_volume_mm3(3.0) == pytest.approx(14.137, abs=1e-3)
    labels = label_map(probs, spacing, cfg)
    assert bool((labels == LESION_CLASS).sum() == 18) == kept


def test_organ_specks_become_background_and_both_kidneys_stay() -> None:
    probs = _probs((24, 24, 8))
    probs[KIDNEY][14:18, 2:6, 2:6] = 0.95  # left kidney, 64 voxels
    probs[KIDNEY][14:18, 16:19, 2:6] = 0.95  # right kidney, 48 voxels
    probs[KIDNEY][21, 21, 6] = 0.95  # kidney speck
    probs[LIVER][22, 2, 1] = 0.95  # liver speck, far from the liver block (x < 12)
    labels = label_map(probs, (1.0, 1.0, 1.0), PostprocessParams())
    assert (labels == KIDNEY).sum() == 64 + 48
    assert labels[21, 21, 6] == 0 and labels[22, 2, 1] == 0
    assert (labels[:12] == LIVER).all()
    kept = label_map(probs, (1.0, 1.0, 1.0), PostprocessParams(organ_bodies=False))
    assert kept[21, 21, 6] == KIDNEY and kept[22, 2, 1] == LIVER


def test_organ_parts_touching_at_an_edge_are_one_body() -> None:
    probs = _probs((24, 24, 8))
    probs[LIVER][12, 12, 4] = 0.95  # touches the liver block (x 0-11) only along an edge of voxel (11, 11, 4)
    probs[LIVER][11, 12:, :] = 0.1  # so its face neighbours (11, 12, 4) and (12, 11, 4) are background
    labels = label_map(probs, (1.0, 1.0, 1.0), PostprocessParams())
    assert labels[12, 12, 4] == LIVER


def test_a_dropped_lesion_leaves_no_organ_speck_behind() -> None:
    probs = _probs((24, 24, 8))
    _paint_lesion(probs, (slice(20, 22), slice(20, 22), slice(5, 7)))  # far from the liver
    probs[LIVER][20:22, 20:22, 5:7] = 0.9  # its next most probable class: liver
    labels = label_map(probs, (1.0, 1.0, 1.0), PostprocessParams(min_lesion_diameter_mm=0.0))
    assert not (labels[20:22, 20:22, 5:7] == LESION_CLASS).any()
    assert (labels[20:22, 20:22, 5:7] == 0).all()
    assert (labels[:12] == LIVER).all()


def test_disabled_is_the_plain_argmax() -> None:
    probs = _probs((12, 12, 6))
    _paint_lesion(probs, (slice(10, 11), slice(1, 2), slice(1, 2)))
    labels = label_map(probs, (1.0, 1.0, 1.0), PostprocessParams(enabled=False))
    np.testing.assert_array_equal(labels, probs.argmax(0))
