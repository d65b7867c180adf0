"""Fixtures for the model/train/pseudolabel tests; the data builders live in synthetic.py."""

from pathlib import Path

import numpy as np
import pytest

from medsegllm.knowledge import SEG_CLASSES, SUBTYPE_KEYS
from tests.model.synthetic import unit_vectors, write_stage_dirs


@pytest.fixture
def stage_dirs(tmp_path: Path) -> dict[str, Path]:
    return write_stage_dirs(tmp_path)


@pytest.fixture
def prompts() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return unit_vectors(rng, len(SEG_CLASSES)), unit_vectors(rng, len(SUBTYPE_KEYS))
