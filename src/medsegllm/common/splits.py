"""Train/validation split: held-out devices and a stable hash share of the rest."""

from __future__ import annotations

import hashlib

import pandas as pd


def assign_split(manifest: pd.DataFrame, holdout_devices: list[str], val_fraction: float, seed: int) -> pd.Series:
    """'val' for held-out devices and a seeded hash share of the others; labelled studies train."""

    def one(row) -> str:
        if row.device_id in holdout_devices:
            return "val"
        if bool(row.has_label):
            return "train"
        h = int(hashlib.sha256(f"{seed}:{row.series_id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        return "val" if h < val_fraction else "train"

    return manifest.apply(one, axis=1).rename("split")
