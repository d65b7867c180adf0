"""torch.compile (inductor) for training and inference, with the reasons it cannot run on a machine."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from medsegllm.model.dan import DomainAwareNorm
from medsegllm.model.inference import predict_volume


def compile_blocker(device: torch.device) -> str | None:
    """Why inductor cannot compile on this machine, or None."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception as exc:  # inductor raises InvalidCxxCompiler (or an OS error) without a usable g++
        return f"no C++ compiler for inductor ({type(exc).__name__}: {exc})"
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return "triton is not installed"
    return None


def compile_for_inference(model: nn.Module, batch_size: int = 32, precision: str = "auto") -> str | None:
    """Compile the model's forward in place for many inference calls (segment over a folder, the bench).

    `predict_volume` then pads every window batch to `batch_size`, so inductor builds one graph instead
    of one per batch shape; it is built here, on one empty window (10-40 s on 2 CPU cores, once per
    process), so the first series' latency does not carry it. The weights are frozen into the graph
    (oneDNN prepacks the convolutions): compile after the last weight change. Returns why the model
    stays eager, or None. The graph is built for `precision` (predict_volume's): calling with another
    one builds a second graph. Batch-statistics normalization (DAN's test-time statistics, for unseen or every scanner)
    would see the padding, so such a model is not compiled.
    """
    if getattr(model, "train_params", None) is None:
        return "not a MedSegLLM network"
    if model.router.any_batch_statistics and any(isinstance(m, DomainAwareNorm) for m in model.modules()):
        return "DAN test-time statistics normalize each batch by itself, and padded batches would change them"
    blocker = compile_blocker(next(model.parameters()).device)
    if blocker is not None:
        return blocker
    model.compile(options={"freezing": True})
    model.fixed_batch = batch_size
    empty = np.zeros(model.roi_size if len(model.roi_size) == 3 else (*model.roi_size, 1), dtype=np.float32)
    predict_volume(model, empty, model.device_ids[0] if model.device_ids else "", batch_size, precision=precision)
    return None
