"""Inference on whole volumes: class probabilities and pooled bottleneck features.

A 2D model runs over axial slices, a 3D model (`train.spatial_dims: 3`) over the whole volume;
both through MONAI's sliding_window_inference at the model's ROI, with the same precision handling.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from torch import nn


def _slices(volume: np.ndarray, device: torch.device) -> torch.Tensor:
    """(X,Y,Z) volume -> (Z,1,X,Y) axial slices."""
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(volume.astype(np.float32), 2, 0)))[:, None].to(device)


def _is_3d(model: nn.Module) -> bool:
    return len(model.roi_size) == 3


def _device_tensor(model: nn.Module, device_id: str, n: int, device: torch.device) -> torch.Tensor:
    return torch.full((n,), model.device_index(device_id), dtype=torch.long, device=device)


def bf16_supported(device: torch.device) -> bool:
    """bf16 runs natively: CUDA tensor cores, or a CPU with AVX-512 BF16 (oneDNN); else it is emulated and slow."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())


def autocast_for(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """'auto' is bf16 where the hardware runs it natively (BENCHMARKS.md: same Dice, faster), else fp32."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32, not {precision!r}")
    if precision == "bf16" or (precision == "auto" and bf16_supported(device)):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


MIRROR_AXES = ((0,), (1,), (0, 1))  # the in-plane flips `train.data.sample_batch` augments with


def resolve_mirror(train_params, override: bool | None) -> bool:
    """Test-time mirroring as asked (`validate.mirror`, `--mirror/--no-mirror`), else the model's own
    `train.inference.mirror` (`train_params`: a `TrainParams`, the model's or the params file's)."""
    return train_params.inference.mirror if override is None else override


def predict_volume(model: nn.Module, volume: np.ndarray, device_id: str, batch_size: int = 32,
                   precision: str = "auto", mirror: bool = False) -> np.ndarray:
    """Softmax probabilities (C,X,Y,Z) from sliding-window inference over axial slices (2D model)
    or over the volume (3D model).

    `batch_size` is slices per call and windows per forward (2D), or windows per forward (3D).
    A device not seen in training is routed through DAN's shared path; the baseline ignores it. A model
    compiled by `compile_for_inference` gets every window batch padded to its one compiled size.
    Windows are blended in fp32 whatever the compute precision. With `mirror` (the model's
    `train.inference.mirror`), the probabilities are the mean over the volume and its mirror images
    along x, y and both, each mapped back (test-time mirroring, as nnU-Net does).
    """
    probs = _predict(model, volume, device_id, batch_size, precision)
    if mirror:
        for axes in MIRROR_AXES:
            flipped = _predict(model, np.flip(volume, axes), device_id, batch_size, precision)
            probs += np.flip(flipped, tuple(a + 1 for a in axes))
        probs /= len(MIRROR_AXES) + 1
    return probs


def _predict(model: nn.Module, volume: np.ndarray, device_id: str, batch_size: int, precision: str) -> np.ndarray:
    model.eval()
    device = next(model.parameters()).device

    fixed = getattr(model, "fixed_batch", None)

    def predictor(window: torch.Tensor) -> torch.Tensor:
        n = window.shape[0]
        if fixed is not None and n < fixed:  # a compiled model keeps one batch shape: pad, then drop the padding
            window = torch.cat([window, window.new_zeros((fixed - n, *window.shape[1:]))])
        return model(window, _device_tensor(model, device_id, window.shape[0], device)).float()[:n]

    if _is_3d(model):
        image = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None, None].to(device)
        with torch.inference_mode(), autocast_for(device, precision):
            logits = sliding_window_inference(image, roi_size=model.roi_size, sw_batch_size=batch_size,
                                              predictor=predictor, overlap=0.25, mode="gaussian")
            return np.ascontiguousarray(torch.softmax(logits.float(), dim=1)[0].cpu().numpy())
    slices = _slices(volume, device)
    outputs = []
    with torch.inference_mode(), autocast_for(device, precision):
        for start in range(0, slices.shape[0], batch_size):
            logits = sliding_window_inference(
                slices[start : start + batch_size], roi_size=model.roi_size, sw_batch_size=batch_size,
                predictor=predictor, overlap=0.25, mode="gaussian",
            )
            outputs.append(torch.softmax(logits.float(), dim=1).cpu())
    probs = torch.cat(outputs).numpy()  # (Z,C,X,Y)
    return np.ascontiguousarray(np.moveaxis(probs, 0, -1))


def bottleneck_features(model: nn.Module, volume: np.ndarray, device_id: str, batch_size: int = 32) -> np.ndarray:
    """Bottleneck features average-pooled over each axial plane, for cross-device JS.

    Whole slices (2D) or the whole volume (3D) are zero-padded to a multiple of the network's total
    stride instead of windowed; a volume is also padded to at least the ROI, since volumes are often
    thinner than a window in z and a 1-voxel bottleneck cannot be instance-normalized. A 2D model
    gives one vector per slice (Z,F); a 3D model one per axial level of its bottleneck
    (ceil(max(Z, roi_z) / total_stride), F), each covering `total_stride` slices.
    """
    model.eval()
    device = next(model.parameters()).device
    stride = model.total_stride
    if _is_3d(model):
        image = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None, None].to(device)
        target = [max(n, r) + (-max(n, r)) % stride for n, r in zip(image.shape[2:], model.roi_size)]
        image = F.pad(image, [p for n, m in zip(reversed(image.shape[2:]), reversed(target)) for p in (0, m - n)])
        with torch.no_grad():
            bottleneck = model.outputs(image, _device_tensor(model, device_id, 1, device))["bottleneck"]
        return bottleneck.float().mean(dim=(2, 3))[0].T.cpu().numpy()  # (Z', F)
    slices = _slices(volume, device)
    pad_x = (-slices.shape[2]) % stride
    pad_y = (-slices.shape[3]) % stride
    slices = F.pad(slices, (0, pad_y, 0, pad_x))
    feats = []
    with torch.no_grad():
        for start in range(0, slices.shape[0], batch_size):
            batch = slices[start : start + batch_size]
            bottleneck = model.outputs(batch, _device_tensor(model, device_id, batch.shape[0], device))["bottleneck"]
            feats.append(bottleneck.float().mean(dim=(2, 3)).cpu())
    return torch.cat(feats).numpy()
