"""The only identifiers that leave ingest: salted pseudonyms and a scanner slug."""

from __future__ import annotations

import re

from medsegllm.common.deid import pseudonym


def slug(text: str) -> str:
    """Lower-case, every run of non-alphanumerics collapsed to one underscore, trimmed."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def device_id(manufacturer: str, model_name: str, station: str = "") -> str:
    """slug(Manufacturer) + "_" + slug(ManufacturerModelName); 'unknown' for a missing part or both.
    `station` (a `station_token`) is appended as "_st<token>" to tell apart two scanners of one model."""
    if not slug(manufacturer) and not slug(model_name):
        base = "unknown"
    else:
        base = f"{slug(manufacturer) or 'unknown'}_{slug(model_name) or 'unknown'}"
    return f"{base}_st{station}" if station else base


def header_device_id(manufacturer: str, model_name: str, station_name: str, by_station: bool, salt: str) -> str:
    """The device_id of a series as ingest writes it (`ingest.device_station` says whether the station
    counts); segment uses the same, so a scanner seen in training keeps its identity at inference."""
    return device_id(manufacturer, model_name, station_token(station_name, salt) if by_station else "")


def station_token(station_name: str, salt: str) -> str:
    """Six hex digits of a salted pseudonym of StationName ('' when blank): a scanner's own name may
    identify the site (PS3.15 replaces it), so only this leaves ingest."""
    return pseudonym(f"station:{station_name}", salt)[:6] if station_name.strip() else ""


def pseudonyms(series_uid: str, study_uid: str, patient_id: str, accession: str, salt: str) -> dict[str, str]:
    """Manifest identity columns; the reports stage derives accession_id with the same function."""
    return {
        "series_id": pseudonym(series_uid, salt),
        "study_id": pseudonym(study_uid, salt),
        "patient_id": pseudonym(patient_id, salt),
        "accession_id": pseudonym(accession, salt),
    }
