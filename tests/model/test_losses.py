import torch

from medsegllm.model.losses import class_kl, info_nce, seg_loss, text_distribution


def test_info_nce_matched_pairs_score_lower_than_shuffled() -> None:
    torch.manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(6, 384), dim=1)
    image = text + 0.05 * torch.randn(6, 384)
    matched = info_nce(image, text, temperature=0.1)
    shuffled = info_nce(image, text[torch.tensor([1, 2, 3, 4, 5, 0])], temperature=0.1)
    assert matched < 0.01 < shuffled
    assert torch.isclose(info_nce(image, text, 0.1), info_nce(text, image, 0.1))


def test_kl_of_equal_distributions_is_zero_and_positive_otherwise() -> None:
    p = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    assert abs(float(class_kl(p.log(), p))) < 1e-6
    assert float(class_kl(p.flip(1).log(), p)) > 0.1


def test_text_distribution_is_smoothed_one_hot() -> None:
    d = text_distribution(torch.tensor([2]), 3, smoothing=0.3)
    assert torch.allclose(d, torch.tensor([[0.1, 0.1, 0.8]]))


def test_seg_loss_ignores_zero_weight_voxels() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 8, 8)
    target = torch.randint(0, 4, (2, 8, 8))
    weight = torch.ones(2, 8, 8)
    weight[:, :4] = 0
    cw = torch.tensor([0.5, 1.0, 1.0, 3.0])
    changed = logits.clone()
    changed[:, :, :4] = torch.randn(2, 4, 4, 8) * 5
    assert torch.isclose(seg_loss(logits, target, cw, weight), seg_loss(changed, target, cw, weight))
    assert not torch.isclose(seg_loss(logits, target, cw), seg_loss(changed, target, cw))
