"""Nyul-style per-device MR standardization: constructed devices, held-out devices, reruns that change the map."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medsegllm.common.io import load_nifti
from medsegllm.config import IngestParams, MRStandardizationParams, SynthParams
from medsegllm.ingest.harmonize import harmonize_volume, histogram
from medsegllm.ingest.run import run_ingest
from medsegllm.ingest.standardize import STANDARDIZATION_FILE, apply_map, landmarks, learn
from medsegllm.validate.divergence import js_divergence

PARAMS = IngestParams(target_spacing=(2.0, 2.0, 2.0))
PERCENTILES = PARAMS.mr_standardization.landmarks
SALT = "standardize-salt"


def _phantom(seed: int) -> np.ndarray:
    """Air around a body of three tissues with noise: one 'image distribution', raw MR-like units."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, 40),) * 3, indexing="ij")
    r = np.sqrt(x**2 + y**2 + z**2)
    tissue = np.select([r < 0.3, r < 0.6, r < 0.9], [900.0, 500.0, 250.0], 5.0)
    return np.clip(tissue + rng.normal(0, np.where(r < 0.9, 40.0, 2.0)), 0, None)


def _normalized(raw: np.ndarray) -> np.ndarray:
    return harmonize_volume(raw, np.diag([2.0, 2.0, 2.0, 1.0]), "MR", PARAMS)[0]


def test_two_devices_with_different_contrast_end_up_on_one_profile():
    """Device B sees the same anatomy through a monotone, strongly non-linear response; B is held out,
    so its map comes from its own landmarks only."""
    a = [_normalized(30 * _phantom(s) ** 0.6) for s in (0, 1)]
    b = [_normalized(2000 * (_phantom(s) / 1000) ** 1.6) for s in (2, 3)]
    rows = [{"modality": "MR", "device_id": device, "mr_landmarks": landmarks(v, PERCENTILES)}
            for device, volumes in (("a", a), ("b", b)) for v in volumes]
    before = np.abs(np.mean([r["mr_landmarks"] for r in rows[:2]], 0) - np.mean([r["mr_landmarks"] for r in rows[2:]], 0))
    assert before.max() > 0.1, "the constructed contrast difference must be visible in the landmarks"
    model = learn(rows, MRStandardizationParams(), holdout_devices=["b"])
    assert model["training_devices"] == ["a"] and not model["devices"]["b"]["in_training"]
    np.testing.assert_allclose(model["standard_scale"], model["devices"]["a"]["landmarks"], atol=1e-4)
    mapped = {d: [apply_map(v, model["devices"][d]["map"]) for v in vols] for d, vols in (("a", a), ("b", b))}
    profiles = {d: np.mean([landmarks(v, PERCENTILES) for v in vols], 0) for d, vols in mapped.items()}
    assert np.abs(profiles["a"] - profiles["b"]).max() < 0.02
    def foreground(volumes):  # the voxels the landmarks describe
        return histogram(np.concatenate([v[v > 0] for v in volumes]), (0, 1), 64)

    js = [js_divergence(foreground(pa), foreground(pb)) for pa, pb in ((a, b), (mapped["a"], mapped["b"]))]
    assert js[1] < 0.3 * js[0]


def test_no_training_device_means_no_map():
    rows = [{"modality": "MR", "device_id": "b", "mr_landmarks": [0.2, 0.5, 0.8]}]
    model = learn(rows, MRStandardizationParams(landmarks=[25, 50, 75]), holdout_devices=["b"])
    assert model["standard_scale"] is None and model["devices"]["b"]["map"] is None and model["note"]


def test_maps_are_invertible_bijections_of_the_unit_interval():
    rows = [{"modality": "MR", "device_id": d, "mr_landmarks": lm}
            for d, lm in (("a", [0.1, 0.1, 0.7]), ("b", [0.3, 0.5, 0.6]))]  # a repeated landmark too
    mapping = learn(rows, MRStandardizationParams(landmarks=[25, 50, 75]), [])["devices"]["a"]["map"]
    knots = np.asarray(mapping)
    assert (np.diff(knots, axis=0) > 0).all() and knots[0].tolist() == [0, 0] and knots[-1].tolist() == [1, 1]
    values = np.linspace(0, 1, 1001, dtype=np.float32)
    np.testing.assert_allclose(apply_map(apply_map(values, mapping), mapping, inverse=True), values, atol=1e-5)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    from medsegllm.synth.cohort import generate_cohort

    root = tmp_path_factory.mktemp("standardize")
    generate_cohort(root / "cohort", SynthParams(n_studies=4, label_fraction=0.3), seed=1)
    return root / "cohort" / "dicom"


def _mr(out: Path) -> pd.DataFrame:
    manifest = pd.read_parquet(out / "manifest.parquet")
    return manifest[manifest.modality == "MR"].set_index("series_id")


def test_rerun_with_a_changed_map_rewrites_volumes_exactly(cohort, tmp_path):
    out = tmp_path / "out"
    run_ingest(cohort, out, IngestParams(), SALT)
    first = _mr(out)
    assert len(first) >= 2 and first.mr_map.map(lambda m: m is not None).all()
    model = json.loads((out / STANDARDIZATION_FILE).read_text())
    assert set(model["devices"]) == set(first.device_id) and model["enabled"]
    on = {sid: load_nifti(out / row.volume_path)[0] for sid, row in first.iterrows()}
    for sid, row in first.iterrows():  # the stored map's landmarks are the standard scale
        np.testing.assert_allclose(np.asarray(row.mr_map.tolist())[1:-1, 1], model["standard_scale"], atol=1e-4)

    off_params = IngestParams(mr_standardization=MRStandardizationParams(enabled=False))
    summary = run_ingest(cohort, out, off_params, SALT)
    assert summary["n_reused_series"] == summary["n_series"]  # nothing re-read from DICOM
    for sid, row in _mr(out).iterrows():
        assert row.mr_map is None
        volume = load_nifti(out / row.volume_path)[0]
        # inverting the map restores the robust-normalized volume the landmarks were taken from
        np.testing.assert_allclose(landmarks(volume, PERCENTILES), row.mr_landmarks, atol=2e-3)
        assert not np.allclose(volume, on[sid], atol=1e-3)

    holdout = [sorted(first.device_id)[0]]
    run_ingest(cohort, out, IngestParams(), SALT, holdout_devices=holdout)
    model = json.loads((out / STANDARDIZATION_FILE).read_text())
    assert holdout[0] not in model["training_devices"] and not model["devices"][holdout[0]]["in_training"]
    run_ingest(cohort, out, IngestParams(), SALT)
    for sid, row in _mr(out).iterrows():
        np.testing.assert_allclose(load_nifti(out / row.volume_path)[0], on[sid], atol=1e-5)


def test_series_map_for_inference_keeps_learned_maps_and_maps_a_new_device_from_its_own_series():
    from medsegllm.ingest.standardize import series_map

    a = [_normalized(30 * _phantom(s) ** 0.6) for s in (0, 1)]
    rows = [{"modality": "MR", "device_id": "a", "mr_landmarks": landmarks(v, PERCENTILES)} for v in a]
    model = learn(rows, MRStandardizationParams(), holdout_devices=[])
    new = _normalized(2000 * (_phantom(5) / 1000) ** 1.6)
    assert series_map(model, "a", new) == model["devices"]["a"]["map"]
    mapped = apply_map(new, series_map(model, "scanner_never_seen", new))
    np.testing.assert_allclose(landmarks(mapped, PERCENTILES), model["standard_scale"], atol=0.02)
    assert series_map({**model, "enabled": False}, "a", new) is None and series_map(None, "a", new) is None
