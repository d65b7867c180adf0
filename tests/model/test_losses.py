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


class _FixedLogits(torch.nn.Module):
    """A stand-in model whose logits are given: isolates compute_losses' weighting."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def outputs(self, image: torch.Tensor, device: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.logits}


def test_pseudo_lesion_weight_scales_only_pseudo_lesion_voxels() -> None:
    from medsegllm.knowledge import LESION_CLASS
    from medsegllm.train.engine import compute_losses
    from tests.model.synthetic import tiny_params

    torch.manual_seed(0)
    target = torch.randint(0, 4, (2, 8, 8))
    target[:, :3, :3] = LESION_CLASS
    batch = {"image": torch.zeros(2, 1, 8, 8), "device": torch.zeros(2, dtype=torch.long), "label": target,
             "weight": torch.ones(2, 8, 8), "pseudo": torch.tensor([True, True]), "has_text": torch.tensor([False, False])}
    logits = torch.randn(2, 4, 8, 8)
    changed = logits.clone()
    changed[:, :, :3, :3] = torch.randn(2, 4, 3, 3) * 5  # only the pseudo-lesion voxels differ

    def pseudo_loss(values: torch.Tensor, lesion_weight: float) -> torch.Tensor:
        params = tiny_params(alignment={"enabled": False}, kl={"enabled": False}, pseudolabels={"lesion_weight": lesion_weight})
        return compute_losses(_FixedLogits(values), batch, params)["loss_pseudo"]

    assert torch.isclose(pseudo_loss(logits, 0.0), pseudo_loss(changed, 0.0))
    assert not torch.isclose(pseudo_loss(logits, 0.3), pseudo_loss(changed, 0.3))
    assert not torch.isclose(pseudo_loss(logits, 0.3), pseudo_loss(logits, 1.0))
