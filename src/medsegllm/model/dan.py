"""Domain Awareness Normalization: per-device BatchNorm branches plus a shared branch.

Each scanner gets its own statistics and affine, so intensity/texture shifts between devices are
normalized away; a shared branch, trained on a random share of every device's samples, serves
devices never seen in training. The same layer serves 2D (BatchNorm2d) and 3D (BatchNorm3d) backbones.
"""

from __future__ import annotations

import torch
from torch import nn


class DomainRouter:
    """Per-forward routing state shared by every DAN layer of one model.

    `route` holds, per sample, the branch index: 0..n_devices-1 for a device branch, -1 for the
    shared branch. It is a plain object (not a module) so it is not part of the state dict.
    At inference the shared branch (`test_time_stats`) and the device branches (`seen_test_time_stats`)
    may normalize by the batch's own statistics instead of their running ones.
    """

    def __init__(self, n_devices: int, test_time_stats: bool = False, seen_test_time_stats: bool = False) -> None:
        self.n_devices = n_devices
        self.test_time_stats = test_time_stats
        self.seen_test_time_stats = seen_test_time_stats
        self.device_idx: torch.Tensor | None = None
        self.route: torch.Tensor | None = None

    def batch_statistics(self, index: int) -> bool:
        """Whether branch `index` (-1: shared) normalizes by the batch's own statistics at inference."""
        return self.test_time_stats if index < 0 else self.seen_test_time_stats

    @property
    def any_batch_statistics(self) -> bool:
        """Some branch normalizes by its batch at inference: outputs then depend on what else is in the batch."""
        return self.test_time_stats or self.seen_test_time_stats

    def set(self, device_idx: torch.Tensor, training: bool, shared_prob: float) -> None:
        """Pick each sample's branch; unseen devices (-1 or >= n_devices) take the shared path."""
        device_idx = device_idx.long()
        unseen = (device_idx < 0) | (device_idx >= self.n_devices)
        route = torch.where(unseen, torch.full_like(device_idx, -1), device_idx)
        if training and shared_prob > 0:
            shared = torch.rand(route.shape[0]) < shared_prob
            route = torch.where(shared.to(route.device), torch.full_like(route, -1), route)
        self.device_idx = device_idx
        self.route = route


class DomainAwareNorm(nn.Module):
    """BatchNorm with one branch per device and one shared branch, routed per sample.

    With `shared_affine`, the branches keep only their own statistics and one learned scale/shift
    follows them all: per-device statistics remove the scanner shift, while per-device affines
    (trained on one or two series each) would move every device to its own place in feature space.
    """

    def __init__(self, num_features: int, n_devices: int, router: DomainRouter, shared_affine: bool = False,
                 spatial_dims: int = 2) -> None:
        super().__init__()
        affine = not shared_affine
        batch_norm = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[spatial_dims]
        self.device_norms = nn.ModuleList(batch_norm(num_features, affine=affine) for _ in range(n_devices))
        self.shared_norm = batch_norm(num_features, affine=affine)
        self._router = router
        if shared_affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def branch(self, index: int) -> nn.BatchNorm2d | nn.BatchNorm3d:
        return self.shared_norm if index < 0 else self.device_norms[index]

    def _branch_forward(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Normalize with branch `index`; at inference an unseen device may use its own batch statistics,
        which puts it where the per-device branches put seen devices instead of on the shared mixture, and so
        may a seen device: then no scanner keeps a shift between its training statistics and today's images."""
        norm = self.branch(index)
        if not self.training and self._router.batch_statistics(index):
            return nn.functional.batch_norm(x, None, None, norm.weight, norm.bias, True, 0.0, norm.eps)
        return norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._normalize(x)
        if self.weight is None:
            return out
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return out * self.weight.view(shape) + self.bias.view(shape)

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        route = self._router.route
        if route is None or route.shape[0] != x.shape[0]:
            raise RuntimeError("DAN routing not set for this batch: call the model with device_idx")
        if not self.training and not self._router.any_batch_statistics and torch.compiler.is_compiling():
            return self._running_normalize(x, route)
        groups = torch.unique(route).tolist()
        if len(groups) == 1:
            return self._branch_forward(groups[0], x)
        out = torch.empty_like(x)
        for g in groups:
            idx = torch.nonzero(route == g).squeeze(1)
            out = out.index_copy(0, idx, self._branch_forward(g, x.index_select(0, idx)))
        return out

    def _running_normalize(self, x: torch.Tensor, route: torch.Tensor) -> torch.Tensor:
        """Each sample with its branch's running statistics (and affine), gathered per sample: the same
        values as `_branch_forward` per group, without control flow that depends on the routes, so a
        compiled model stays one graph. Eager inference keeps the grouped path: one fused batch-norm
        kernel per device in the batch runs faster there than these separate gathers."""
        norms = [*self.device_norms, self.shared_norm]
        index = torch.where(route < 0, len(self.device_norms), route)
        shape = (x.shape[0], x.shape[1]) + (1,) * (x.dim() - 2)
        mean = torch.stack([n.running_mean for n in norms])[index].view(shape)
        var = torch.stack([n.running_var for n in norms])[index].view(shape)
        out = (x - mean) * torch.rsqrt(var + self.shared_norm.eps)
        if self.shared_norm.affine:
            out = out * torch.stack([n.weight for n in norms])[index].view(shape) + torch.stack([n.bias for n in norms])[index].view(shape)
        return out


def replace_batchnorm(module: nn.Module, n_devices: int, router: DomainRouter, shared_affine: bool = False) -> int:
    """Swap every BatchNorm2d/3d under `module` for a DomainAwareNorm of its dimension; returns how many."""
    count = 0
    for name, child in module.named_children():
        if isinstance(child, (nn.BatchNorm2d, nn.BatchNorm3d)):
            dims = 3 if isinstance(child, nn.BatchNorm3d) else 2
            setattr(module, name, DomainAwareNorm(child.num_features, n_devices, router, shared_affine, dims))
            count += 1
        else:
            count += replace_batchnorm(child, n_devices, router, shared_affine)
    return count
