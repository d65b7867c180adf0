"""A guard against a oneDNN bug: wrong 3D convolution weight gradients under CPU bf16 autocast.

With torch 2.13 (oneDNN 3.12, `jit_bf16` kernels on AVX-512 CPUs), the bf16 backward-weights of a
Conv3d is wrong when the input's first spatial axis is longer than 1 but shorter than the kernel
(depth 2 under a 3x3x3 kernel; 2-4 under 5x5x5): relative error ~1 against fp32, and parts of the
gradient are never written, so they hold whatever the allocator left there (finite on one machine,
NaN/inf on another). SwinUNETR's bottleneck (a 64-voxel ROI downsampled 32x is 2 long) hits it on
every step. The forward pass, the input gradient and 2D convolutions are unaffected. A guarded
convolution computes those shapes in fp32 when gradients are on; every other shape, and inference,
keeps bf16.
"""

from __future__ import annotations

import torch
from torch import nn


def bf16_weight_grad_is_wrong(conv: nn.Conv3d, x: torch.Tensor) -> bool:
    """Whether `conv` on `x` will take a weight gradient in the shapes where oneDNN's CPU bf16 one is wrong."""
    return (1 < x.shape[2] < conv.kernel_size[0] and x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
            and torch.is_grad_enabled() and conv.weight.requires_grad)


class GuardedConv3d(nn.Conv3d):
    """A Conv3d that leaves CPU bf16 autocast for the shapes of the oneDNN bug (module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bf16_weight_grad_is_wrong(self, x):
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float())
        return super().forward(x)


def guard_conv3d(module: nn.Module) -> int:
    """Swap every plain Conv3d under `module` whose kernel is at least 3 deep (shallower ones cannot hit
    the bug) for a GuardedConv3d holding the same parameters; returns how many were swapped."""
    count = 0
    for name, child in module.named_children():
        if type(child) is nn.Conv3d and child.kernel_size[0] >= 3:
            guarded = GuardedConv3d(
                child.in_channels, child.out_channels, child.kernel_size, child.stride, child.padding, child.dilation,
                child.groups, child.bias is not None, child.padding_mode, device=child.weight.device, dtype=child.weight.dtype,
            )
            guarded.load_state_dict(child.state_dict())
            setattr(module, name, guarded)
            count += 1
        else:
            count += guard_conv3d(child)
    return count
