"""Progressive Domain Mixing: MixStyle across devices (features) and Fourier amplitude mixing (images), with a
probability that ramps up.

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


def mix_amplitudes(images: torch.Tensor, device_idx: torch.Tensor, probability: float, strength: float,
                   band: float) -> torch.Tensor:
    """Image-level domain mixing: each image keeps its Fourier phase (its anatomy) and takes up to `strength`
    of a partner's amplitude (its scanner's contrast, blur and noise spectrum) from another device, on the
    lowest `band` share of frequencies, as in Fourier-based domain generalization (FACT, Xu et al. 2021;
    FedDG, Liu et al. 2021). Each image is mixed with chance `probability`. Images (B,1,*S) in [0, 1];
    the result is clipped to [0, 1].
    """
    partner = cross_device_partners(device_idx)
    spatial = tuple(range(2, images.dim()))
    spectrum = torch.fft.fftn(images.float(), dim=spatial)
    amplitude, phase = spectrum.abs(), spectrum.angle()
    n = images.shape[0]
    mixed_here = (torch.rand(n) < probability).to(images.device) & (partner != torch.arange(n, device=images.device))
    lam = torch.where(mixed_here, strength * torch.rand(n).to(images.device), 0.0).view(-1, *(1,) * (images.dim() - 1))
    low = torch.ones(images.shape[2:], dtype=torch.bool, device=images.device)
    for axis, size in enumerate(images.shape[2:]):  # |frequency| within band * Nyquist on every axis
        freq = torch.fft.fftfreq(size, device=images.device).abs() <= band * 0.5
        low = low & freq.view([-1 if a == axis else 1 for a in range(len(spatial))])
    mixed = torch.where(low, (1 - lam) * amplitude + lam * amplitude[partner], amplitude)
    out = torch.fft.ifftn(torch.polar(mixed, phase), dim=spatial).real
    return out.clamp(0.0, 1.0).to(images.dtype)


def set_pdm_probability(model: nn.Module, probability: float) -> None:
    """Set the mixing probability of every PDM layer in `model` (called once per epoch)."""
    for module in model.modules():
        if isinstance(module, ProgressiveDomainMixing):
            module.probability = probability
