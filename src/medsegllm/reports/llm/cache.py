"""Generated text on disk, keyed by everything that determines it, so a rerun generates nothing.

The key hashes the exact chat sent (which holds the grounded findings and the prompt), the backend,
the model id, the prompt version and the generation settings. Entries hold raw model output; the
guard judges it on every read, so a stricter guard needs no regeneration.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from medsegllm.common import io


def cache_key(chat: list[dict], backend: str, model_id: str, prompt_version: str, max_new_tokens: int) -> str:
    payload = {"chat": chat, "backend": backend, "model_id": model_id, "prompt_version": prompt_version,
               "max_new_tokens": max_new_tokens}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class TextCache:
    """One small JSON file per key under `folder/<2 hex>/`; writes are atomic. folder None: no cache."""

    def __init__(self, folder: Path | None):
        self.folder = None if folder is None else Path(folder)

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> str | None:
        if self.folder is None or not self._path(key).is_file():
            return None
        return json.loads(self._path(key).read_text())["text"]

    def put(self, key: str, text: str, meta: dict) -> None:
        if self.folder is not None:
            io.write_json(self._path(key), {"text": text, **meta})
