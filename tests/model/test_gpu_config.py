"""configs/gpu.yaml: the paper-size (~27 M parameters) network, built and run on CPU at a small input."""

from pathlib import Path

import numpy as np
import torch

from medsegllm.config import load_params
from medsegllm.knowledge import SEG_CLASSES, SUBTYPE_KEYS
from medsegllm.model.network import build_model
from tests.model.synthetic import unit_vectors

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_config_is_the_paper_size_and_runs() -> None:
    gpu, base = load_params(ROOT / "configs/gpu.yaml"), load_params(ROOT / "params.yaml")
    assert gpu.train.device == "cuda" and gpu.train.compile
    assert gpu.train.batch_size > base.train.batch_size and min(gpu.train.roi_size) > max(base.train.roi_size)
    assert gpu.split == base.split and gpu.train.variant == base.train.variant  # the rest is params.yaml's
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    model = build_model(gpu.train, ["dev_a", "dev_b"], unit_vectors(rng, len(SEG_CLASSES)), unit_vectors(rng, len(SUBTYPE_KEYS)))
    n = sum(p.numel() for p in model.parameters())
    assert 25e6 <= n <= 29e6, n
    model.eval()
    with torch.no_grad():
        logits = model(torch.rand(1, 1, 32, 32), torch.tensor([0]))
    assert logits.shape == (1, len(SEG_CLASSES), 32, 32) and torch.isfinite(logits).all()
