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

from medsegllm.common.io import spacing_of
from medsegllm.knowledge import LESION_CLASS, ORGANS, SEG_CLASSES, SUBTYPES
from medsegllm.model.postprocess import largest_components

_NEGATED = {"negated", "absent", "no", "none", "ruled out", "excluded"}
_CERTAINTY = {"definite": 1.0, "certain": 1.0, "probable": 0.8, "likely": 0.8, "possible": 0.5, "suspected": 0.6}
DEFAULT_SIZE_MM = 20.0
PARENCHYMA_SIGMAS = 1.5  # voxels within this many noise sigmas of the organ's level make up `conspicuity`'s surround
RIM_VOXELS = 2  # voxels of the organ's rim left out of `conspicuity`
ENHANCEMENT_SIGN = {"hyper": 1, "hypo": -1}  # knowledge-base enhancement -> sign of conspicuity; unknown: either


def certainty_weight(value: object) -> float:
    """Certainty of a reported lesion: 0 when negated (no lesion), lower for hedged findings."""
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


def _ball(radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    """Boolean ellipsoidal structuring element of `radius_mm` on the voxel grid."""
    reach = np.maximum(np.floor(radius_mm / np.asarray(spacing, dtype=np.float64)), 0).astype(int)
    grids = np.ogrid[tuple(slice(-k, k + 1) for k in reach)]
    return sum((g * sp / max(radius_mm, 1e-3)) ** 2 for g, sp in zip(grids, spacing)) <= 1.0


def lesion_host(mask: np.ndarray, affine: np.ndarray, organ: str, laterality: str | None, radius_mm: float) -> np.ndarray:
    """The teacher's organ as a solid body that a reported lesion of `radius_mm` can sit in.

    A teacher trained on a few labels often calls a lesion background, which leaves a hole or a
    notch in its organ mask exactly where the lesion is, and it scatters fragments of the organ
    over neighbours. So: the reported kidney's side (or the two largest kidney bodies), the
    liver's largest body, closed at half the lesion's radius and with holes filled (in 3D and in
    each axial slice, where a lesion at the organ's top or bottom leaves an open hole; the axial
    axis is the voxel axis closest to the world's superior direction).
    """
    if organ == "kidney" and laterality in ("left", "right"):
        mask = _kidney_side(mask, affine, laterality)  # one body already
    else:
        mask = largest_components(mask, ORGANS[organ]["bodies"], faces_only=True)
    ball = _ball(radius_mm / 2, spacing_of(affine))
    pad = max(ball.shape)
    closed = ndimage.binary_closing(np.pad(mask, pad), structure=ball)[pad:-pad, pad:-pad, pad:-pad] | mask
    solid = ndimage.binary_fill_holes(closed)
    axial_axis = int(np.argmax(np.abs(np.asarray(affine)[2, :3])))
    for axial in np.moveaxis(solid, axial_axis, 0):  # views: filling them fills `solid`
        axial[...] = ndimage.binary_fill_holes(axial)
    return solid


def _sublocation_region(mask: np.ndarray, affine: np.ndarray, organ: str, location: str | None) -> np.ndarray:
    """Boolean over the organ's voxels (np.argwhere order): those in the reported sublocation."""
    world = _world(affine, np.argwhere(mask).astype(np.float64))
    x, z = world[:, 0], world[:, 2]
    region = np.ones(len(world), dtype=bool)
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
    return region if region.any() else np.ones(len(world), dtype=bool)


def _sublocation_centre(mask: np.ndarray, affine: np.ndarray, organ: str, location: str | None) -> np.ndarray:
    """Voxel index of the organ voxel nearest the centroid of the reported sublocation."""
    idx = np.argwhere(mask)
    world = _world(affine, idx.astype(np.float64))
    region = _sublocation_region(mask, affine, organ, location)
    centroid = world[region].mean(axis=0)
    return idx[region][np.argmin(np.linalg.norm(world[region] - centroid, axis=1))]


def _core_median(image: np.ndarray, core: np.ndarray, level: float, footprint: np.ndarray) -> np.ndarray:
    """Median filter of `image` with every voxel outside `core` set to `level`, exact on `core`, 0 elsewhere.

    Outside the organ's core the median sees the organ's level, so neighbours cannot pull it.
    Only core voxels are used downstream (every other voxel has zero weight), so the filter runs on
    the core's bounding box padded by the footprint's half-size: the same values there, for a
    fraction of the volume.
    """
    half = np.asarray(footprint.shape) // 2
    idx = np.argwhere(core)
    box = tuple(slice(max(lo - h, 0), min(hi + h + 1, n)) for lo, hi, h, n in zip(idx.min(0), idx.max(0), half, core.shape))
    crop = np.where(core[box], image[box], level).astype(np.float32)
    robust = np.zeros(image.shape, dtype=np.float32)
    robust[box] = np.where(core[box], ndimage.median_filter(crop, footprint=footprint), 0.0)
    return robust


def conspicuity(image: np.ndarray, organ: np.ndarray, spacing: np.ndarray, radius_mm: float) -> np.ndarray:
    """How much a lesion-sized neighbourhood differs from its surrounding parenchyma, in noise units.

    A matched filter at the reported size: the organ-masked local mean at the lesion's scale minus
    the organ-masked mean at three times that scale (which follows bias fields and organ
    enhancement), over the organ's robust voxel noise. Signed: >0 brighter than parenchyma.
    Pooling over the lesion's volume makes a lesion fainter than the voxel noise stand out.
    The local mean is taken of a median-filtered image (a ball of half the lesion's radius): a
    structure thinner than that ball (a vessel, a calcification) is filtered out however bright
    it is, so it can neither outshine a faint lesion nor mask one nearby, while a lesion keeps its
    full contrast. (Clipping voxels to 1.5 noise sigmas did the former but capped a plain
    metastasis 10 sigmas darker than the liver at 1.5, so a wide, slightly dark patch outscored it.)
    Voxels beyond PARENCHYMA_SIGMAS are left out of the surround, and the organ's rim (RIM_VOXELS:
    partial volume with its neighbours, and a teacher mask a voxel too wide) out of both. Zero
    outside the organ.
    """
    core = ndimage.binary_erosion(organ, iterations=RIM_VOXELS)
    core = core if core.sum() >= 0.25 * organ.sum() else organ
    image = np.asarray(image, dtype=np.float32)
    values = image[core]
    if values.size == 0:
        return np.zeros(image.shape, dtype=np.float32)
    level = float(np.median(values))
    noise = max(1.4826 * float(np.median(np.abs(values - level))), 1e-6)
    robust = _core_median(image, core, level, _ball(radius_mm / 2, spacing))
    typical = core & (np.abs(image - level) < PARENCHYMA_SIGMAS * noise)  # parenchyma without vessels or lesions

    def masked_mean(scale_mm: float, mask: np.ndarray) -> np.ndarray:
        sigma = np.maximum(scale_mm / np.asarray(spacing, dtype=np.float64), 0.3)
        weight = mask.astype(np.float32)
        num = ndimage.gaussian_filter(robust * weight, sigma)
        den = ndimage.gaussian_filter(weight, sigma)
        return np.divide(num, den, out=np.full_like(num, level), where=den > 1e-3)

    local, surround = masked_mean(radius_mm / 2, core), masked_mean(3.0 * radius_mm, typical)
    return np.where(core, (local - surround) / noise, 0.0).astype(np.float32)


def _locate(score: np.ndarray, organ: np.ndarray, region_idx: np.ndarray, taken: np.ndarray, polarity: int) -> np.ndarray | None:
    """The organ voxel most conspicuous in the subtype's direction, preferring the reported sublocation."""
    preference = np.full(score.shape, 0.6, dtype=np.float32)
    preference[tuple(region_idx.T)] = 1.0
    signed = score * polarity if polarity else np.abs(score)
    candidates = np.clip(signed, 0.0, None) * preference * (organ & ~taken)
    if not candidates.any():
        return None
    return np.array(np.unravel_index(int(np.argmax(candidates)), score.shape))


def lesion_blob(shape: tuple[int, ...], centre: np.ndarray, radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    """A soft ball: ~1 inside, 0.5 at `radius_mm`, ~0 beyond."""
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    d2 = sum(((g - c) * sp) ** 2 for g, c, sp in zip(grids, centre, spacing))
    d = np.sqrt(d2)
    return (1.0 / (1.0 + np.exp(-6.0 * (1.0 - d / max(radius_mm, 1e-3))))).astype(np.float32)


def knowledge_prior(
    teacher_probs: np.ndarray, lesions: list[dict], tumour_present: bool, affine: np.ndarray, image: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(K, certainty): K (C,X,Y,Z) has organ channels from the teacher, a lesion channel from the report, bg = 1 - rest.

    Each reported lesion becomes a soft ball of the reported size in the reported organ (and side).
    With the `image`, the ball sits where a lesion-sized region of that organ is most conspicuous
    (`conspicuity`), preferring the reported sublocation; without it, at the sublocation's centre.
    A negated or absent tumour gives a zero lesion channel. Teacher lesion probability inside an
    organ is given back to that organ, and report lesions take their mass from the organ, so K
    stays a distribution.

    A hedged finding ("suspicious for metastasis") hedges what a lesion is far more often than
    whether it is there, so its certainty does not shrink its ball in K (a "possible" lesion at
    half strength never reached the lesion threshold: 0.3 x 0.5 at its very centre). It goes into
    `certainty` (X,Y,Z) instead: the certainty of the reported lesion a voxel belongs to, 1 elsewhere,
    which `pseudo_label` multiplies into the lesion voxels' confidence, so the loss trusts them less.
    """
    probs = np.asarray(teacher_probs, dtype=np.float32)
    shape = probs.shape[1:]
    spacing = spacing_of(affine)
    lesion = np.zeros(shape, dtype=np.float32)
    certainty = np.ones(shape, dtype=np.float32)
    taken = np.zeros(shape, dtype=bool)
    reported = sorted(lesions if tumour_present else [], key=lambda item: -(item.get("size_mm") or DEFAULT_SIZE_MM))
    for item in reported:
        weight = certainty_weight(item.get("certainty"))
        organ = item.get("organ")
        if weight <= 0 or organ not in SEG_CLASSES or organ in ("background", "lesion"):
            continue
        radius = float(item.get("size_mm") or DEFAULT_SIZE_MM) / 2
        mask = (probs[SEG_CLASSES.index(organ)] + probs[LESION_CLASS]) > 0.5
        if not mask.any():
            continue
        host = lesion_host(mask, affine, organ, item.get("laterality"), radius)
        centre = None
        if image is not None:
            region_idx = np.argwhere(host)[_sublocation_region(host, affine, organ, item.get("location"))]
            polarity = ENHANCEMENT_SIGN.get(SUBTYPES.get(item.get("subtype") or "", {}).get("enhancement"), 0)
            centre = _locate(conspicuity(image, host, spacing, radius), host, region_idx, taken, polarity)
        if centre is None:
            centre = _sublocation_centre(host, affine, organ, item.get("location"))
        blob = lesion_blob(shape, centre, radius, spacing)
        grow = max(1, int(np.ceil(radius / spacing.min() / 2)))
        blob *= ndimage.binary_dilation(host, iterations=grow)
        taken |= blob > 0.1
        certainty[blob > lesion] = weight  # each voxel keeps the certainty of its strongest lesion
        lesion = np.maximum(lesion, blob)
    organs = [c for c, name in enumerate(SEG_CLASSES) if name not in ("background", "lesion")]
    organ_total = probs[organs].sum(axis=0)
    share = np.divide(probs[LESION_CLASS], organ_total, out=np.zeros(shape, np.float32), where=organ_total > 1e-6)
    prior = np.zeros_like(probs)
    for c in organs:
        # the teacher's lesion mass goes back to its host organ: the report decides where lesions are
        prior[c] = probs[c] * (1.0 + share) * (1.0 - lesion)
    prior[LESION_CLASS] = lesion
    prior[0] = np.clip(1.0 - prior[1:].sum(axis=0), 0.0, 1.0)
    return prior, certainty


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


def pseudo_label(
    fused: np.ndarray, threshold: float, lesion_threshold: float | None = None, certainty: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """mask = argmax F, confidence = max F, weight = confidence where >= threshold else 0.

    With `lesion_threshold`, a voxel is lesion wherever F's lesion channel reaches it, even when an
    organ holds more mass: with alpha = 0.7 a report lesion the teacher missed contributes at most
    1 - alpha = 0.3 to F, so argmax alone could never add it (a class-specific threshold, as in
    class-balanced self-training). Such a voxel's confidence is F_lesion / (2 * lesion_threshold),
    capped at 1: 0.5 at the threshold, 1 at twice the threshold. `certainty` (the report's, from
    `knowledge_prior`) then scales the confidence of every lesion voxel before the threshold.
    """
    fused = np.asarray(fused, dtype=np.float32)
    mask = fused.argmax(axis=0).astype(np.uint8)
    confidence = fused.max(axis=0).astype(np.float32)
    if lesion_threshold is not None:
        added = (fused[LESION_CLASS] >= lesion_threshold) & (mask != LESION_CLASS)
        mask[added] = LESION_CLASS
        confidence[added] = np.minimum(1.0, fused[LESION_CLASS][added] / (2.0 * lesion_threshold))
    if certainty is not None:
        confidence = np.where(mask == LESION_CLASS, confidence * certainty, confidence).astype(np.float32)
    weight = np.where(confidence >= threshold, confidence, 0.0).astype(np.float32)
    return mask, confidence, weight
