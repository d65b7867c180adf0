"""Salted, stable pseudonyms: the only form in which identifiers leave ingest."""

from __future__ import annotations

import hashlib
import json
import hmac
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from medsegllm.config import IngestParams


def resolve_salt(ingest: "IngestParams") -> str:
    """The salt comes from the environment, else from a local file created once (never committed)."""
    value = os.environ.get(ingest.salt_env)
    if value:
        return value
    path = Path(ingest.salt_file)
    if not path.exists():
        _create_salt_file(path)
    return path.read_text().strip()


def _create_salt_file(path: Path) -> None:
    """Owner-only from the first byte, and created only if absent (a hard link cannot replace a
    file): when two first runs race, both end up with the winner's salt, never with their own."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(16))
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


def quiet_dicom_values() -> None:
    """Stop pydicom's warnings about malformed values, which quote the value (a name in a UI, an ISO
    birth date in a DA) into stderr and logs. Every module that reads hospital DICOM calls it; the
    values are still read, and checked where they are used."""
    from pydicom import config

    config.settings.reading_validation_mode = config.IGNORE


def pseudonym(value: str, salt: str, prefix: str = "") -> str:
    """HMAC-SHA256 of the identifier: stable for one salt, not reversible without it."""
    digest = hmac.new(salt.encode(), str(value).strip().encode(), hashlib.sha256).hexdigest()
    return f"{prefix}{digest[:16]}"


def salt_fingerprint(salt: str) -> str:
    """A pseudonym of a fixed string: tells whether two stages used the same salt without revealing it."""
    return pseudonym("medsegllm:salt-fingerprint", salt)


def _recorded_fingerprint(stage_dir: Path) -> str | None:
    summary = Path(stage_dir) / "summary.json"
    return json.loads(summary.read_text()).get("salt_fingerprint") if summary.exists() else None


def check_same_salt(stage_dir: Path, salt: str | None = None, other_dir: Path | None = None) -> None:
    """Stop with a clear message when pseudonyms would not join: `stage_dir` was written under another
    salt than `salt` (or than `other_dir`). The salt is not a DVC dependency, so this is the guard."""
    recorded = _recorded_fingerprint(stage_dir)
    expected = salt_fingerprint(salt) if salt is not None else _recorded_fingerprint(other_dir) if other_dir else None
    if recorded is not None and expected is not None and recorded != expected:
        raise ValueError(
            f"{stage_dir} was written under a different pseudonym salt than this run uses; "
            "rerun ingest and reports with the current salt (e.g. `dvc repro --force ingest reports`)"
        )
