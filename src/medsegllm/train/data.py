"""Training samples: 2D axial slices or 3D patches of labelled and pseudo-labelled train-split series.

Demo volumes are tiny, so every series is loaded into memory once and batches are cut from it
with numpy (crop/pad to the ROI, flips, lesion-slice oversampling), which is faster than a
transform pipeline at this size. Both modes draw from one index of axial slices: a 2D sample is
a crop of the drawn slice, a 3D sample a patch that contains it (so series are drawn in
proportion to their depth, and lesion oversampling works the same way).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from medsegllm.common.io import load_nifti
from medsegllm.common.splits import assign_split
from medsegllm.config import Params, ScannerAugParams
from medsegllm.knowledge import LESION_CLASS, SEG_CLASSES, SUBTYPE_KEYS
from medsegllm.train.scanner_aug import simulate_scanner


@dataclass
class SeriesData:
    series_id: str
    image: np.ndarray  # (X,Y,Z) float32 in [0,1]
    label: np.ndarray  # (X,Y,Z) uint8 class indices
    weight: np.ndarray | None  # (X,Y,Z) float32 pseudo-label confidence weight; None for voxel labels
    device_idx: int
    study_idx: int
    text_emb: np.ndarray | None  # report description embedding, when the study has a report
    subtype_idx: int  # index into SUBTYPE_KEYS, -1 when the report names no subtype


@dataclass
class TrainSamples:
    series: list[SeriesData]
    device_ids: list[str]
    slices: np.ndarray  # (N,2) rows of (series index, z): the slice a 2D crop is cut from / a 3D patch contains
    lesion_slices: np.ndarray  # indices into `slices` whose (pseudo)label has usable lesion voxels
    text_dim: int

    @property
    def n_labelled(self) -> int:
        return sum(s.weight is None for s in self.series)

    @property
    def n_pseudo(self) -> int:
        return sum(s.weight is not None for s in self.series)


def load_prompts(findings_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Class prompts in SEG_CLASSES order and subtype prompts in SUBTYPE_KEYS order."""
    table = pd.read_parquet(Path(findings_dir) / "class_prompts.parquet")

    def ordered(kind: str, names: tuple[str, ...]) -> np.ndarray:
        rows = table[table["kind"] == kind].set_index("name")
        missing = [n for n in names if n not in rows.index]
        if missing:
            raise ValueError(f"class_prompts.parquet lacks {kind} prompts for {missing}")
        return np.stack([np.asarray(rows.loc[n, "embedding"], dtype=np.float32) for n in names])

    return ordered("seg_class", SEG_CLASSES), ordered("subtype", SUBTYPE_KEYS)


def load_findings(findings_dir: Path) -> pd.DataFrame:
    """findings.parquet indexed by accession_id (first report per accession)."""
    table = pd.read_parquet(Path(findings_dir) / "findings.parquet")
    return table.drop_duplicates("accession_id").set_index("accession_id")


def train_split(ingest_dir: Path, params: Params) -> pd.DataFrame:
    """Manifest rows of the train split."""
    manifest = pd.read_parquet(Path(ingest_dir) / "manifest.parquet")
    split = assign_split(manifest, params.split.holdout_devices, params.split.val_fraction, params.seed)
    return manifest[split.to_numpy() == "train"].reset_index(drop=True)


def _subtype_index(value: object) -> int:
    return SUBTYPE_KEYS.index(value) if isinstance(value, str) and value in SUBTYPE_KEYS else -1


def build_samples(
    ingest_dir: Path, findings_dir: Path, pseudo_dir: Path | None, params: Params, labelled_only: bool = False
) -> TrainSamples:
    """Load the labelled (and, with `pseudo_dir`, pseudo-labelled) train-split series as slices.

    `device_ids` are the devices of the series actually used, so every DAN branch gets data.
    """
    ingest_dir = Path(ingest_dir)
    rows = train_split(ingest_dir, params)
    findings = load_findings(findings_dir)
    pseudo: dict[str, pd.Series] = {}
    if pseudo_dir is not None and not labelled_only:
        table = pd.read_parquet(Path(pseudo_dir) / "pseudolabels.parquet")
        pseudo = {r.series_id: r for r in table.itertuples(index=False)}
    used = rows[rows["has_label"].astype(bool) | rows["series_id"].isin(list(pseudo))]
    if used.empty:
        raise ValueError("no labelled or pseudo-labelled series in the train split")
    device_ids = sorted(used["device_id"].unique().tolist())
    studies = {acc: i for i, acc in enumerate(sorted(used["accession_id"].astype(str).unique()))}
    text_dim = len(findings["embedding"].iloc[0]) if len(findings) else 0
    series: list[SeriesData] = []
    for row in used.itertuples(index=False):
        image, _ = load_nifti(ingest_dir / row.volume_path)
        if bool(row.has_label):
            label, _ = load_nifti(ingest_dir / row.label_path)
            weight = None
        else:
            entry = pseudo[row.series_id]
            label, _ = load_nifti(Path(pseudo_dir) / entry.mask_path)
            weight = np.asarray(load_nifti(Path(pseudo_dir) / entry.confidence_path)[0], dtype=np.float32)
        found = findings.loc[row.accession_id] if row.accession_id in findings.index else None
        series.append(
            SeriesData(
                series_id=row.series_id,
                image=np.asarray(image, dtype=np.float32),
                label=np.asarray(label, dtype=np.uint8),
                weight=weight,
                device_idx=device_ids.index(row.device_id),
                study_idx=studies[str(row.accession_id)],
                text_emb=None if found is None else np.asarray(found["embedding"], dtype=np.float32),
                subtype_idx=-1 if found is None else _subtype_index(found["subtype"]),
            )
        )
    return TrainSamples(series, device_ids, *index_slices(series), text_dim)


def index_slices(series: list[SeriesData]) -> tuple[np.ndarray, np.ndarray]:
    """(slices, lesion_slices) of `TrainSamples`; rerun whenever labels change (pseudo-label refresh)."""
    slices, lesion = [], []
    for i, s in enumerate(series):
        usable = s.label == LESION_CLASS if s.weight is None else (s.label == LESION_CLASS) & (s.weight > 0)
        has_lesion = usable.any(axis=(0, 1))
        for z in range(s.image.shape[2]):
            if has_lesion[z]:
                lesion.append(len(slices))
            slices.append((i, z))
    return np.asarray(slices, dtype=np.int64), np.asarray(lesion, dtype=np.int64)


def _crop_start(size: int, roi: int, rng: np.random.Generator, focus: int | None) -> int:
    """Random window start; with `focus`, the window contains that coordinate."""
    if size <= roi:
        return 0
    lo, hi = 0, size - roi
    if focus is not None:
        lo, hi = max(lo, focus - roi + 1), min(hi, focus)
    return int(rng.integers(lo, hi + 1))


def _crop(array: np.ndarray, roi: tuple[int, ...], start: tuple[int, ...], fill: float) -> np.ndarray:
    """Cut an roi-sized window at `start`, padding with `fill` where the slice (or volume) is smaller."""
    out = np.full(roi, fill, dtype=array.dtype)
    part = array[tuple(slice(s, s + r) for s, r in zip(start, roi))]
    out[tuple(slice(0, n) for n in part.shape)] = part
    return out


def augment_intensity(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random gamma, contrast, brightness and noise on a [0,1] slice or patch: scanners differ in exactly these."""
    out = np.clip(image, 0.0, 1.0) ** np.exp(rng.uniform(-0.35, 0.35))
    out = (out - 0.5) * rng.uniform(0.85, 1.15) + 0.5 + rng.uniform(-0.06, 0.06)
    out = out + rng.normal(0.0, rng.uniform(0.0, 0.03), size=out.shape)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _draw_slices(samples: TrainSamples, n: int, labelled_share: float | None, rng: np.random.Generator) -> np.ndarray:
    """n indices into `samples.slices`: uniform, or `labelled_share` of them from voxel-labelled series."""
    if labelled_share is None:
        return rng.integers(0, len(samples.slices), n)
    labelled = np.asarray([s.weight is None for s in samples.series], dtype=bool)[samples.slices[:, 0]]
    if labelled.all() or not labelled.any():
        return rng.integers(0, len(samples.slices), n)
    n_labelled = int(round(labelled_share * n))
    return np.concatenate([rng.choice(np.flatnonzero(labelled), n_labelled), rng.choice(np.flatnonzero(~labelled), n - n_labelled)])


def sample_batch(
    samples: TrainSamples,
    batch_size: int,
    roi: tuple[int, ...],
    lesion_share: float,
    rng: np.random.Generator,
    intensity_aug: float = 0.0,
    labelled_share: float | None = None,
    scanner_aug: ScannerAugParams | None = None,
) -> dict[str, torch.Tensor]:
    """A random batch: `lesion_share` of it from lesion slices (cropped around a lesion voxel).

    `roi` (x, y) cuts 2D slice crops: image (B,1,X,Y), label and weight (B,X,Y); `roi` (x, y, z)
    cuts 3D patches containing the drawn slice: image (B,1,X,Y,Z), label and weight (B,X,Y,Z).
    Flips are in-plane only (x, y) in both modes. `intensity_aug` is the chance per sample of a
    random intensity change (`augment_intensity`). `labelled_share` of the other slices come from
    voxel-labelled series when there are both kinds (else every slice is drawn alike). An enabled
    `scanner_aug` then simulates another scanner's noise, resolution and bias field (`simulate_scanner`).
    """
    n_lesion = int(round(lesion_share * batch_size)) if len(samples.lesion_slices) else 0
    picks = np.concatenate(
        [rng.choice(samples.lesion_slices, n_lesion), _draw_slices(samples, batch_size - n_lesion, labelled_share, rng)]
    ).astype(np.int64)
    images, labels, weights = [], [], []
    meta = {"device": [], "study": [], "subtype": [], "pseudo": [], "has_text": []}
    text = np.zeros((batch_size, max(samples.text_dim, 1)), dtype=np.float32)
    volumetric = len(roi) == 3
    for b, k in enumerate(picks):
        si, z = samples.slices[k]
        s = samples.series[si]
        image, label = (s.image, s.label) if volumetric else (s.image[:, :, z], s.label[:, :, z])
        weight = s.weight if s.weight is None or volumetric else s.weight[:, :, z]
        focus: tuple[int | None, ...] = (None, None, int(z)) if volumetric else (None, None)
        if b < n_lesion:
            usable = s.label[:, :, z] == LESION_CLASS
            if s.weight is not None:
                usable &= s.weight[:, :, z] > 0
            xs, ys = np.nonzero(usable)
            j = int(rng.integers(len(xs)))
            focus = (int(xs[j]), int(ys[j]), *focus[2:])
        start = tuple(_crop_start(image.shape[a], roi[a], rng, focus[a]) for a in range(len(roi)))
        crops = [_crop(image, roi, start, 0.0), _crop(label, roi, start, 0),
                 np.ones(roi, np.float32) if weight is None else _crop(weight, roi, start, 1.0).astype(np.float32, copy=False)]
        for axis in (0, 1):
            if rng.random() < 0.5:
                crops = [np.flip(c, axis) for c in crops]
        if intensity_aug > 0 and rng.random() < intensity_aug:
            crops[0] = augment_intensity(crops[0], rng)
        if scanner_aug is not None and scanner_aug.enabled:
            crops[0] = simulate_scanner(crops[0], scanner_aug, rng)
        images.append(crops[0])
        labels.append(crops[1])
        weights.append(crops[2])
        meta["device"].append(s.device_idx)
        meta["study"].append(s.study_idx)
        meta["subtype"].append(s.subtype_idx)
        meta["pseudo"].append(s.weight is not None)
        meta["has_text"].append(s.text_emb is not None)
        if s.text_emb is not None:
            text[b] = s.text_emb
    return {
        "image": torch.from_numpy(np.ascontiguousarray(np.stack(images)))[:, None],
        "label": torch.from_numpy(np.ascontiguousarray(np.stack(labels)).astype(np.int64)),
        "weight": torch.from_numpy(np.ascontiguousarray(np.stack(weights))),
        "device": torch.tensor(meta["device"], dtype=torch.long),
        "study": torch.tensor(meta["study"], dtype=torch.long),
        "subtype": torch.tensor(meta["subtype"], dtype=torch.long),
        "pseudo": torch.tensor(meta["pseudo"], dtype=torch.bool),
        "has_text": torch.tensor(meta["has_text"], dtype=torch.bool),
        "text": torch.from_numpy(text),
    }


def describe(samples: TrainSamples) -> str:
    """One line for logs: how much of each kind of data training sees."""
    return json.dumps(
        {"labelled": samples.n_labelled, "pseudo": samples.n_pseudo, "slices": len(samples.slices),
         "lesion_slices": len(samples.lesion_slices), "devices": samples.device_ids}
    )
