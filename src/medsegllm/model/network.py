"""Networks: the text-conditioned MedSegLLM model and the plain MONAI U-Net / SwinUNETR baseline.

The head scores each pixel by cosine similarity to the frozen class-prompt embeddings, so the
classes live in the text space of the reports (which the alignment loss shapes) while inference
needs no report. The cosine is computed in factored form (linear projection folded into the
prompts, norm via a Gram matrix) so the 384-d pixel embeddings are never materialized in the
training loop; `pixel_embeddings` gives them explicitly when wanted. Every backbone is built 2D
(axial slices) or 3D (patches) by `train.spatial_dims`; the head is written for either.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.nets import SegResNet, SwinUNETR, UNet
from monai.networks.nets.unet import SkipConnection
from torch import nn

from medsegllm.config import TrainParams
from medsegllm.model.conv_guard import guard_conv3d
from medsegllm.model.dan import DomainRouter, replace_batchnorm
from medsegllm.model.pdm import ProgressiveDomainMixing


def _unet(train: TrainParams, out_channels: int, norm: str) -> UNet:
    return UNet(
        spatial_dims=train.spatial_dims,
        in_channels=1,
        out_channels=out_channels,
        channels=tuple(train.channels),
        strides=(2,) * (len(train.channels) - 1),
        num_res_units=1,
        norm=norm,
    )


def _unet_encoder_stages(unet: UNet) -> list[tuple[nn.Module, str]]:
    """(parent, attribute) of each down layer, outermost first, then the bottom layer."""
    stages: list[tuple[nn.Module, str]] = []
    node: nn.Module = unet.model
    while True:
        stages.append((node, "0"))
        skip = node[1]
        inner = skip.submodule
        if not (isinstance(inner, nn.Sequential) and len(inner) == 3 and isinstance(inner[1], SkipConnection)):
            stages.append((skip, "submodule"))
            return stages
        node = inner


def _segresnet_encoder_stages(net: SegResNet) -> list[tuple[nn.Module, str]]:
    return [(net.down_layers, str(i)) for i in range(len(net.down_layers))]


def _swinunetr_encoder_stages(net: SwinUNETR) -> list[tuple[nn.Module, str]]:
    """The two full- and half-resolution skip encoders (where PDM mixes), then the bottleneck block."""
    return [(net, "encoder1"), (net, "encoder2"), (net, "encoder10")]


SWIN_STRIDE = 32  # SwinUNETR downsamples five times


class _Base(nn.Module):
    """Common plumbing: device routing, a bottleneck hook and the metadata inference needs."""

    def __init__(self, train: TrainParams, device_ids: list[str]) -> None:
        super().__init__()
        self.train_params = train
        self.device_ids = list(device_ids)
        self.roi_size = tuple(train.roi_size)
        self.router = DomainRouter(len(device_ids), test_time_stats=train.dan.unseen_stats == "test_time",
                                   seen_test_time_stats=train.dan.seen_stats == "test_time")
        self._bottleneck: torch.Tensor | None = None
        self.fixed_batch: int | None = None  # set by compile_for_inference: inference pads window batches to it

    def _hook_bottleneck(self, module: nn.Module) -> None:
        module.register_forward_hook(self._keep_bottleneck)

    def _keep_bottleneck(self, _module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        self._bottleneck = output

    def __getstate__(self) -> dict:
        """Copies and pickles leave out the last forward's bottleneck: transient, and after a training
        step a non-leaf tensor that deepcopy refuses."""
        return {**self.__dict__, "_bottleneck": None}

    @property
    def total_stride(self) -> int:
        """How much the backbone downsamples (on every axis): whole-slice or whole-volume inputs must be
        padded to a multiple of it."""
        if self.train_params.backbone == "swinunetr":
            return SWIN_STRIDE
        return 2 ** (len(self.train_params.channels) - 1)

    def device_index(self, device_id: str) -> int:
        """Branch index of a device; -1 (DAN's shared path) for a device never seen in training."""
        return self.device_ids.index(device_id) if device_id in self.device_ids else -1

    def forward(self, x: torch.Tensor, device_idx: torch.Tensor | None = None) -> torch.Tensor:
        return self.outputs(x, device_idx)["logits"]


def _swinunetr(train: TrainParams, out_channels: int, norm: str) -> SwinUNETR:
    return SwinUNETR(in_channels=1, out_channels=out_channels, feature_size=train.channels[0], norm_name=norm,
                     spatial_dims=train.spatial_dims)


class BaselineUNet(_Base):
    """A plain MONAI U-Net (or SwinUNETR with `backbone: swinunetr`; instance norm, C outputs): the
    comparison baseline trained on voxel labels only; device is ignored."""

    variant = "unet_baseline"

    def __init__(self, train: TrainParams, device_ids: list[str], n_classes: int) -> None:
        super().__init__(train, device_ids)
        if train.backbone == "swinunetr":
            self.backbone = _swinunetr(train, n_classes, norm="instance")
            parent, name = _swinunetr_encoder_stages(self.backbone)[-1]
        else:
            self.backbone = _unet(train, n_classes, norm="instance")
            parent, name = _unet_encoder_stages(self.backbone)[-1]
        self._hook_bottleneck(getattr(parent, name))

    def outputs(self, x: torch.Tensor, device_idx: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.backbone(x)
        return {"logits": logits, "bottleneck": self._bottleneck}


class MedSegNet(_Base):
    """MONAI backbone with DAN + PDM and a cosine head against frozen text prompts."""

    variant = "medsegllm"

    def __init__(
        self, train: TrainParams, device_ids: list[str], class_prompts: np.ndarray, subtype_prompts: np.ndarray
    ) -> None:
        super().__init__(train, device_ids)
        n_features = train.channels[0]
        if train.backbone == "unet":
            self.backbone = _unet(train, n_features, norm=train.norm)
            stages = _unet_encoder_stages(self.backbone)
        elif train.backbone == "swinunetr":  # the transformer backbone (in place of the paper's TransUNet)
            self.backbone = _swinunetr(train, n_features, norm=train.norm)
            stages = _swinunetr_encoder_stages(self.backbone)
        else:
            self.backbone = SegResNet(
                spatial_dims=train.spatial_dims,
                init_filters=train.channels[0],
                in_channels=1,
                out_channels=n_features,
                blocks_down=(1,) * len(train.channels),
                blocks_up=(1,) * (len(train.channels) - 1),
                norm=train.norm,
            )
            stages = _segresnet_encoder_stages(self.backbone)
        parent, name = stages[-1]
        self._hook_bottleneck(getattr(parent, name))
        if train.dan.enabled:
            replace_batchnorm(self.backbone, len(device_ids), self.router, train.dan.shared_affine)
        if train.pdm.enabled:
            for parent, name in stages[:-1][:2]:
                setattr(parent, name, nn.Sequential(getattr(parent, name), ProgressiveDomainMixing(self.router, train.pdm.beta)))
        text_dim = class_prompts.shape[1]
        self.proj = (nn.Conv2d if train.spatial_dims == 2 else nn.Conv3d)(n_features, text_dim, kernel_size=1)
        self.register_buffer("class_prompts", F.normalize(torch.as_tensor(np.asarray(class_prompts), dtype=torch.float32), dim=1))
        self.register_buffer("subtype_prompts", F.normalize(torch.as_tensor(np.asarray(subtype_prompts), dtype=torch.float32), dim=1))
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.class_bias = nn.Parameter(torch.zeros(class_prompts.shape[0]))

    def outputs(self, x: torch.Tensor, device_idx: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """logits (B,C,*S), features (B,F,*S), embedding norms (B,*S) and the bottleneck map; S is (H,W) or (X,Y,Z)."""
        if device_idx is None:
            device_idx = torch.full((x.shape[0],), -1, dtype=torch.long)
        self.router.set(device_idx.to(x.device), self.training, self.train_params.dan.shared_prob)
        features = self.backbone(x)
        with torch.autocast(x.device.type, enabled=False):  # the head in fp32: autocast would recast f per product
            weight = self.proj.weight.flatten(1).float()  # (D, F)
            bias = self.proj.bias.float()
            f = features.float()
            f_last = f.movedim(1, -1).contiguous()  # (B,*S,F), copied once: each product would copy a strided view
            sq = (f_last * (f_last @ (weight.T @ weight))).sum(-1) + 2 * (f_last @ (weight.T @ bias)) + bias @ bias
            norm = sq.clamp_min(1e-12).sqrt()
            dot = f_last @ (self.class_prompts @ weight).T + self.class_prompts @ bias  # (B,*S,C)
            scale = self.log_scale.clamp(max=math.log(100.0)).exp()
            logits = (scale * dot / norm[..., None] + self.class_bias).movedim(-1, 1)
        return {"logits": logits, "features": f, "norm": norm, "bottleneck": self._bottleneck}

    def pixel_embeddings(self, features: torch.Tensor) -> torch.Tensor:
        """Explicit L2-normalized 384-d pixel embeddings (B,D,*S)."""
        return F.normalize(self.proj(features), dim=1)

    def pooled_embedding(self, out: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """Mean of the normalized pixel embeddings over `mask` (B,*S), renormalized: (B,D).

        Exact and cheap: the mean of (W f + b) / |W f + b| is W g + b h with mask-weighted means g, h.
        """
        m = mask.float()
        spatial = tuple(range(1, m.dim()))
        count = m.sum(dim=spatial).clamp_min(1.0)
        inv = m / out["norm"]
        g = (inv.flatten(1)[:, None] @ out["features"].movedim(1, -1).flatten(1, -2))[:, 0] / count[:, None]
        h = inv.sum(dim=spatial) / count
        weight = self.proj.weight.flatten(1).float()
        return F.normalize(g @ weight.T + h[:, None] * self.proj.bias.float()[None], dim=1)


def build_model(
    train: TrainParams, device_ids: list[str], class_prompts: np.ndarray, subtype_prompts: np.ndarray
) -> nn.Module:
    """The network of `train.variant`; prompts are frozen buffers so inference needs no report.

    3D networks get guarded convolutions: CPU bf16 training would otherwise take wrong weight gradients
    for thin inputs (`conv_guard`).
    """
    if train.variant == "unet_baseline":
        model: _Base = BaselineUNet(train, device_ids, n_classes=np.asarray(class_prompts).shape[0])
    else:
        model = MedSegNet(train, device_ids, class_prompts, subtype_prompts)
    if train.spatial_dims == 3:
        guard_conv3d(model)
    return model
