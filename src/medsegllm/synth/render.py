"""Tissue map -> scanner image: CT Hounsfield units or MR signal, with each scanner's effects.

Lesion contrast is deliberately low relative to noise (a few noise sigmas at most), so
segmenting lesions is a real task rather than thresholding.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medsegllm.synth import phantom as ph
from medsegllm.synth.phantom import Grid, Phantom
from medsegllm.synth.scanners import ScannerProfile

# Base value and per-study jitter of each tissue: CT in HU (portal venous phase), MR in unit
# signal of a T1-weighted post-contrast sequence.
_CT = {ph.AIR: (-1000, 0), ph.FAT: (-100, 8), ph.SOFT: (25, 6), ph.MUSCLE: (50, 4), ph.LIVER: (57, 3),
       ph.SPLEEN: (52, 4), ph.KIDNEY: (160, 10), ph.BONE: (450, 40), ph.VESSEL: (170, 15)}
_MR = {ph.AIR: (0.0, 0.0), ph.FAT: (0.85, 0.03), ph.SOFT: (0.35, 0.03), ph.MUSCLE: (0.30, 0.02),
       ph.LIVER: (0.55, 0.03), ph.SPLEEN: (0.50, 0.03), ph.KIDNEY: (0.68, 0.03), ph.BONE: (0.40, 0.04),
       ph.VESSEL: (0.75, 0.05)}
# Lesion offset from its host organ: value at strength 0 and at strength 1, and the rim offset.
# Portal-venous-like contrasts (metastases 50-70 HU below the liver): at half these offsets a plain
# U-Net trained on the hidden truth of every train series fitted its training lesions and found
# none in validation (scratch runs, session 12); noise still puts them at a few sigmas per voxel.
_CT_LESION = {ph.HCC: (40.0, 60.0), ph.MET: (-50.0, -70.0), ph.MET_RIM: (10.0, 10.0), ph.RCC: (30.0, 50.0)}
_MR_LESION = {ph.HCC: (0.14, 0.20), ph.MET: (-0.16, -0.24), ph.MET_RIM: (0.04, 0.04), ph.RCC: (0.10, 0.16)}
_HOST = {ph.HCC: ph.LIVER, ph.MET: ph.LIVER, ph.MET_RIM: ph.LIVER, ph.RCC: ph.KIDNEY}
_CT_RCC_HETEROGENEITY, _MR_RCC_HETEROGENEITY = 12.0, 0.04


def _smooth_noise(shape: tuple[int, ...], sigma_vox: tuple[float, ...], rng: np.random.Generator) -> np.ndarray:
    """Unit-variance Gaussian noise, spatially correlated when any sigma is positive."""
    noise = rng.standard_normal(shape, dtype=np.float32)
    if max(sigma_vox) > 0:
        noise = ndimage.gaussian_filter(noise, sigma_vox)
        noise /= max(float(noise.std()), 1e-6)
    return noise


def _clean_image(phantom: Phantom, modality: str, rng: np.random.Generator) -> np.ndarray:
    """Noise-free intensities: per-study jittered tissue values plus low-contrast lesions."""
    base, lesion_offsets = (_CT, _CT_LESION) if modality == "CT" else (_MR, _MR_LESION)
    values = {code: mean + sd * rng.standard_normal() for code, (mean, sd) in base.items()}
    lut = np.zeros(max(ph.RCC, *values) + 1, dtype=np.float32)
    for code, value in values.items():
        lut[code] = value
    image = lut[phantom.tissue]
    for code, (low, high) in lesion_offsets.items():
        inside = phantom.tissue == code
        if inside.any():
            image[inside] = values[_HOST[code]] + low + (high - low) * phantom.strength[inside]
    return image


def render(phantom: Phantom, grid: Grid, scanner: ScannerProfile, rng: np.random.Generator,
           session_rng: np.random.Generator | None = None) -> np.ndarray:
    """The scanner's reconstructed image (float32): calibrated HU for CT, gain-scaled signal for MR.

    `rng` draws the patient (tissue values, tumour texture); `session_rng`, when given, draws what
    changes from one scan to the next (noise, MR bias field), so a rescan of the same patient differs
    by those alone. Without it every draw comes from `rng` in the same order as always.
    """
    image = _clean_image(phantom, scanner.modality, rng)
    session = rng if session_rng is None else session_rng
    rcc = phantom.tissue == ph.RCC
    if rcc.any():
        amplitude = _CT_RCC_HETEROGENEITY if scanner.modality == "CT" else _MR_RCC_HETEROGENEITY
        texture = _smooth_noise(grid.shape, tuple(3.0 / s for s in grid.spacing), rng)
        image[rcc] += amplitude * texture[rcc]
    psf = (scanner.psf_mm / grid.spacing[0], scanner.psf_mm / grid.spacing[1], 0.4)
    image = ndimage.gaussian_filter(image, psf)
    corr = tuple(scanner.noise_corr_mm / s for s in grid.spacing[:2]) + (0.0,)
    if scanner.modality == "CT":
        image += scanner.noise_sigma * _smooth_noise(grid.shape, corr, session)
        return scanner.hu_scale * image + scanner.hu_offset
    image = np.clip(image, 0.0, None) ** scanner.mr_gamma * _bias_field(grid, scanner.mr_bias, session)
    real = image + scanner.noise_sigma * _smooth_noise(grid.shape, corr, session)
    imag = scanner.noise_sigma * _smooth_noise(grid.shape, corr, session)
    return np.sqrt(real**2 + imag**2) * np.float32(scanner.mr_gain)  # Rician magnitude


def _bias_field(grid: Grid, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth multiplicative coil-sensitivity field: exp of a random quadratic, max |log| = strength."""
    x, y, z = (np.linspace(-1, 1, n, dtype=np.float32) for n in grid.shape)
    x, y, z = x[:, None, None], y[None, :, None], z[None, None, :]
    terms = (x, y, z, x * y, x * x, y * y, y * z)
    field = sum(np.float32(c) * t for c, t in zip(rng.uniform(-1, 1, len(terms)), terms))
    field = np.broadcast_to(field, grid.shape)
    return np.exp(strength * field / max(float(np.abs(field).max()), 1e-6)).astype(np.float32)


def to_stored(image: np.ndarray, scanner: ScannerProfile) -> np.ndarray:
    """Stored pixel values: CT as HU + 1024 (RescaleIntercept -1024), MR as unsigned signal."""
    if scanner.modality == "CT":
        stored = np.clip(np.rint(image) + 1024, 0, 4095)
        return stored.astype(np.int16 if scanner.signed_pixels else np.uint16)
    return np.clip(np.rint(image), 0, 65535).astype(np.uint16)
