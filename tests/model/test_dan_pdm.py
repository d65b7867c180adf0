import torch

from medsegllm.config import PDMParams
from medsegllm.model.dan import DomainAwareNorm, DomainRouter
from medsegllm.model.pdm import ProgressiveDomainMixing, cross_device_partners, mix_amplitudes, pdm_probability


def _trained_norm() -> tuple[DomainAwareNorm, DomainRouter]:
    torch.manual_seed(0)
    router = DomainRouter(n_devices=2)
    norm = DomainAwareNorm(3, 2, router)
    x = torch.cat([torch.randn(4, 3, 5, 5), torch.randn(4, 3, 5, 5) * 3 + 2])
    router.set(torch.tensor([0] * 4 + [1] * 4), training=True, shared_prob=0.5)
    norm.train()
    for _ in range(5):
        norm(x)
    norm.eval()
    with torch.no_grad():  # distinct affines per branch, so a wrong branch shows
        for branch in [*norm.device_norms, norm.shared_norm]:
            branch.weight.uniform_(0.5, 2.0)
            branch.bias.uniform_(-1.0, 1.0)
    return norm, router


def test_unseen_device_takes_shared_path() -> None:
    norm, router = _trained_norm()
    x = torch.randn(3, 3, 5, 5)
    router.set(torch.tensor([-1, 2, 7]), training=False, shared_prob=0.5)
    assert torch.allclose(norm(x), norm.shared_norm(x))


def test_unseen_device_with_test_time_statistics_is_normalized_by_its_own_batch() -> None:
    norm, router = _trained_norm()
    router.test_time_stats = True
    x = torch.randn(6, 3, 5, 5) * 7 + 40  # a scanner far from anything seen in training
    router.set(torch.tensor([-1] * 6), training=False, shared_prob=0.5)
    out = norm(x)
    # affine of the shared branch applied to the batch's own standardized values
    z = (x - x.mean(dim=(0, 2, 3), keepdim=True)) / (x.var(dim=(0, 2, 3), unbiased=False, keepdim=True) + 1e-5).sqrt()
    expected = z * norm.shared_norm.weight[None, :, None, None] + norm.shared_norm.bias[None, :, None, None]
    assert torch.allclose(out, expected, atol=1e-4)
    assert not torch.allclose(out, norm.shared_norm(x), atol=1e-2)
    # a known device keeps its own running statistics
    router.set(torch.tensor([0] * 6), training=False, shared_prob=0.5)
    assert torch.allclose(norm(x), norm.device_norms[0](x))


def test_seen_devices_with_test_time_statistics_are_normalized_by_their_own_batch() -> None:
    """dan.seen_stats test_time: a seen scanner whose images drifted from its training statistics is standardized
    by its own batch, with its branch's affine, as an unseen one is."""
    norm, router = _trained_norm()
    router.seen_test_time_stats = True
    x = torch.randn(6, 3, 5, 5) * 7 + 40
    router.set(torch.tensor([1] * 6), training=False, shared_prob=0.5)
    z = (x - x.mean(dim=(0, 2, 3), keepdim=True)) / (x.var(dim=(0, 2, 3), unbiased=False, keepdim=True) + 1e-5).sqrt()
    branch = norm.device_norms[1]
    assert torch.allclose(norm(x), z * branch.weight[None, :, None, None] + branch.bias[None, :, None, None], atol=1e-4)
    assert not torch.allclose(norm(x), branch(x), atol=1e-2)
    router.set(torch.tensor([-1] * 6), training=False, shared_prob=0.5)  # unseen ones keep unseen_stats (shared)
    assert torch.allclose(norm(x), norm.shared_norm(x))
    norm.train()  # training normalizes by the batch whatever the setting, and updates the running statistics
    router.set(torch.tensor([1] * 6), training=True, shared_prob=0.0)
    before = branch.running_mean.clone()
    norm(x)
    assert not torch.allclose(branch.running_mean, before)


def test_known_device_uses_its_own_statistics_in_mixed_batches() -> None:
    norm, router = _trained_norm()
    assert not torch.allclose(norm.device_norms[0].running_mean, norm.device_norms[1].running_mean)
    x = torch.randn(4, 3, 5, 5)
    router.set(torch.tensor([1, 0, 1, -1]), training=False, shared_prob=0.5)
    out = norm(x)
    assert torch.allclose(out[[0, 2]], norm.device_norms[1](x[[0, 2]]), atol=1e-6)
    assert torch.allclose(out[1:2], norm.device_norms[0](x[1:2]), atol=1e-6)
    assert torch.allclose(out[3:], norm.shared_norm(x[3:]), atol=1e-6)
    assert torch.allclose(norm._running_normalize(x, router.route), out, atol=1e-6)  # what a compiled model runs


def test_training_routes_a_share_of_samples_to_the_shared_path() -> None:
    torch.manual_seed(0)
    router = DomainRouter(n_devices=2)
    router.set(torch.zeros(2000, dtype=torch.long), training=True, shared_prob=0.2)
    share = float((router.route == -1).float().mean())
    assert 0.15 < share < 0.25


def test_pdm_schedule_ramps_to_p_max() -> None:
    params = PDMParams(p_max=0.5, ramp_epochs=4)
    assert [pdm_probability(e, params) for e in (0, 1, 2, 4, 10)] == [0.0, 0.125, 0.25, 0.5, 0.5]
    assert pdm_probability(3, PDMParams(enabled=False)) == 0.0


def test_pdm_mixes_only_across_devices_and_is_identity_in_eval() -> None:
    torch.manual_seed(0)
    device = torch.tensor([0, 0, 1, 1, 2])
    partners = cross_device_partners(device)
    assert (device[partners] != device).all()
    assert (cross_device_partners(torch.tensor([1, 1])) == torch.tensor([0, 1])).all()
    router = DomainRouter(3)
    router.set(device, training=False, shared_prob=0.0)
    layer = ProgressiveDomainMixing(router, beta=0.3)
    layer.probability = 1.0
    x = torch.randn(5, 4, 6, 6)
    layer.train()
    mixed = layer(x)
    assert not torch.allclose(mixed, x)
    layer.eval()
    assert torch.equal(layer(x), x)


def test_shared_affine_dan_keeps_per_device_statistics_under_one_scale_shift() -> None:
    router = DomainRouter(2)
    norm = DomainAwareNorm(3, 2, router, shared_affine=True)
    assert norm.weight is not None and all(not b.affine for b in norm.device_norms)
    router.set(torch.tensor([0, 1]), training=False, shared_prob=0.0)
    with torch.no_grad():
        norm.weight.fill_(2.0)
        norm.bias.fill_(1.0)
    x = torch.randn(2, 3, 4, 4)
    out = norm(x)
    assert torch.allclose(out[:1], norm.device_norms[0](x[:1]) * 2 + 1)
    assert torch.allclose(out[1:], norm.device_norms[1](x[1:]) * 2 + 1)


def test_amplitude_mixing_on_the_lowest_frequency_moves_only_the_mean_toward_the_partner() -> None:
    torch.manual_seed(0)
    images = 0.3 + 0.1 * torch.rand(4, 1, 16, 16)
    images[2:] += 0.4  # the second device's images are brighter
    devices = torch.tensor([0, 0, 1, 1])
    mixed = mix_amplitudes(images, devices, probability=1.0, strength=1.0, band=1e-3)  # the zero frequency alone
    centred = lambda x: x - x.mean(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(centred(mixed), centred(images), atol=1e-5, rtol=0)  # the anatomy (phase) is kept
    means, new = images.mean(dim=(1, 2, 3)), mixed.mean(dim=(1, 2, 3))
    assert (new[:2] >= means[:2] - 1e-6).all() and (new[:2] <= 0.75).all()  # toward the other device, never past it
    assert (new[2:] <= means[2:] + 1e-6).all() and (new[2:] >= 0.3).all()
    assert (new - means).abs().max() > 0.01


def test_amplitude_mixing_is_identity_when_off_or_without_another_device() -> None:
    images = torch.rand(4, 1, 16, 16)
    for mixed in (mix_amplitudes(images, torch.tensor([0, 0, 1, 1]), 0.0, 1.0, 1.0),
                  mix_amplitudes(images, torch.tensor([0, 0, 1, 1]), 1.0, 0.0, 1.0),
                  mix_amplitudes(images, torch.zeros(4, dtype=torch.long), 1.0, 1.0, 1.0)):
        torch.testing.assert_close(mixed, images, atol=1e-5, rtol=0)
    full = mix_amplitudes(images, torch.tensor([0, 0, 1, 1]), 1.0, 1.0, 1.0)
    assert full.shape == images.shape and full.min() >= 0 and full.max() <= 1
