"""The real offline sentence encoder, loaded once for this module."""

import numpy as np
import pytest

from medsegllm.reports import embed
from medsegllm.reports.run import class_prompts_table

TEXTS = [
    "Hepatocellular carcinoma, 32 mm, in the right lobe of the liver: arterially hyperenhancing mass with washout.",
    "Renal cell carcinoma, 40 mm, in the lower pole of the left kidney: heterogeneously enhancing exophytic renal mass.",
    "No focal liver or renal lesion.",
    "No focal liver or renal lesion.",
]


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return embed.encode(TEXTS, batch_size=2)


def test_shape_dtype_and_unit_norm(vectors):
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(vectors[2], vectors[3])
    assert embed.encode([]).shape == (0, 384)
    assert embed.model_id() == "all-MiniLM-L6-v2"


def test_embeddings_carry_meaning(vectors):
    prompts = class_prompts_table()
    by_name = {row["name"]: np.asarray(row["embedding"]) for row in prompts.to_pylist()}
    assert vectors[0] @ by_name["hcc"] > vectors[0] @ by_name["rcc"]
    assert vectors[1] @ by_name["rcc"] > vectors[1] @ by_name["hcc"]
