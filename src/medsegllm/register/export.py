"""The registered model's serving form: one input, any scanner.

The trained network takes (x, device_idx); a served model does not know the scanner's training
index, so the export routes every sample through DAN's shared path, the branch meant for devices
never seen in training. It lives at module level so MLflow's pickle serialization can import it.
"""

from __future__ import annotations

import torch
from torch import nn


class ExportedSegmenter(nn.Module):
    """Wraps a segmentation network: forward(x (B,1,H,W)) -> class probabilities (B,C,H,W)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shared = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)
        return torch.softmax(self.model(x, shared).float(), dim=1)
