"""Salted, stable pseudonyms: the only form in which identifiers leave ingest."""

from __future__ import annotations

import hashlib
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
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(16))
        path.chmod(0o600)
    return path.read_text().strip()


def pseudonym(value: str, salt: str, prefix: str = "") -> str:
    """HMAC-SHA256 of the identifier: stable for one salt, not reversible without it."""
    digest = hmac.new(salt.encode(), str(value).strip().encode(), hashlib.sha256).hexdigest()
    return f"{prefix}{digest[:16]}"
