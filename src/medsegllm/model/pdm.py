"""Progressive Domain Mixing: MixStyle across devices, with a probability that ramps up.

Mixing instance feature statistics between samples of different scanners makes early features
device-invariant; ramping the probability lets the network first learn the task, then the
invariance.
"""

from __future__ import annotations

import torch
from torch import nn

from medsegllm.config import PDMParams
from medsegllm.model.dan import DomainRouter


def pdm_probability(epoch: int, params: PDMParams) -> float:
    """p(epoch) = p_max * min(1, epoch / ramp_epochs); 0 when PDM is disabled."""
    if not params.enabled:
        return 0.0
    return float(params.p_max * min(1.0, max(epoch, 0) / params.ramp_epochs))


def cross_device_partners(device_idx: torch.Tensor) -> torch.Tensor:
    """For each sample, a random partner from another device, or itself when there is none."""
    n = device_idx.shape[0]
    other = device_idx[None, :] != device_idx[:, None]
    scores = torch.rand(n, n).to(device_idx.device).masked_fill(~other, -1.0)
    partner = scores.argmax(dim=1)
    has_other = other.any(dim=1)
    return torch.where(has_other, partner, torch.arange(n, device=device_idx.device))


class ProgressiveDomainMixing(nn.Module):
    """MixStyle layer that mixes only across devices; identity in eval mode."""

    def __init__(self, router: DomainRouter, beta: float, eps: float = 1e-6) -> None:
        super().__init__()
        self._router = router
        self.beta = beta
        self.eps = eps
        self.probability = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device_idx = self._router.device_idx
        if not self.training or self.probability <= 0 or device_idx is None or x.shape[0] < 2:
            return x
        if torch.rand(1).item() >= self.probability:
            return x
        partner = cross_device_partners(device_idx)
        spatial = tuple(range(2, x.dim()))  # (H, W) or (X, Y, Z): instance statistics per channel
        ones = (1,) * (x.dim() - 1)
        mu = x.mean(dim=spatial, keepdim=True).detach()
        sig = (x.var(dim=spatial, keepdim=True) + self.eps).sqrt().detach()
        lam = torch.distributions.Beta(self.beta, self.beta).sample((x.shape[0], *ones)).to(x)
        lam = torch.where((partner == torch.arange(x.shape[0], device=x.device)).view(-1, *ones), 1.0, lam)
        mu_mix = lam * mu + (1 - lam) * mu[partner]
        sig_mix = lam * sig + (1 - lam) * sig[partner]
        return (x - mu) / sig * sig_mix + mu_mix


def set_pdm_probability(model: nn.Module, probability: float) -> None:
    """Set the mixing probability of every PDM layer in `model` (called once per epoch)."""
    for module in model.modules():
        if isinstance(module, ProgressiveDomainMixing):
            module.probability = probability
