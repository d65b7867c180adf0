"""Read reports from JSONL, CSV and DICOM SR, scrubbing PHI as each text is read.

Identity: `accession_id = pseudonym(AccessionNumber, salt)`, the same function ingest applies to the
DICOM AccessionNumber, so findings join the manifest on accession_id. A report that only carries a
StudyInstanceUID gets `accession_id = pseudonym(StudyInstanceUID, salt)` instead; it then joins
nothing in the manifest unless the accession number is also the study UID.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from medsegllm.common.deid import pseudonym, quiet_dicom_values
from medsegllm.reports.scrub import scrub_phi

TABLE_SUFFIXES = (".jsonl", ".csv")
_KEY_COLUMNS = ("accession_number", "study_instance_uid")
_NOT_DICOM = (".jsonl", ".csv", ".json", ".gz", ".nii", ".parquet", ".txt", ".md", ".yaml", ".yml", ".png", ".html")


@dataclass(frozen=True)
class Report:
    report_id: str
    accession_id: str
    text: str  # PHI-scrubbed
    phi_replaced: int


def load_reports(input_path: Path, salt: str) -> list[Report]:
    """All reports under input_path (a JSONL/CSV file, or a folder), in a stable order."""
    input_path = Path(input_path)
    if not input_path.exists():
        raise FileNotFoundError(f"reports input not found: {input_path}")
    seen: Counter[str] = Counter()
    reports = []
    for key, raw in _raw_reports(input_path):
        text, replaced = scrub_phi(raw)
        # A key can carry several reports (addenda); the occurrence number keeps report_id unique.
        report_id = pseudonym(f"{key}#{seen[key]}", salt)
        seen[key] += 1
        reports.append(Report(report_id, pseudonym(key, salt), text, replaced))
    if not reports:
        raise ValueError(f"no reports found in {input_path} (JSONL, CSV or DICOM SR)")
    return reports


def _raw_reports(input_path: Path) -> Iterator[tuple[str, str]]:
    if input_path.is_file():
        yield from _table_rows(input_path)
        return
    for path in sorted(p for p in input_path.iterdir() if p.is_file() and p.suffix.lower() in TABLE_SUFFIXES):
        yield from _table_rows(path)
    for path in sorted(p for p in input_path.rglob("*") if p.is_file() and not p.name.lower().endswith(_NOT_DICOM)):
        report = read_sr(path)
        if report is not None:
            yield report


def _table_rows(path: Path) -> Iterator[tuple[str, str]]:
    if path.suffix.lower() == ".csv":
        rows = _csv_rows(path)
    elif path.suffix.lower() == ".jsonl":
        rows = _jsonl_rows(path)
    else:
        raise ValueError(f"{path.name}: reports must be .jsonl or .csv (or a folder)")
    for line, row in rows:
        yield _row_key(row, f"{path.name}:{line}"), str(row.get("report_text") or "")


def _csv_rows(path: Path) -> Iterator[tuple[int, dict]]:
    import pandas as pd

    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    _check_columns(set(table.columns), path.name)
    for i, row in enumerate(table.to_dict(orient="records"), start=2):
        yield i, row


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict]]:
    with path.open() as handle:
        for i, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError(f"{path.name}:{i}: each line must be a JSON object")
            _check_columns(set(row), f"{path.name}:{i}")
            yield i, row


def _check_columns(columns: set[str], where: str) -> None:
    if "report_text" not in columns or not columns.intersection(_KEY_COLUMNS):
        raise ValueError(
            f"{where}: reports need a 'report_text' column and an 'accession_number' or 'study_instance_uid' "
            f"column; found {sorted(columns)}"
        )


def _row_key(row: dict, where: str) -> str:
    for column in _KEY_COLUMNS:
        value = row.get(column)
        if value is not None and str(value).strip():
            return str(value).strip()
    raise ValueError(f"{where}: both 'accession_number' and 'study_instance_uid' are empty")


def read_sr(path: Path) -> tuple[str, str] | None:
    """(AccessionNumber or StudyInstanceUID, text) of a DICOM SR file; None for anything else."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    quiet_dicom_values()
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"])
        if header.get("Modality") != "SR":
            return None
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, EOFError):
        return None
    key = str(ds.get("AccessionNumber") or "").strip() or str(ds.get("StudyInstanceUID") or "").strip()
    if not key:
        raise ValueError(f"{path.name}: DICOM SR without AccessionNumber or StudyInstanceUID")
    return key, "\n".join(_text_values(ds))


def _text_values(item) -> Iterator[str]:
    """TextValue of every TEXT item of the content tree, depth first, in document order."""
    for child in item.get("ContentSequence", []):
        if child.get("ValueType") == "TEXT" and child.get("TextValue"):
            yield str(child.TextValue)
        yield from _text_values(child)
