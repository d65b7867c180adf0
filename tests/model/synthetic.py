"""Tiny synthetic stage outputs (ingest, findings) and params for model/train/pseudolabel tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from medsegllm.common.io import save_nifti, write_parquet
from medsegllm.config import Params
from medsegllm.knowledge import SEG_CLASSES, SUBTYPE_KEYS

SHAPE = (32, 32, 6)
AFFINE = np.diag([4.0, 4.0, 5.0, 1.0])
DEVICES = ("dev_a", "dev_b")


def unit_vectors(rng: np.random.Generator, n: int, dim: int = 384) -> np.ndarray:
    v = rng.normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _ball(centre: tuple[float, float, float], radius: tuple[float, float, float]) -> np.ndarray:
    x, y, z = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    return ((x - centre[0]) / radius[0]) ** 2 + ((y - centre[1]) / radius[1]) ** 2 + ((z - centre[2]) / radius[2]) ** 2 <= 1


def phantom(rng: np.random.Generator, lesion: bool, device: int) -> tuple[np.ndarray, np.ndarray]:
    """Liver on the patient right (high RAS x), two kidneys, optionally a liver lesion."""
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[_ball((21, 16, 2.5), (8, 9, 4))] = 1
    label[_ball((8, 8, 2.5), (3, 3, 3))] = 2
    label[_ball((8, 24, 2.5), (3, 3, 3))] = 2
    if lesion:
        label[_ball((22, 16, 2.5), (3, 3, 2))] = 3
    levels = np.array([0.1, 0.5, 0.7, 0.3]) + 0.05 * device
    image = levels[label] + rng.normal(0, 0.03, SHAPE)
    return np.clip(image, 0, 1).astype(np.float32), label


def write_stage_dirs(tmp_path: Path) -> dict[str, Path]:
    """6 series on 2 devices; 2 labelled; series 0, 2, 3 have a (reported) liver lesion."""
    rng = np.random.default_rng(0)
    ingest, findings = tmp_path / "ingest", tmp_path / "findings"
    rows, reports = [], []
    for i in range(6):
        sid, acc, device = f"s{i}", f"a{i}", i % 2
        lesion = i in (0, 2, 3)
        image, label = phantom(rng, lesion, device)
        save_nifti(ingest / f"volumes/{sid}.nii.gz", image, AFFINE)
        labelled = i < 2
        if labelled:
            save_nifti(ingest / f"labels/{sid}.nii.gz", label, AFFINE)
        rows.append({"series_id": sid, "accession_id": acc, "modality": "CT", "device_id": DEVICES[device],
                     "has_label": labelled, "volume_path": f"volumes/{sid}.nii.gz",
                     "label_path": f"labels/{sid}.nii.gz" if labelled else None})
        lesions = [{"organ": "liver", "location": "right lobe", "laterality": None, "size_mm": 24.0,
                    "subtype": "hcc", "certainty": "definite"}] if lesion else []
        reports.append({"accession_id": acc, "tumour_present": lesion, "subtype": "hcc" if lesion else None,
                        "lesions_json": json.dumps(lesions), "embedding": unit_vectors(rng, 1)[0].tolist()})
    write_parquet(ingest / "manifest.parquet", pd.DataFrame(rows))
    write_parquet(findings / "findings.parquet", pd.DataFrame(reports))
    names = [*SEG_CLASSES, *SUBTYPE_KEYS]
    kinds = ["seg_class"] * len(SEG_CLASSES) + ["subtype"] * len(SUBTYPE_KEYS)
    prompts = pd.DataFrame({"name": names, "kind": kinds, "embedding": list(unit_vectors(rng, len(names)))})
    write_parquet(findings / "class_prompts.parquet", prompts)
    return {"ingest": ingest, "findings": findings, "root": tmp_path}


def tiny_params(**train: object) -> Params:
    """A network and schedule small enough for a unit test."""
    base = {"channels": [8, 16, 32], "roi_size": [32, 32], "epochs": 2, "steps_per_epoch": 2, "batch_size": 4,
            "num_threads": 1}
    base.update(train)
    return Params.model_validate(
        {"split": {"holdout_devices": [], "val_fraction": 0.0}, "pseudolabel": {"teacher_epochs": 1, "confidence_threshold": 0.3}, "train": base}
    )


class Interrupted(Exception):
    """Stands in for a kill between epochs in resume tests."""


def stop_after_epoch(epoch: int):
    """A `train_model` log_callback that interrupts the run once `epoch` is logged (and checkpointed)."""

    def callback(row: dict) -> None:
        if row["epoch"] == epoch:
            raise Interrupted

    return callback

