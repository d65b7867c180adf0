"""Dynamic pseudo-labels: an EMA of the student re-labels the pseudo-labelled series during training.

Every `train.pseudolabels.refresh_every` epochs from `refresh_start`, the EMA teacher predicts each
pseudo-labelled series on whole slices (`predict_volume`), the prediction is fused with the report's
knowledge prior by the pseudolabel stage's own `pseudo_label_series`, and the new masks and
confidence weights replace the old ones in the in-memory training samples. One row per round goes
to `pseudo_rounds.csv` (round 0: the pseudolabel stage's labels), with pseudo-label Dice when the
hidden truth is given; the truth is read for that log only and never reaches the loss.

A round draws no random numbers and reads only the EMA weights and fixed inputs, so under DDP every
rank computes the same labels without a broadcast, and a resumed run rebuilds the current labels
from the last round's teacher weights kept in the checkpoint.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from medsegllm.common.io import atomic_path, load_nifti
from medsegllm.config import Params
from medsegllm.knowledge import LESION_CLASS
from medsegllm.model.inference import predict_volume
from medsegllm.pseudolabel.fusion import lesion_dice, organ_dice, pseudo_label_series, report_lesions
from medsegllm.train import distributed
from medsegllm.train.data import TrainSamples, index_slices, load_findings, train_split

ROUND_COLUMNS = ("epoch", "round", "n_series", "fraction_changed", "confident_fraction",
                 "dice_lesion_tumour", "dice_lesion", "dice_organs", "n_scored", "n_scored_tumour", "seconds")
ROUNDS_FILE = "pseudo_rounds.csv"


@dataclass
class PseudoTarget:
    """What a refresh needs for one pseudo-labelled series besides its image."""

    index: int  # into samples.series
    device_id: str
    affine: np.ndarray
    lesions: list[dict]
    tumour_present: bool
    truth: np.ndarray | None  # hidden truth on the ingest grid, for the Dice log only


def pseudo_targets(
    ingest_dir: Path, findings_dir: Path, samples: TrainSamples, params: Params, truth: dict[str, Path] | None = None
) -> list[PseudoTarget]:
    """The pseudo-labelled series of `samples` with their report, affine and (when given) truth mask."""
    from medsegllm.common.truth import truth_on_grid

    rows = train_split(Path(ingest_dir), params).set_index("series_id")
    findings = load_findings(findings_dir)
    targets = []
    for i, s in enumerate(samples.series):
        if s.weight is None:
            continue
        row = rows.loc[s.series_id]
        _, affine = load_nifti(Path(ingest_dir) / row["volume_path"])
        lesions, tumour = report_lesions(findings, row["accession_id"])
        reference = truth_on_grid(truth[s.series_id], params.ingest) if truth and s.series_id in truth else None
        targets.append(PseudoTarget(i, samples.device_ids[s.device_idx], affine, lesions, tumour,
                                    None if reference is None else np.asarray(reference, dtype=np.uint8)))
    return targets


def ema_average(decay: float, warmup: bool):
    """AveragedModel's multi_avg_fn: EMA with `decay`, or with min(decay, (1+n)/(10+n)) after n updates."""
    fixed = get_ema_multi_avg_fn(decay)

    def update(ema_params: list[torch.Tensor], params: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        n = float(n_averaged)
        step = get_ema_multi_avg_fn(min(decay, (1.0 + n) / (10.0 + n))) if warmup else fixed
        step(ema_params, params, n_averaged)

    return update


def write_rounds(out_dir: Path, rows: list[dict]) -> Path:
    """`pseudo_rounds.csv` (a header only when no pseudo-labels were used)."""
    path = Path(out_dir) / ROUNDS_FILE
    with atomic_path(path) as tmp:
        pd.DataFrame(rows, columns=list(ROUND_COLUMNS)).to_csv(tmp, index=False)
    return path


class PseudoRefresh:
    """The EMA teacher and the pseudo-label rounds of one training run (hooks called by `train_model`)."""

    def __init__(self, samples: TrainSamples, targets: list[PseudoTarget], params: Params, out_dir: Path) -> None:
        self.samples, self.targets = samples, targets
        self.cfg, self.fusion = params.train.pseudolabels, params.pseudolabel
        self.out_dir = Path(out_dir)
        self.ema: AveragedModel | None = None
        self.teacher_state: dict[str, torch.Tensor] = {}  # EMA weights of the last round, to rebuild its labels
        self.rows: list[dict] = []

    @property
    def enabled(self) -> bool:
        return self.cfg.refresh_every > 0

    def attach(self, model: nn.Module) -> None:
        """Start the EMA as a copy of the (unwrapped) student and log round 0, the stage's own labels."""
        if self.enabled:
            self.ema = AveragedModel(model, multi_avg_fn=ema_average(self.cfg.ema_decay, self.cfg.ema_warmup), use_buffers=True)
            self.ema.update_parameters(model)  # the first update copies: ema_0 = student_0
        self.rows = [self._score(0, 0, None, 0.0)]
        self._write()

    def update(self, model: nn.Module) -> None:
        """After each optimizer step: ema <- d * ema + (1 - d) * student (buffers included; d: `ema_average`)."""
        if self.ema is not None:
            self.ema.update_parameters(model)

    def due(self, epoch: int) -> bool:
        """Whether a round follows the (1-based) `epoch` just finished."""
        start, every = self.cfg.refresh_start, self.cfg.refresh_every
        return every > 0 and epoch >= start and (epoch - start) % every == 0

    def end_epoch(self, epoch: int) -> dict | None:
        """Run a round when due: relabel with the EMA teacher, log it; the round's row, else None."""
        if self.ema is None or not self.due(epoch):
            return None
        t0 = time.perf_counter()
        previous = [self.samples.series[t.index].label for t in self.targets]
        if distributed.ranks().parallel:  # batch-norm statistics differ per rank: all ranks take rank 0's teacher
            for tensor in self.ema.module.state_dict().values():
                dist.broadcast(tensor, src=0)
        self._relabel(self.ema.module)
        self.teacher_state = {k: v.detach().cpu().clone() for k, v in self.ema.module.state_dict().items()}
        row = self._score(epoch, len(self.rows), previous, time.perf_counter() - t0)
        self.rows.append(row)
        self._write()
        return row

    def state_dict(self) -> dict:
        return {"ema": self.ema.state_dict() if self.ema is not None else {}, "teacher": self.teacher_state,
                "rows": self.rows}

    def load_state_dict(self, state: dict) -> None:
        """Restore the EMA and the log; relabel with the last round's teacher so the samples match the checkpoint."""
        if self.ema is not None and state["ema"]:
            self.ema.load_state_dict(state["ema"])
        self.rows = list(state["rows"])
        self.teacher_state = dict(state["teacher"])
        if self.teacher_state and self.ema is not None:
            teacher = copy.deepcopy(self.ema.module)
            teacher.load_state_dict(self.teacher_state)
            self._relabel(teacher)
        self._write()

    def _write(self) -> None:
        if distributed.ranks().main:
            write_rounds(self.out_dir, self.rows)

    def _relabel(self, teacher: nn.Module) -> None:
        """Fuse the teacher's prediction with each report's prior; swap labels and weights into the samples."""
        for t in self.targets:
            s = self.samples.series[t.index]
            probs = predict_volume(teacher, s.image, t.device_id, mirror=self.cfg.refresh_mirror)
            mask, _, weight = pseudo_label_series(probs, s.image, t.affine, t.lesions, t.tumour_present, self.fusion)
            s.label, s.weight = mask, weight
        self.samples.slices, self.samples.lesion_slices = index_slices(self.samples.series)

    def _score(self, epoch: int, round_: int, previous: list[np.ndarray] | None, seconds: float) -> dict:
        """One log row: label change since the last round, confident share, Dice vs truth where known."""
        series = [self.samples.series[t.index] for t in self.targets]
        voxels = sum(s.label.size for s in series)
        changed = sum(int((s.label != p).sum()) for s, p in zip(series, previous)) if previous is not None else 0
        scored = [(s.label, t.truth) for s, t in zip(series, self.targets) if t.truth is not None]
        tumour = [lesion_dice(label, truth) for label, truth in scored if (truth == LESION_CLASS).any()]
        return {
            "epoch": epoch, "round": round_, "n_series": len(series),
            "fraction_changed": changed / voxels if voxels else 0.0,
            "confident_fraction": float(np.mean([(s.weight > 0).mean() for s in series])) if series else None,
            "dice_lesion_tumour": float(np.mean(tumour)) if tumour else None,
            "dice_lesion": float(np.mean([lesion_dice(a, b) for a, b in scored])) if scored else None,
            "dice_organs": float(np.mean([organ_dice(a, b) for a, b in scored])) if scored else None,
            "n_scored": len(scored), "n_scored_tumour": len(tumour), "seconds": seconds,
        }
