"""Scanner-physics augmentation: the image effects that set a new scanner apart from the training ones.

`augment_intensity` jitters gamma, contrast and brightness. A new scanner also differs in its noise
level and grain, its resolution (point-spread function, reconstruction matrix) and, in MR, its coil
bias field. On the demo the held-out CT's liver noise is 3-6x a training CT's, about the contrast of
a lesion, and a model trained without such noise paints confident lesions on it. Each effect is drawn
with its own chance, at a strength uniform up to its maximum in params (`train.scanner_aug`), by
MONAI's transforms where MONAI has one, seeded from the training generator so that a resumed run
draws the same effects.
"""

from __future__ import annotations

import numpy as np
from monai.transforms import GaussianSmooth, RandBiasField, RandSimulateLowResolution
from scipy import ndimage

from medsegllm.config import ScannerAugParams


def _seeded(transform, rng: np.random.Generator):
    return transform.set_random_state(seed=int(rng.integers(2**31 - 1)))


def correlated_noise(shape: tuple[int, ...], sigma: float, corr_vox: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise of standard deviation `sigma`, in-plane correlated over `corr_vox` voxels (CT grain)."""
    noise = rng.standard_normal(shape).astype(np.float32)
    if corr_vox > 0:
        noise = ndimage.gaussian_filter(noise, (corr_vox, corr_vox) + (0.0,) * (len(shape) - 2))
        noise /= max(float(noise.std()), 1e-6)
    return sigma * noise


def simulate_scanner(image: np.ndarray, cfg: ScannerAugParams, rng: np.random.Generator) -> np.ndarray:
    """`image` (X, Y) or (X, Y, Z) in [0, 1] as another scanner might have reconstructed it."""
    in_plane = (1.0, 1.0) + (0.0,) * (image.ndim - 2)  # through-plane resolution is ingest's resampling
    out = image[None].astype(np.float32, copy=True)
    if rng.random() < cfg.prob:
        mode = "bilinear" if image.ndim == 2 else "trilinear"
        lowres = RandSimulateLowResolution(prob=1.0, zoom_range=(cfg.min_zoom, 1.0), upsample_mode=mode)
        out = np.asarray(_seeded(lowres, rng)(out), dtype=np.float32)
    if rng.random() < cfg.prob:
        sigma = rng.uniform(0.0, cfg.blur_max_vox)
        out = np.asarray(GaussianSmooth(sigma=tuple(s * sigma for s in in_plane))(out), dtype=np.float32)
    if rng.random() < cfg.prob:
        bias = RandBiasField(degree=3, coeff_range=(0.0, cfg.bias_max), prob=1.0)
        out = np.asarray(_seeded(bias, rng)(out), dtype=np.float32)
    if rng.random() < cfg.prob:
        sigma, grain = rng.uniform(0.0, cfg.noise_max), rng.uniform(0.0, cfg.noise_corr_max_vox)
        out = out + correlated_noise(out.shape[1:], sigma, grain, rng)
    return np.clip(out[0], 0.0, 1.0)
