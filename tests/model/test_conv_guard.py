"""The guard against oneDNN's wrong CPU bf16 Conv3d weight gradients for inputs thinner than the kernel.

Unguarded, on AVX-512 CPUs (torch 2.13; native BF16 or emulated), a depth-2 input under a 3x3x3 kernel gives a weight
gradient with relative error ~1 against fp32, partly uninitialized memory: the intermittent
SwinUNETR NaN of CI (its bottleneck is 2 voxels long in x).
"""

import pytest
import torch
from torch import nn

from medsegllm.model.conv_guard import GuardedConv3d, GuardedConvTranspose3d, guard_conv3d
from medsegllm.model.network import build_model
from tests.model.synthetic import tiny_params
from tests.model.test_3d import SWIN_3D, UNET_3D


def _weight_grad(conv: nn.Module, x: torch.Tensor, upstream: torch.Tensor, bf16: bool) -> tuple[torch.Tensor, torch.dtype]:
    conv.weight.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        y = conv(x)
    (y.float() * upstream).sum().backward()
    return conv.weight.grad.clone(), y.dtype


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(("layer", "kernel", "stride"), [
    (GuardedConv3d, 3, 1), (GuardedConv3d, 5, 1), (GuardedConv3d, (3, 1, 1), 1), (GuardedConv3d, 5, 2),
    (GuardedConvTranspose3d, 3, 1), (GuardedConvTranspose3d, 5, 1), (GuardedConvTranspose3d, 5, 2),
])
def test_guarded_conv3d_weight_gradient_matches_fp32_at_every_depth(layer, kernel, stride, channels_last) -> None:
    torch.manual_seed(0)
    padding = tuple(k // 2 for k in nn.modules.utils._triple(kernel))
    extra = {"output_padding": stride - 1} if layer is GuardedConvTranspose3d else {}
    conv = layer(32, 32, kernel, stride, padding, bias=False, **extra)
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last_3d)
    for depth in range(1, 7):
        x = torch.randn(1, 32, depth, 6, 5)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        with torch.no_grad():
            upstream = torch.randn(conv(x).shape)
        bf16, dtype = _weight_grad(conv, x, upstream, bf16=True)
        fp32, _ = _weight_grad(conv, x, upstream, bf16=False)
        assert ((bf16 - fp32).norm() / fp32.norm()) < 0.02, f"kernel {kernel}, depth {depth}"
        thin = 1 < depth < conv.kernel_size[0]
        assert dtype == (torch.float32 if thin else torch.bfloat16), f"fp32 only where oneDNN is wrong: depth {depth}"
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            assert conv(x).dtype == torch.bfloat16  # inference: oneDNN's bf16 forward is right


def test_guard_swaps_deep_kernels_and_keeps_the_weights(prompts) -> None:
    swin = build_model(tiny_params(**SWIN_3D).train, ["a", "b"], *prompts)
    convs = [m for m in swin.modules() if isinstance(m, nn.Conv3d)]
    assert all(isinstance(m, GuardedConv3d) == (m.kernel_size[0] >= 3) for m in convs)
    assert sum(isinstance(m, GuardedConv3d) for m in convs) > 10
    assert isinstance(swin.backbone.encoder10.layer.conv1.conv, GuardedConv3d)  # the 2-long bottleneck
    unet = build_model(tiny_params(**UNET_3D, variant="unet_baseline").train, ["a"], *prompts)
    assert any(isinstance(m, GuardedConv3d) for m in unet.modules())
    flat = build_model(tiny_params().train, ["a"], *prompts)  # 2D convolutions are unaffected
    assert not any(isinstance(m, GuardedConv3d) for m in flat.modules())

    plain = nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.Conv3d(4, 4, 1), nn.ConvTranspose3d(4, 2, 3, 2, 1, 1),
                          nn.ConvTranspose3d(2, 2, 2, 2))
    x = torch.randn(1, 2, 4, 4, 4)
    with torch.no_grad():
        expected = plain(x)
    assert guard_conv3d(plain) == 2
    assert [type(m) for m in plain] == [GuardedConv3d, nn.Conv3d, GuardedConvTranspose3d, nn.ConvTranspose3d]
    with torch.no_grad():
        assert torch.equal(plain(x), expected)  # the same parameters, the same fp32 computation
