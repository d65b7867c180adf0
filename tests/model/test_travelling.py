"""Travelling subjects (bench/travelling.py): one protocol on every scanner, rescans differ by noise
alone, and the feature JS tells a device-dependent model from one that ignores the device."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn
from torch.nn import functional as F

from medsegllm.bench.travelling import TravellingScan, travelling_js, travelling_scans
from medsegllm.config import Params
from medsegllm.synth.scanners import SCANNERS


@pytest.fixture(scope="module")
def scans():
    return travelling_scans(2, seed=7, ingest=Params().ingest, mr_standardization=None)


def test_every_scanner_images_each_subject_twice_on_one_in_plane_grid(scans):
    assert len(scans) == 2 * len(SCANNERS) * 2
    assert {s.device_id for s in scans} == {s.device_id for s in SCANNERS}
    assert {s.volume.shape[:2] for s in scans} == {(80, 80)}  # 320 mm at 4 mm, whatever the scanner's matrix
    assert all(abs(s.volume.shape[2] - 30) <= 1 for s in scans)  # 150 mm at 5 mm


def test_a_rescan_keeps_the_subject_and_redraws_the_noise(scans):
    by_key = {(s.subject, s.device_id, s.session): s.volume for s in scans}
    ct = next(s.device_id for s in SCANNERS if s.modality == "CT")
    first, rescan, other = by_key[(0, ct, 0)], by_key[(0, ct, 1)], by_key[(1, ct, 0)]
    body = first > 0.05
    assert not np.array_equal(first, rescan)
    # zero-mean noise is all that differs: tissue values drawn per scan would shift the mean by ~0.01
    assert abs(float(np.mean(first[body] - rescan[body]))) < 0.002
    assert float(np.mean(np.abs(first - rescan))) < float(np.mean(np.abs(first - other)))


class _PooledImage(nn.Module):
    """A stand-in network whose 'bottleneck' is the image pooled 4x, plus `offset` times the device's index."""

    roi_size = (64, 64)
    total_stride = 4

    def __init__(self, device_ids: list[str], offset: float) -> None:
        super().__init__()
        self.device_ids, self.offset = device_ids, offset
        self.anchor = nn.Parameter(torch.zeros(1))  # gives the module a device

    def device_index(self, device_id: str) -> int:
        return self.device_ids.index(device_id)

    def outputs(self, x: torch.Tensor, device_idx: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = F.avg_pool2d(x, 4)
        shift = self.offset * device_idx.float().view(-1, 1, 1, 1)
        return {"bottleneck": torch.cat([pooled, pooled.roll(1, dims=2)], dim=1) + shift}


def _hand_made_scans(devices: dict[str, str], n_subjects: int = 3) -> list[TravellingScan]:
    """Subjects as smooth random volumes that change along z; each scan adds its own faint noise."""
    rng = np.random.default_rng(0)
    subjects = [ndimage.gaussian_filter(rng.random((32, 32, 40)), 3).astype(np.float32) for _ in range(n_subjects)]
    return [TravellingScan(k, session, device, modality, volume + 0.002 * rng.standard_normal(volume.shape).astype(np.float32))
            for k, volume in enumerate(subjects) for device, modality in devices.items() for session in (0, 1)]


def test_feature_js_on_travellers_separates_a_device_dependent_model():
    devices = {"ct_a": "CT", "ct_b": "CT", "mr_a": "MR", "mr_b": "MR"}
    scans = _hand_made_scans(devices)
    agnostic = travelling_js(_PooledImage(list(devices), 0.0), scans)
    biased = travelling_js(_PooledImage(list(devices), 0.05), scans)
    assert agnostic["js_travel"] < 0.05 and agnostic["js_travel_retest"] < 0.05
    assert biased["js_travel"] > 0.3
    # the offset is per device: each device's two sessions stay alike
    assert biased["js_travel_retest"] < 0.05


def test_feature_js_on_travellers_compares_devices_within_a_modality_only():
    devices = {"ct_a": "CT", "mr_a": "MR"}  # one device per modality: no pair to compare
    result = travelling_js(_PooledImage(list(devices), 0.05), _hand_made_scans(devices))
    assert np.isnan(result["js_travel"])
