"""A guard against a oneDNN bug: wrong 3D convolution weight gradients under CPU bf16 autocast.

With torch 2.13 (oneDNN 3.12, `jit_bf16` kernels on AVX-512 CPUs), the bf16 backward-weights of a
Conv3d or ConvTranspose3d is wrong when the input's first spatial axis is longer than 1 but shorter
than the kernel (depth 2 under a 3x3x3 kernel; 2-4 under 5x5x5): relative error ~1 against fp32,
and parts of the gradient are never written, so they hold whatever the allocator left there (finite
on one machine, NaN/inf on another). SwinUNETR's bottleneck (a 64-voxel ROI downsampled 32x is 2
long) hits it on every step. The forward pass, the input gradient and 2D convolutions are
unaffected. A guarded convolution computes those shapes in fp32 when gradients are on; every other
shape, and inference, keeps bf16.
"""

from __future__ import annotations

import torch
from torch import nn


def bf16_weight_grad_is_wrong(conv: nn.Conv3d | nn.ConvTranspose3d, x: torch.Tensor) -> bool:
    """Whether `conv` on `x` will take a weight gradient in the shapes where oneDNN's CPU bf16 one is wrong."""
    return (1 < x.shape[2] < conv.kernel_size[0] and x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
            and torch.is_grad_enabled() and conv.weight.requires_grad)


class _Guarded:
    """Leaves CPU bf16 autocast for the shapes of the oneDNN bug (module docstring)."""

    def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        if bf16_weight_grad_is_wrong(self, x):
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float(), *args, **kwargs)
        return super().forward(x, *args, **kwargs)


class GuardedConv3d(_Guarded, nn.Conv3d):
    pass


class GuardedConvTranspose3d(_Guarded, nn.ConvTranspose3d):
    pass


GUARDED = {nn.Conv3d: GuardedConv3d, nn.ConvTranspose3d: GuardedConvTranspose3d}


def guard_conv3d(module: nn.Module) -> int:
    """Guard every plain 3D (transposed) convolution under `module` whose kernel is at least 3 deep
    (shallower ones cannot hit the bug); returns how many. The class is swapped in place, as
    `torch.nn.utils.parametrize` does, so parameters, state-dict keys and hooks stay as they were."""
    count = 0
    for child in module.modules():
        guarded = GUARDED.get(type(child))
        if guarded is not None and child.kernel_size[0] >= 3:
            child.__class__ = guarded
            count += 1
    return count
