"""Probabilities -> label map, with the knowledge base's constraints on organs and lesions.

A segmentation network scatters small blobs over noisy images: organ-class specks far from the
organ (which ruin its HD95) and lesion-class blobs (on a study without a tumour each one turns a
correct "no lesion" into lesion Dice 0 and a false-positive finding). As nnU-Net post-processes
with connected components, the label map keeps, with `organ_bodies`, only each organ's largest
components, as many as the body has (one liver, two kidneys; the rest becomes background), and a
predicted lesion only if it is at least `min_lesion_diameter_mm` (equivalent-sphere diameter) and,
with `lesions_in_organs`, touches an organ the knowledge base lets lesions occur in. A removed
lesion's voxels take their next most probable class. Validation and `segment` both call
`label_map`, so the reported metrics describe the label maps a user receives.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from medsegllm.config import PostprocessParams
from medsegllm.knowledge import LESION_CLASS, ORGANS, SEG_CLASSES, SUBTYPES

HOST_CLASSES: tuple[int, ...] = tuple(
    sorted({SEG_CLASSES.index(organ) for entry in SUBTYPES.values() for organ in entry["organs"]})
)
ORGAN_BODIES: dict[int, int] = {SEG_CLASSES.index(organ): entry["bodies"] for organ, entry in ORGANS.items()}


def sphere_volume_mm3(diameter_mm: float) -> float:
    return math.pi / 6.0 * diameter_mm**3


def equivalent_diameter_mm(volume_mm3: float) -> float:
    """Diameter of the sphere of `volume_mm3`: how lesion sizes are compared with reported sizes."""
    return (6.0 * volume_mm3 / math.pi) ** (1 / 3)


def label_map(probs: np.ndarray, spacing: tuple[float, ...], cfg: PostprocessParams) -> np.ndarray:
    """argmax of `probs` (C, X, Y, Z), then organ and lesion components that break `cfg` relabelled (`spacing` in mm)."""
    labels = probs.argmax(axis=0).astype(np.uint8)
    if not cfg.enabled:
        return labels
    if cfg.organ_bodies:
        keep_organ_bodies(labels)
    if drop_lesions(labels, probs, spacing, cfg) and cfg.organ_bodies:
        keep_organ_bodies(labels)  # a dropped lesion's next class may be an organ away from the organ's bodies
    return labels


def _components(mask: np.ndarray, faces_only: bool = False) -> tuple[np.ndarray, int]:
    """Connected components: voxels touching by a face, an edge or a corner (by a face only with `faces_only`)."""
    return ndimage.label(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1 if faces_only else mask.ndim))


def largest_components(mask: np.ndarray, keep: int, faces_only: bool = False) -> np.ndarray:
    """`mask` reduced to its `keep` largest connected components (ties: the later component first)."""
    components, n = _components(mask, faces_only)
    if n <= keep:
        return mask
    sizes = np.bincount(components.ravel(), minlength=n + 1)[1:]
    return np.isin(components, np.argsort(sizes, kind="stable")[::-1][:keep] + 1)


def keep_organ_bodies(labels: np.ndarray) -> None:
    """Each organ's voxels outside its `bodies` largest components become background, in place."""
    for organ, bodies in ORGAN_BODIES.items():
        mask = labels == organ
        labels[mask & ~largest_components(mask, bodies)] = SEG_CLASSES.index("background")


def drop_lesions(labels: np.ndarray, probs: np.ndarray, spacing: tuple[float, ...], cfg: PostprocessParams) -> bool:
    """Lesion components too small or outside every host organ take their next most probable class,
    in place; whether any did."""
    lesion = labels == LESION_CLASS
    if not lesion.any():
        return False
    components, n = _components(lesion)
    voxel_mm3 = float(np.prod(spacing[:3]))
    sizes = np.bincount(components.ravel(), minlength=n + 1) * voxel_mm3
    drop = sizes < sphere_volume_mm3(cfg.min_lesion_diameter_mm)
    if cfg.lesions_in_organs:
        near_host = ndimage.binary_dilation(np.isin(labels, HOST_CLASSES))  # face-adjacent to a host organ
        drop |= np.bincount(components[near_host & lesion], minlength=n + 1) == 0
    drop[0] = False
    removed = drop[components]
    if not removed.any():
        return False
    others = probs[:, removed].copy()
    others[LESION_CLASS] = -np.inf
    labels[removed] = others.argmax(axis=0).astype(np.uint8)
    return True
