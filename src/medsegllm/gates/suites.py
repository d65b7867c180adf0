"""What each stage's outputs must satisfy, as Great Expectations suites defined in code.

Each stage maps to a list of `Table`s: a DataFrame loaded (and, where needed, given derived
columns such as "file exists") from the stage's output folder, with the expectations it must meet.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medsegllm.knowledge import ORGANS, SEG_CLASSES, SUBTYPE_KEYS


@dataclass(frozen=True)
class Table:
    name: str
    frame: pd.DataFrame
    expectations: list  # great_expectations.expectations.Expectation instances


def _exists(root: Path, rel: pd.Series) -> pd.Series:
    """True where the relative path is unset (nothing to check) or names an existing file."""
    return rel.map(lambda p: not isinstance(p, str) or (root / p).is_file())


def ingest_tables(out: Path) -> list[Table]:
    import great_expectations as gx

    E = gx.expectations
    manifest = pd.read_parquet(out / "manifest.parquet")
    manifest["volume_exists"] = _exists(out, manifest["volume_path"])
    manifest["label_exists"] = _exists(out, manifest["label_path"])
    manifest["label_consistent"] = manifest["has_label"] == manifest["label_path"].map(lambda p: isinstance(p, str))
    manifest["min_shape"] = manifest["shape"].map(lambda s: int(np.min(s)))
    quarantine = pd.read_parquet(out / "quarantine.parquet")
    summary = json.loads((out / "summary.json").read_text())
    accounted = summary["n_image_files"] + summary["n_label_files"] + summary["n_report_files"] + summary["n_quarantined_files"]
    totals = pd.DataFrame([{"n_files": summary["n_files"], "accounted": accounted, "quarantine_rows": len(quarantine)}])
    return [
        Table("manifest", manifest, [
            E.ExpectTableRowCountToBeBetween(min_value=1),
            E.ExpectColumnValuesToBeUnique(column="series_id"),
            E.ExpectColumnValuesToNotBeNull(column="device_id"),
            E.ExpectColumnValuesToBeInSet(column="modality", value_set=["CT", "MR"]),
            E.ExpectColumnValuesToBeBetween(column="n_slices", min_value=1),
            E.ExpectColumnValuesToBeBetween(column="min_shape", min_value=1),
            E.ExpectColumnValuesToBeInSet(column="volume_exists", value_set=[True]),
            E.ExpectColumnValuesToBeInSet(column="label_exists", value_set=[True]),
            E.ExpectColumnValuesToBeInSet(column="label_consistent", value_set=[True]),
        ]),
        Table("quarantine", quarantine, [E.ExpectColumnValuesToNotBeNull(column="reason")]),
        Table("accounting", totals, [E.ExpectColumnPairValuesToBeEqual(column_A="n_files", column_B="accounted")]),
    ]


def reports_tables(out: Path) -> list[Table]:
    import great_expectations as gx

    E = gx.expectations
    findings = pd.read_parquet(out / "findings.parquet")
    findings["embedding_dim"] = findings["embedding"].map(len)
    findings["embedding_norm"] = findings["embedding"].map(lambda v: float(np.linalg.norm(v)))
    prompts = pd.read_parquet(out / "class_prompts.parquet")
    prompts["embedding_dim"] = prompts["embedding"].map(len)
    return [
        Table("findings", findings, [
            E.ExpectTableRowCountToBeBetween(min_value=1),
            E.ExpectColumnValuesToBeUnique(column="report_id"),
            E.ExpectColumnValuesToNotBeNull(column="accession_id"),
            E.ExpectColumnValuesToNotBeNull(column="description"),
            E.ExpectColumnValuesToBeInSet(column="subtype", value_set=list(SUBTYPE_KEYS)),
            E.ExpectColumnValuesToBeInSet(column="organ", value_set=list(ORGANS)),
            E.ExpectColumnValuesToBeBetween(column="max_size_mm", min_value=0.5, max_value=300),
            E.ExpectColumnValuesToBeInSet(column="embedding_dim", value_set=[384]),
            E.ExpectColumnValuesToBeBetween(column="embedding_norm", min_value=0.99, max_value=1.01),
        ]),
        Table("class_prompts", prompts, [
            E.ExpectColumnValuesToBeInSet(column="embedding_dim", value_set=[384]),
            E.ExpectTableRowCountToEqual(value=len(SEG_CLASSES) + len(SUBTYPE_KEYS)),
        ]),
    ]


def pseudolabel_tables(out: Path) -> list[Table]:
    import great_expectations as gx

    E = gx.expectations
    table = pd.read_parquet(out / "pseudolabels.parquet")
    table["mask_exists"] = _exists(out, table["mask_path"])
    table["confidence_exists"] = _exists(out, table["confidence_path"])
    return [
        Table("pseudolabels", table, [
            E.ExpectColumnValuesToBeUnique(column="series_id"),
            E.ExpectColumnValuesToBeBetween(column="mean_confidence", min_value=0, max_value=1),
            E.ExpectColumnValuesToBeBetween(column="confident_fraction", min_value=0, max_value=1),
            E.ExpectColumnValuesToBeInSet(column="mask_exists", value_set=[True]),
            E.ExpectColumnValuesToBeInSet(column="confidence_exists", value_set=[True]),
        ]),
    ]


def train_tables(out: Path) -> list[Table]:
    import great_expectations as gx

    E = gx.expectations
    log = pd.read_csv(out / "train_log.csv")
    log["finite"] = np.isfinite(log["loss"])
    model = pd.DataFrame([{"model_bytes": (out / "model.pt").stat().st_size if (out / "model.pt").exists() else 0}])
    return [
        Table("train_log", log, [
            E.ExpectTableRowCountToBeBetween(min_value=1),
            E.ExpectColumnValuesToBeInSet(column="finite", value_set=[True]),
            E.ExpectColumnValuesToBeBetween(column="loss", min_value=0, max_value=1e4),
        ]),
        Table("model", model, [E.ExpectColumnValuesToBeBetween(column="model_bytes", min_value=1024)]),
    ]


def validate_tables(out: Path) -> list[Table]:
    import great_expectations as gx

    E = gx.expectations
    metrics = pd.DataFrame([json.loads((out / "metrics.json").read_text())])
    per_device = pd.read_csv(out / "per_device.csv")
    per_modality = pd.read_csv(out / "per_modality.csv")
    by_size = pd.read_csv(out / "lesion_detection.csv")
    unit = ["dice_mean", "dice_mean_ci_low", "dice_mean_ci_high", "js_intensity_raw", "js_intensity_harmonized",
            "js_features", "lesion_sensitivity"]

    def ci_brackets(column: str, low: str, high: str) -> list:
        """low <= value <= high wherever all are measured (a NaN mean has NaN bounds)."""
        return [E.ExpectColumnPairValuesAToBeGreaterThanB(column_A=a, column_B=b, or_equal=True,
                                                         ignore_row_if="either_value_is_missing")
                for a, b in ((column, low), (high, column))]

    def grouped() -> list:  # fresh instances: an expectation belongs to one suite only
        return [
            E.ExpectTableRowCountToBeBetween(min_value=1),
            E.ExpectColumnValuesToBeBetween(column="dice_mean", min_value=0, max_value=1),
            E.ExpectColumnValuesToBeBetween(column="n_studies", min_value=1),
            *ci_brackets("dice_mean", "ci_low", "ci_high"),
            *[e for c in SEG_CLASSES[1:] for e in ci_brackets(f"dice_{c}", f"dice_{c}_ci_low", f"dice_{c}_ci_high")],
        ]

    return [
        Table("metrics", metrics, [E.ExpectColumnValuesToBeBetween(column=c, min_value=0, max_value=1) for c in unit]
              + [E.ExpectColumnValuesToBeBetween(column="detection_kappa", min_value=-1, max_value=1),
                 E.ExpectColumnValuesToBeBetween(column="n_series", min_value=1)]),
        Table("per_device", per_device, [E.ExpectColumnValuesToBeUnique(column="device_id"), *grouped()]),
        Table("per_modality", per_modality, [E.ExpectColumnValuesToBeInSet(column="modality", value_set=["CT", "MR"]), *grouped()]),
        Table("lesion_detection", by_size, [
            E.ExpectTableRowCountToBeBetween(min_value=1),
            E.ExpectColumnValuesToBeUnique(column="size_bin"),
            E.ExpectColumnValuesToBeBetween(column="sensitivity", min_value=0, max_value=1),
            E.ExpectColumnPairValuesAToBeGreaterThanB(column_A="lesions", column_B="detected", or_equal=True),
        ]),
    ]


def register_tables(out: Path) -> list[Table]:
    import great_expectations as gx

    E = gx.expectations
    reg = pd.DataFrame([json.loads((out / "registration.json").read_text())])
    reg["version"] = reg["version"].astype(int)
    return [
        Table("registration", reg, [
            E.ExpectColumnValuesToBeBetween(column="version", min_value=1),
            E.ExpectColumnValuesToBeInSet(column="alias", value_set=["champion", "challenger"]),
            E.ExpectColumnValuesToNotBeNull(column="run_id"),
        ]),
    ]


SUITES: dict[str, Callable[[Path], list[Table]]] = {
    "ingest": ingest_tables,
    "reports": reports_tables,
    "pseudolabel": pseudolabel_tables,
    "train": train_tables,
    "validate": validate_tables,
    "register": register_tables,
}
