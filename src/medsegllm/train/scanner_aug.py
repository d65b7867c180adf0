"""Scanner-physics augmentation: the image effects that set a new scanner apart from the training ones.

`augment_intensity` jitters gamma, contrast and brightness. A new scanner also differs in its noise
level and grain, its resolution (point-spread function, reconstruction matrix) and, in MR, its coil
bias field. On the demo the held-out CT's liver noise is 3-6x a training CT's, about the contrast of
a lesion, and a model trained without such noise paints confident lesions on it. Each effect is drawn
with its own chance, at a strength uniform up to its maximum in params (`train.scanner_aug`), by
MONAI's transforms where MONAI has one, seeded from the training generator so that a resumed run
draws the same effects.

It runs on every slice of every batch, so its fixed costs matter. Built per slice, with a fresh
`RandomState` each and every result wrapped in a `MetaTensor`, it took 0.79 ms a slice, and batch
preparation with params.yaml's augmentation 44 % of a compiled training step of the benchmark's
U-Net. The transforms are therefore built once and re-seeded (the same draws as a fresh
`set_random_state`) and applied with MONAI's meta tracking off: 0.44 ms a slice, bit-identical to
building them afresh. (Both timings: one interleaved scratch run on a 2-core AMD EPYC, 64x64 slices,
params.yaml's settings; not BENCHMARKS.md figures.) The shared transforms and MONAI's global meta-tracking switch make it
single-threaded: one training loop per process calls it (DDP ranks are processes).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

import numpy as np
import torch
from monai.data import get_track_meta, set_track_meta
from monai.transforms import GaussianSmooth, RandBiasField, RandSimulateLowResolution
from monai.transforms.transform import Randomizable
from scipy import ndimage

from medsegllm.config import ScannerAugParams


@lru_cache(maxsize=16)
def _transforms(min_zoom: float, bias_max: float, ndim: int) -> tuple[RandSimulateLowResolution, RandBiasField]:
    """The randomizable effects, built once per configuration; `_reseeded` makes each use independent of the last."""
    mode = "bilinear" if ndim == 2 else "trilinear"
    return (RandSimulateLowResolution(prob=1.0, zoom_range=(min_zoom, 1.0), upsample_mode=mode),
            RandBiasField(degree=3, coeff_range=(0.0, bias_max), prob=1.0))


def _reseeded(transform: Randomizable, rng: np.random.Generator) -> Randomizable:
    """`transform.set_random_state(seed)` without building a new `RandomState` (same seeding, ~60x cheaper)."""
    transform.R.seed(int(rng.integers(2**31 - 1)))
    return transform


@contextmanager
def _plain_tensors() -> Iterator[None]:
    """MONAI transforms return plain tensors inside: no `MetaTensor` wrapping of intermediate results."""
    tracking = get_track_meta()
    set_track_meta(False)
    try:
        yield
    finally:
        set_track_meta(tracking)


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
    lowres, bias = _transforms(cfg.min_zoom, cfg.bias_max, image.ndim)
    out = torch.from_numpy(image[None].astype(np.float32, copy=True))
    with _plain_tensors():
        if rng.random() < cfg.prob:
            out = _reseeded(lowres, rng)(out)
        if rng.random() < cfg.prob:
            sigma = rng.uniform(0.0, cfg.blur_max_vox)
            out = GaussianSmooth(sigma=tuple(s * sigma for s in in_plane))(out)
        if rng.random() < cfg.prob:
            out = _reseeded(bias, rng)(out)
    out = np.asarray(out, dtype=np.float32)
    if rng.random() < cfg.prob:
        sigma, grain = rng.uniform(0.0, cfg.noise_max), rng.uniform(0.0, cfg.noise_corr_max_vox)
        out = out + correlated_noise(out.shape[1:], sigma, grain, rng)
    return np.clip(out[0], 0.0, 1.0)
