import numpy as np

from medsegllm.pseudolabel.prior import certainty_weight, fuse, knowledge_prior, pseudo_label
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
    prior = knowledge_prior(_teacher_probs(label), [LESION], True, AFFINE)
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
        prior = knowledge_prior(teacher, lesions, present, AFFINE)
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
        prior = knowledge_prior(swapped, [item], True, AFFINE)
        xs = np.argwhere(prior[3] > 0.5)[:, 0]
        assert xs.size and (xs.mean() < SHAPE[1] / 2) == expect_low_y


def test_unreported_teacher_lesions_go_back_to_the_organ() -> None:
    from medsegllm.pseudolabel.prior import restrict_lesions_to_report

    _, label = phantom(np.random.default_rng(0), lesion=False, device=0)
    teacher = _teacher_probs(label, lesion_prob=0.9)  # a confident false lesion filling the liver
    prior = knowledge_prior(teacher, [], False, AFFINE)
    fused = restrict_lesions_to_report(fuse(teacher, prior, 0.7), prior)
    assert np.allclose(fused.sum(axis=0), 1.0, atol=1e-5)
    mask, _, _ = pseudo_label(fused, 0.6)
    assert not (mask == 3).any() and (mask[label == 1] == 1).all()
    # a reported lesion keeps its mass
    prior = knowledge_prior(_teacher_probs(label), [LESION], True, AFFINE)
    fused = fuse(_teacher_probs(label), prior, 0.7)
    assert np.allclose(restrict_lesions_to_report(fused, prior)[3], fused[3] * (prior[3] > 0.05))
