"""Losses: class-weighted segmentation, image-text InfoNCE and the subtype KL term."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss


def seg_loss(
    logits: torch.Tensor, target: torch.Tensor, class_weights: torch.Tensor, voxel_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Dice + class-weighted CE; `voxel_weight` (B,H,W) or (B,X,Y,Z) down-weights uncertain pseudo-label voxels.

    Without voxel weights this is MONAI's DiceCELoss. With them, CE is a weighted mean and Dice is
    computed on weight-masked probabilities and one-hot targets, so weight-0 voxels do not count.
    Dice is pooled over the batch (`batch=True`): a sparse class (lesion) absent from most slices
    would otherwise give a per-slice Dice of ~1 with no gradient, while false positives on those
    slices went unpunished; pooled, they enter the denominator.
    """
    class_weights = class_weights.to(logits.device, torch.float32)
    logits = logits.float()
    if voxel_weight is None:
        loss = DiceCELoss(to_onehot_y=True, softmax=True, weight=class_weights, batch=True)
        return loss(logits, target[:, None].long())
    w = voxel_weight.float()
    ce = F.cross_entropy(logits, target.long(), weight=class_weights, reduction="none")
    denom = (class_weights[target.long()] * w).sum().clamp_min(1e-6)
    ce = (ce * w).sum() / denom
    n_classes = logits.shape[1]
    probs = torch.softmax(logits, dim=1) * w[:, None]
    onehot = F.one_hot(target.long(), n_classes).movedim(-1, 1).float() * w[:, None]
    dice = DiceLoss(weight=class_weights, batch=True)(probs, onehot)
    return dice + ce


def info_nce(image_emb: torch.Tensor, text_emb: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE over matched rows: row i of each side is the positive pair."""
    image = F.normalize(image_emb.float(), dim=1)
    text = F.normalize(text_emb.float(), dim=1)
    logits = image @ text.T / temperature
    labels = torch.arange(image.shape[0], device=image.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def subtype_logits(pooled_emb: torch.Tensor, subtype_prompts: torch.Tensor, temperature: float) -> torch.Tensor:
    """Image-side subtype scores: cosine of the pooled lesion embedding to each subtype prompt / T."""
    return F.normalize(pooled_emb.float(), dim=1) @ F.normalize(subtype_prompts.float(), dim=1).T / temperature


def text_distribution(subtype_idx: torch.Tensor, n_subtypes: int, smoothing: float = 0.1) -> torch.Tensor:
    """Text-side distribution: the report's subtype one-hot, label-smoothed so KL stays finite."""
    onehot = F.one_hot(subtype_idx.long(), n_subtypes).float()
    return onehot * (1 - smoothing) + smoothing / n_subtypes


def class_kl(image_logits: torch.Tensor, text_dist: torch.Tensor) -> torch.Tensor:
    """KL(text || image) averaged over samples: pulls the image-side subtype distribution to the report's."""
    return F.kl_div(torch.log_softmax(image_logits.float(), dim=1), text_dist.float(), reduction="batchmean")
