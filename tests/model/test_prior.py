import numpy as np
from scipy import ndimage

from medsegllm.pseudolabel.prior import _ball, _core_median, certainty_weight, fuse, knowledge_prior, pseudo_label
from medsegllm.pseudolabel.run import lesion_dice
from tests.model.synthetic import AFFINE, SHAPE, phantom

LESION = {"organ": "liver", "location": "right lobe", "laterality": None, "size_mm": 24.0, "subtype": "hcc",
          "certainty": "definite"}


def _teacher_probs(label: np.ndarray, lesion_prob: float = 0.0) -> np.ndarray:
    """A confident teacher that sees the organs; `lesion_prob` of a false lesion in the liver."""
    probs = np.stack([(label == c).astype(np.float32) for c in range(4)])
    probs[3] = 0
    liver = label == 1
    probs[3][liver] = lesion_prob
    probs[1][liver] = 1 - lesion_prob
    return probs


def test_fusion_weights_teacher_by_alpha() -> None:
    p = np.zeros((4, 2, 1, 1), dtype=np.float32)
    k = np.zeros_like(p)
    p[1, 0], k[3, 0] = 1.0, 1.0  # voxel 0: teacher says liver, prior says lesion
    p[0, 1], k[0, 1] = 1.0, 1.0  # voxel 1: both say background
    fused = fuse(p, k, alpha=0.7)
    assert np.allclose(fused[:, 0, 0, 0], [0, 0.7, 0, 0.3])
    mask, confidence, weight = pseudo_label(fused, threshold=0.8)
    assert mask[:, 0, 0].tolist() == [1, 0]
    assert np.allclose(confidence[:, 0, 0], [0.7, 1.0])
    assert np.allclose(weight[:, 0, 0], [0.0, 1.0])
    assert np.allclose(fuse(p, k, alpha=0.4)[:, 0, 0, 0], [0, 0.4, 0, 0.6])


def test_prior_places_reported_lesion_in_the_right_lobe() -> None:
    _, label = phantom(np.random.default_rng(0), lesion=True, device=0)
    prior, _ = knowledge_prior(_teacher_probs(label), [LESION], True, AFFINE)
    assert np.allclose(prior.sum(axis=0), 1.0, atol=1e-5)
    lesion = prior[3] > 0.5
    assert lesion.any()
    centre_x = np.argwhere(lesion)[:, 0].mean()
    liver_x = np.argwhere(label == 1)[:, 0].mean()
    assert centre_x > liver_x  # RAS: larger x is the patient's right
    assert (label[lesion] > 0).all()
    fused_mask, _, _ = pseudo_label(fuse(_teacher_probs(label), prior, 0.7), 0.6)
    assert lesion_dice(fused_mask, label) > 0.3


def test_negated_or_absent_tumour_gives_no_lesion_and_suppresses_teacher() -> None:
    _, label = phantom(np.random.default_rng(0), lesion=False, device=0)
    teacher = _teacher_probs(label, lesion_prob=0.6)
    assert (teacher.argmax(0) == 3).any()
    for lesions, present in (([{**LESION, "certainty": "negated"}], True), ([LESION], False)):
        prior, _ = knowledge_prior(teacher, lesions, present, AFFINE)
        assert prior[3].max() == 0.0
        mask, _, _ = pseudo_label(fuse(teacher, prior, 0.7), 0.6)
        assert not (mask == 3).any()
    assert certainty_weight("possible") == 0.5 and certainty_weight(None) == 1.0


def test_kidney_laterality_picks_the_reported_side() -> None:
    _, label = phantom(np.random.default_rng(0), lesion=False, device=0)
    teacher = _teacher_probs(label)
    for side, expect_low_y in (("left", True), ("right", False)):
        item = {"organ": "kidney", "location": "interpolar", "laterality": side, "size_mm": 12.0}
        # the two synthetic kidneys differ in y; swap axes so they differ in RAS x instead
        swapped = np.swapaxes(teacher, 1, 2)
        prior, _ = knowledge_prior(swapped, [item], True, AFFINE)
        xs = np.argwhere(prior[3] > 0.5)[:, 0]
        assert xs.size and (xs.mean() < SHAPE[1] / 2) == expect_low_y


def test_unreported_teacher_lesions_go_back_to_the_organ() -> None:
    from medsegllm.pseudolabel.prior import restrict_lesions_to_report

    _, label = phantom(np.random.default_rng(0), lesion=False, device=0)
    teacher = _teacher_probs(label, lesion_prob=0.9)  # a confident false lesion filling the liver
    prior, _ = knowledge_prior(teacher, [], False, AFFINE)
    fused = restrict_lesions_to_report(fuse(teacher, prior, 0.7), prior)
    assert np.allclose(fused.sum(axis=0), 1.0, atol=1e-5)
    mask, _, _ = pseudo_label(fused, 0.6)
    assert not (mask == 3).any() and (mask[label == 1] == 1).all()
    # a reported lesion keeps its mass
    prior, _ = knowledge_prior(_teacher_probs(label), [LESION], True, AFFINE)
    fused = fuse(_teacher_probs(label), prior, 0.7)
    assert np.allclose(restrict_lesions_to_report(fused, prior)[3], fused[3] * (prior[3] > 0.05))


def _liver_with_two_spots(rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """A noisy box 'liver' (2 mm voxels) with a faint dark spot, a faint bright spot and a bright vessel."""
    shape = (48, 48, 24)
    liver = np.zeros(shape, dtype=bool)
    liver[6:42, 6:42, 3:21] = True
    image = np.where(liver, 0.5, 0.1).astype(np.float32) + 0.05 * rng.standard_normal(shape).astype(np.float32)
    grid = np.indices(shape).transpose(1, 2, 3, 0) * 2.0  # mm
    dark, bright = np.array([14.0, 20.0, 12.0]) * 2, np.array([32.0, 30.0, 12.0]) * 2
    dark_spot = np.linalg.norm(grid - dark, axis=-1) < 8.0
    bright_spot = np.linalg.norm(grid - bright, axis=-1) < 8.0
    image[dark_spot] -= 0.04  # under one noise sigma per voxel
    image[bright_spot] += 0.04
    image[10:40, 12:14, 12:14] += 0.6  # a 4 mm vessel, far brighter than any lesion
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    return image, liver, dark_spot, bright_spot, affine


def test_image_guided_prior_finds_faint_lesion_of_the_reported_enhancement() -> None:
    image, liver, dark_spot, bright_spot, affine = _liver_with_two_spots(np.random.default_rng(3))
    label = liver.astype(np.uint8)
    teacher = _teacher_probs(label)
    base = {"organ": "liver", "location": None, "laterality": None, "size_mm": 16.0, "certainty": "definite"}
    for subtype, spot in (("metastasis", dark_spot), ("hcc", bright_spot)):  # hypo vs hyper in the knowledge base
        prior, _ = knowledge_prior(teacher, [{**base, "subtype": subtype}], True, affine, image=image)
        found = prior[3] > 0.5
        assert lesion_dice(np.where(found, 3, 0), np.where(spot, 3, 0)) > 0.6, subtype
    blind, _ = knowledge_prior(teacher, [{**base, "subtype": "metastasis"}], True, affine)  # no image: organ centre
    assert lesion_dice(np.where(blind[3] > 0.5, 3, 0), np.where(dark_spot, 3, 0)) < 0.3


def test_lesion_threshold_lets_the_report_add_a_lesion_the_teacher_missed() -> None:
    p = np.zeros((4, 3, 1, 1), dtype=np.float32)
    k = np.zeros_like(p)
    p[1] = 1.0  # a teacher sure of liver everywhere
    k[3, 0], k[3, 1], k[1, 2] = 1.0, 0.4, 1.0  # the report: lesion core, lesion rim, plain liver
    k[1, 1] = 0.6
    fused = fuse(p, k, alpha=0.7)  # lesion 0.3, 0.12, 0
    assert not (pseudo_label(fused, 0.6)[0] == 3).any()  # argmax alone never adds it
    mask, confidence, weight = pseudo_label(fused, 0.6, lesion_threshold=0.15)
    assert mask[:, 0, 0].tolist() == [3, 1, 1]
    assert np.isclose(confidence[0, 0, 0], 1.0) and np.isclose(weight[0, 0, 0], 1.0)


def test_prior_finds_a_lesion_the_teacher_cut_out_of_its_organ() -> None:
    """The teacher calls a dark lesion background (a hole in its liver) and calls a dark patch of a neighbour liver.

    The lesion must still be found inside the hole, and the stray fragment must not draw it away.
    """
    rng = np.random.default_rng(5)
    image, liver, dark_spot, _, affine = _liver_with_two_spots(rng)
    image[dark_spot] -= 0.11  # a plain hypodense metastasis: ~3 noise sigmas darker
    fragment = np.zeros_like(liver)
    fragment[43:47, 6:42, 3:21] = True  # a neighbour organ the teacher half-calls liver, darker still
    image[fragment] = 0.3 + 0.05 * rng.standard_normal(int(fragment.sum())).astype(np.float32)
    label = np.where((liver & ~dark_spot) | fragment, 1, 0).astype(np.uint8)
    item = {"organ": "liver", "location": None, "laterality": None, "size_mm": 16.0, "subtype": "metastasis"}
    prior, _ = knowledge_prior(_teacher_probs(label), [item], True, affine, image=image)
    found = prior[3] > 0.5
    assert lesion_dice(np.where(found, 3, 0), np.where(dark_spot, 3, 0)) > 0.6
    assert not (found & fragment).any()


def test_lesion_host_fills_a_hole_open_at_the_organ_top_in_any_voxel_order() -> None:
    """A lesion at the liver's top, called background, is a pit open upwards; each axial slice closes it."""
    from medsegllm.pseudolabel.prior import lesion_host

    organ = np.zeros((30, 30, 12), dtype=bool)
    organ[3:27, 3:27, 2:10] = True
    pit = np.zeros_like(organ)
    pit[11:19, 11:19, 6:10] = True  # 32 mm wide, reaching the organ's top slice
    affine = np.diag([4.0, 4.0, 5.0, 1.0])
    host = lesion_host(organ & ~pit, affine, "liver", None, radius_mm=4.0)  # closing too small to close it
    assert host[pit].all() and not host[~organ].any()
    # the same volume stored z-first: the axial axis comes from the affine, not from the array's last axis
    permuted = np.transpose(organ & ~pit, (2, 0, 1))
    z_first = np.array([[0, 4.0, 0, 0], [0, 0, 4.0, 0], [5.0, 0, 0, 0], [0, 0, 0, 1]])  # voxel (z, x, y) -> world
    assert np.array_equal(lesion_host(permuted, z_first, "liver", None, radius_mm=4.0), np.transpose(host, (2, 0, 1)))


def test_hedged_lesion_is_placed_like_a_certain_one_and_trusted_less() -> None:
    """'suspicious for' hedges what a lesion is, not whether it is there: same mask, lower confidence."""
    _, label = phantom(np.random.default_rng(0), lesion=True, device=0)
    teacher = _teacher_probs(label)
    (sure, sure_certainty), (hedged, hedged_certainty) = (
        knowledge_prior(teacher, [{**LESION, "certainty": c}], True, AFFINE) for c in ("definite", "possible"))
    assert np.array_equal(sure, hedged)
    assert (sure_certainty == 1.0).all()
    sure_mask, sure_conf, _ = pseudo_label(fuse(teacher, sure, 0.7), 0.2, 0.15, sure_certainty)
    hedged_mask, hedged_conf, hedged_weight = pseudo_label(fuse(teacher, hedged, 0.7), 0.2, 0.15, hedged_certainty)
    lesion = sure_mask == 3
    assert lesion.sum() > 10 and np.array_equal(sure_mask, hedged_mask)
    assert np.allclose(hedged_conf[lesion], 0.5 * sure_conf[lesion])
    assert np.array_equal(hedged_conf[~lesion], sure_conf[~lesion])  # organs and background keep the teacher's
    assert np.array_equal(hedged_weight[lesion] > 0, hedged_conf[lesion] >= 0.2)


def test_conspicuity_prefers_a_compact_strong_lesion_to_a_wide_faint_patch() -> None:
    """A plain metastasis 10 noise sigmas darker than the liver beats a wide patch 1.5 sigmas dark.

    The report's size (its longest diameter) is larger than the lesion's extent, as it often is in
    the demo cohort. Clipping voxels to 1.5 sigmas (as `conspicuity` once did against vessels)
    capped the lesion at the patch's level, and the patch, filling the whole filter, won.
    """
    rng = np.random.default_rng(7)
    shape = (48, 48, 24)
    liver = np.zeros(shape, dtype=bool)
    liver[4:44, 4:44, 2:22] = True
    image = np.where(liver, 0.5, 0.1).astype(np.float32) + 0.02 * rng.standard_normal(shape).astype(np.float32)
    grid = np.indices(shape).transpose(1, 2, 3, 0) * 2.0  # mm
    lesion = np.linalg.norm(grid - np.array([14.0, 14.0, 12.0]) * 2, axis=-1) < 8.0
    patch = np.linalg.norm(grid - np.array([31.0, 31.0, 12.0]) * 2, axis=-1) < 20.0
    image[lesion] -= 0.2  # 10 sigmas
    image[patch] -= 0.03  # 1.5 sigmas
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    item = {"organ": "liver", "location": None, "laterality": None, "size_mm": 24.0, "subtype": "metastasis"}
    prior, _ = knowledge_prior(_teacher_probs(liver.astype(np.uint8)), [item], True, affine, image=image)
    placed = np.argwhere(prior[3] > 0.5)
    centre = tuple(np.round(placed.mean(axis=0)).astype(int))
    assert lesion[centre] and not (patch & (prior[3] > 0.5)).any()


def test_core_median_on_a_crop_equals_the_whole_volume_filter_on_the_core() -> None:
    """The crop padded by the footprint gives the whole-volume median exactly, also where the core
    touches the volume's edge (reflection) and with an anisotropic footprint."""
    rng = np.random.default_rng(3)
    image = rng.random((40, 36, 20)).astype(np.float32)
    core = np.zeros(image.shape, dtype=bool)
    core[5:30, 0:20, 3:17] = True  # touches the y = 0 edge
    core[12:16, 25:30, 8:12] = True  # a second, separate piece
    footprint = _ball(5.0, np.array([1.0, 1.5, 2.5]))
    level = 0.4
    whole = ndimage.median_filter(np.where(core, image, level).astype(np.float32), footprint=footprint)
    cropped = _core_median(image, core, level, footprint)
    assert np.array_equal(cropped[core], whole[core])
    assert not cropped[~core].any()
