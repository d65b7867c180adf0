"""Knowledge prior K: where the report says lesions are, placed inside the teacher's organs.

The report gives organ, sublocation, laterality, size and negation; the teacher gives where the
organs are. Together they give a soft lesion map that the fusion F = alpha*P + (1-alpha)*K uses to
add lesions the teacher missed and to suppress lesions in studies whose report finds none.
Directions come from the NIfTI affine (RAS world: +x patient right, +z superior), so the prior
does not depend on the voxel axis order.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medsegllm.knowledge import LESION_CLASS, SEG_CLASSES

_NEGATED = {"negated", "absent", "no", "none", "ruled out", "excluded"}
_CERTAINTY = {"definite": 1.0, "certain": 1.0, "probable": 0.8, "likely": 0.8, "possible": 0.5, "suspected": 0.6}
DEFAULT_SIZE_MM = 20.0


def spacing_of(affine: np.ndarray) -> np.ndarray:
    """Voxel size (mm) along each array axis."""
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)


def certainty_weight(value: object) -> float:
    """Prior strength of a reported lesion: 0 when negated, lower for hedged findings."""
    if value is None:
        return 1.0
    if isinstance(value, (int, float)):
        return float(np.clip(value, 0.0, 1.0))
    text = str(value).strip().lower()
    if text in _NEGATED:
        return 0.0
    return _CERTAINTY.get(text, 1.0)


def _world(affine: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """(N,3) voxel indices -> (N,3) RAS mm."""
    return idx @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]


def _kidney_side(mask: np.ndarray, affine: np.ndarray, laterality: str | None) -> np.ndarray:
    """The kidney component on the reported side (patient left = smaller RAS x)."""
    labels, n = ndimage.label(mask)
    if n <= 1 or laterality not in ("left", "right"):
        return mask
    sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
    biggest = np.argsort(sizes)[::-1][:2] + 1
    centres = [_world(affine, np.argwhere(labels == k).mean(axis=0, keepdims=True))[0, 0] for k in biggest]
    pick = biggest[int(np.argmin(centres))] if laterality == "left" else biggest[int(np.argmax(centres))]
    return labels == pick


def _sublocation_centre(mask: np.ndarray, affine: np.ndarray, organ: str, location: str | None) -> np.ndarray:
    """Voxel index of the organ voxel nearest the centroid of the reported sublocation."""
    idx = np.argwhere(mask)
    world = _world(affine, idx.astype(np.float64))
    x, z = world[:, 0], world[:, 2]
    region = np.ones(len(idx), dtype=bool)
    if organ == "liver":
        if location == "right lobe":
            region = x >= np.quantile(x, 0.5)
        elif location == "left lobe":
            region = x <= np.quantile(x, 0.25)
        elif location == "dome":
            region = z >= np.quantile(z, 0.8)
    elif organ == "kidney":
        lo, hi = z.min(), z.max()
        third = (hi - lo) / 3
        if location == "upper pole":
            region = z >= hi - third
        elif location == "lower pole":
            region = z <= lo + third
        elif location == "interpolar":
            region = (z > lo + third) & (z < hi - third)
    if not region.any():
        region = np.ones(len(idx), dtype=bool)
    centroid = world[region].mean(axis=0)
    return idx[region][np.argmin(np.linalg.norm(world[region] - centroid, axis=1))]


def lesion_blob(shape: tuple[int, ...], centre: np.ndarray, radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    """A soft ball: ~1 inside, 0.5 at `radius_mm`, ~0 beyond."""
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    d2 = sum(((g - c) * sp) ** 2 for g, c, sp in zip(grids, centre, spacing))
    d = np.sqrt(d2)
    return (1.0 / (1.0 + np.exp(-6.0 * (1.0 - d / max(radius_mm, 1e-3))))).astype(np.float32)


def knowledge_prior(teacher_probs: np.ndarray, lesions: list[dict], tumour_present: bool, affine: np.ndarray) -> np.ndarray:
    """K (C,X,Y,Z): organ channels from the teacher, a lesion channel from the report, bg = 1 - rest.

    A negated or absent tumour gives a zero lesion channel. Teacher lesion probability inside an
    organ is given back to that organ, and report lesions take their mass from the organ, so K
    stays a distribution.
    """
    probs = np.asarray(teacher_probs, dtype=np.float32)
    shape = probs.shape[1:]
    spacing = spacing_of(affine)
    lesion = np.zeros(shape, dtype=np.float32)
    if tumour_present:
        for item in lesions:
            weight = certainty_weight(item.get("certainty"))
            organ = item.get("organ")
            if weight <= 0 or organ not in SEG_CLASSES or organ in ("background", "lesion"):
                continue
            channel = SEG_CLASSES.index(organ)
            mask = (probs[channel] + probs[LESION_CLASS]) > 0.5
            if organ == "kidney":
                mask = _kidney_side(mask, affine, item.get("laterality"))
            if not mask.any():
                continue
            centre = _sublocation_centre(mask, affine, organ, item.get("location"))
            radius = float(item.get("size_mm") or DEFAULT_SIZE_MM) / 2
            blob = lesion_blob(shape, centre, radius, spacing)
            grow = max(1, int(np.ceil(radius / spacing.min() / 2)))
            blob *= ndimage.binary_dilation(mask, iterations=grow)
            lesion = np.maximum(lesion, weight * blob)
    organs = [c for c, name in enumerate(SEG_CLASSES) if name not in ("background", "lesion")]
    organ_total = probs[organs].sum(axis=0)
    share = np.divide(probs[LESION_CLASS], organ_total, out=np.zeros(shape, np.float32), where=organ_total > 1e-6)
    prior = np.zeros_like(probs)
    for c in organs:
        # the teacher's lesion mass goes back to its host organ: the report decides where lesions are
        prior[c] = probs[c] * (1.0 + share) * (1.0 - lesion)
    prior[LESION_CLASS] = lesion
    prior[0] = np.clip(1.0 - prior[1:].sum(axis=0), 0.0, 1.0)
    return prior


def fuse(teacher_probs: np.ndarray, prior: np.ndarray, alpha: float) -> np.ndarray:
    """F = alpha * P + (1 - alpha) * K."""
    return alpha * np.asarray(teacher_probs, dtype=np.float32) + (1.0 - alpha) * np.asarray(prior, dtype=np.float32)


def restrict_lesions_to_report(fused: np.ndarray, prior: np.ndarray, floor: float = 0.05) -> np.ndarray:
    """Lesion mass of F only where the report puts a lesion (K's lesion channel > `floor`).

    A teacher trained on a handful of labelled studies fires lesions all over lesion-free organs;
    alpha*P alone keeps those false lesions whenever the teacher is confident. The report is the
    stronger evidence for lesion presence and placement, so lesion mass outside the reported
    regions goes back to the host organs in the teacher's organ proportions (background when
    none), and F stays a distribution.
    """
    fused = np.array(fused, dtype=np.float32, copy=True)
    outside = np.asarray(prior[LESION_CLASS]) <= floor
    moved = np.where(outside, fused[LESION_CLASS], 0.0)
    organs = [c for c, name in enumerate(SEG_CLASSES) if name not in ("background", "lesion")]
    organ_total = fused[organs].sum(axis=0)
    for c in organs:
        share = np.divide(fused[c], organ_total, out=np.zeros_like(organ_total), where=organ_total > 1e-6)
        fused[c] += moved * share
    fused[0] += np.where(organ_total > 1e-6, 0.0, moved)
    fused[LESION_CLASS] -= moved
    return fused


def pseudo_label(fused: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """mask = argmax F, confidence = max F, weight = confidence where >= threshold else 0."""
    mask = fused.argmax(axis=0).astype(np.uint8)
    confidence = fused.max(axis=0).astype(np.float32)
    weight = np.where(confidence >= threshold, confidence, 0.0).astype(np.float32)
    return mask, confidence, weight
