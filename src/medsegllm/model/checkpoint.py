"""Model checkpoints that load with `weights_only=True`: state dict plus plain-typed metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from medsegllm.common.io import atomic_path
from medsegllm.config import TrainParams
from medsegllm.model.network import build_model


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict) -> Path:
    """Atomically write {"state_dict", "meta"}; meta must hold only plain types and tensors."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"state_dict": state, "meta": meta}, tmp)
    return Path(path)


def model_meta(model: nn.Module, classes: list[str], extra: dict | None = None) -> dict:
    """The metadata `load_model` needs to rebuild `model`, in plain types."""
    meta = {
        "variant": model.variant,
        "train": model.train_params.model_dump(mode="json"),
        "device_ids": list(model.device_ids),
        "classes": list(classes),
        "class_prompts": _prompts(model, "class_prompts", len(classes)),
        "subtype_prompts": _prompts(model, "subtype_prompts", 0),
    }
    meta.update(extra or {})
    return meta


def _prompts(model: nn.Module, name: str, n_rows: int) -> list[list[float]]:
    buffer = getattr(model, name, None)
    if buffer is None:  # the baseline has no text head: keep the shapes only
        return [[0.0] for _ in range(n_rows)]
    return buffer.detach().cpu().tolist()


def load_model(path: str | Path, map_location: str = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the network from the checkpoint's metadata and load its weights (eval mode)."""
    payload = torch.load(str(path), map_location=map_location, weights_only=True)
    meta = payload["meta"]
    train = TrainParams.model_validate(meta["train"])
    model = build_model(
        train,
        list(meta["device_ids"]),
        np.asarray(meta["class_prompts"], dtype=np.float32),
        np.asarray(meta["subtype_prompts"], dtype=np.float32),
    )
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, meta
