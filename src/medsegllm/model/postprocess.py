"""Probabilities -> label map, with the knowledge base's constraints on lesions.

A segmentation network scatters small lesion-class blobs over noisy images; on a study without a
tumour each one turns a correct "no lesion" into lesion Dice 0 and a false-positive finding. As
nnU-Net post-processes with connected components, the label map keeps a predicted lesion only if
it is at least `min_lesion_diameter_mm` (equivalent-sphere diameter) and, with
`lesions_in_organs`, touches an organ the knowledge base lets lesions occur in. A removed lesion's
voxels take their next most probable class. Validation and `segment` both call `label_map`, so the
reported metrics describe the label maps a user receives.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from medsegllm.config import PostprocessParams
from medsegllm.knowledge import LESION_CLASS, SEG_CLASSES, SUBTYPES

HOST_CLASSES: tuple[int, ...] = tuple(
    sorted({SEG_CLASSES.index(organ) for entry in SUBTYPES.values() for organ in entry["organs"]})
)


def sphere_volume_mm3(diameter_mm: float) -> float:
    return math.pi / 6.0 * diameter_mm**3


def equivalent_diameter_mm(volume_mm3: float) -> float:
    """Diameter of the sphere of `volume_mm3`: how lesion sizes are compared with reported sizes."""
    return (6.0 * volume_mm3 / math.pi) ** (1 / 3)


def label_map(probs: np.ndarray, spacing: tuple[float, ...], cfg: PostprocessParams) -> np.ndarray:
    """argmax of `probs` (C, X, Y, Z), then lesion components that break `cfg` relabelled (`spacing` in mm)."""
    labels = probs.argmax(axis=0).astype(np.uint8)
    if not cfg.enabled:
        return labels
    lesion = labels == LESION_CLASS
    if not lesion.any():
        return labels
    components, n = ndimage.label(lesion, structure=ndimage.generate_binary_structure(lesion.ndim, lesion.ndim))
    voxel_mm3 = float(np.prod(spacing[:3]))
    sizes = np.bincount(components.ravel(), minlength=n + 1) * voxel_mm3
    drop = sizes < sphere_volume_mm3(cfg.min_lesion_diameter_mm)
    if cfg.lesions_in_organs:
        near_host = ndimage.binary_dilation(np.isin(labels, HOST_CLASSES))  # face-adjacent to a host organ
        drop |= np.bincount(components[near_host & lesion], minlength=n + 1) == 0
    drop[0] = False
    removed = drop[components]
    if removed.any():
        others = probs[:, removed].copy()
        others[LESION_CLASS] = -np.inf
        labels[removed] = others.argmax(axis=0).astype(np.uint8)
    return labels
