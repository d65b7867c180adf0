"""PHI audit: the identifiers a cohort's DICOM headers carry, and every place outputs could leak them."""

from __future__ import annotations

import gzip
from pathlib import Path

import pandas as pd
import pydicom


def cohort_identifiers(dicom_root: Path) -> set[str]:
    """Patient identifiers from the headers, in the forms they take in headers and report text."""
    found: set[str] = set()
    seen_series: set[str] = set()
    for path in sorted(p for p in dicom_root.rglob("*") if p.is_file()):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if ds.SeriesInstanceUID in seen_series:
            continue
        seen_series.add(ds.SeriesInstanceUID)
        for person in (ds.PatientName, ds.get("ReferringPhysicianName")):
            if person:
                found |= {str(person), f"{person.given_name} {person.family_name}"}
        birth = str(ds.get("PatientBirthDate", ""))
        if birth:
            found |= {birth, f"{birth[:4]}-{birth[4:6]}-{birth[6:]}"}
        for keyword in ("PatientID", "AccessionNumber", "InstitutionName", "PatientTelephoneNumbers",
                        "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            value = str(ds.get(keyword, "")).strip()
            if len(value) >= 6:
                found.add(value)
    return found


def readable(path: Path) -> bytes:
    """File content as a search can see it: parquet decoded, gzip inflated."""
    if path.suffix == ".parquet":
        return pd.read_parquet(path).to_csv().encode()
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data


def leaks(identifiers: set[str], roots: list[Path]) -> list[tuple[str, str]]:
    """(file, identifier) for every identifier found in any file below the roots.

    MLflow's copy of the package source (`artifacts/code/`) is skipped: the demo generator's own
    source holds the name vocabulary the synthetic patients are drawn from, which is not a leak.
    """
    hits = []
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            if "code" in path.relative_to(root).parts[:-1] and path.suffix == ".py":
                continue
            content = readable(path)
            hits += [(str(path), ident) for ident in identifiers if ident.encode() in content]
    return hits
