"""CIFAR-10-C-style corruptions on synthetic images: each does what its parameter says."""

import pytest
import torch

from cifarlab.data.corruptions import (CORRUPTIONS, SEVERITY, corrupt, disk_kernel, gaussian_taps,
                                       high_frequency_energy, parse_corruptions, parse_severities, sharpen)
from cifarlab.errors import UserError


def noise_images(n: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def smooth_images(n: int = 8) -> torch.Tensor:
    """Gradients plus a soft blob: natural-ish, away from 0 and 255."""
    t = torch.linspace(0, 1, 32)
    base = 60 + 120 * (t[None, :] * 0.6 + t[:, None] * 0.4)
    blob = 50 * torch.exp(-((t[None, :] - 0.5) ** 2 + (t[:, None] - 0.4) ** 2) / 0.02)
    img = torch.stack([base + blob, base, base - blob / 2])
    return img.clamp(0, 255).to(torch.uint8).expand(n, 3, 32, 32).contiguous()


@pytest.mark.parametrize("name", ["gaussian_blur", "defocus_blur", "pixelate"])
def test_blur_lowers_high_frequency_energy_monotonically(name):
    x = noise_images()
    energies = [high_frequency_energy(x)] + [high_frequency_energy(corrupt(x, name, s)) for s in range(1, 6)]
    assert all(a > b for a, b in zip(energies, energies[1:])), energies


def test_gaussian_noise_has_the_stated_std():
    x = torch.full((16, 3, 32, 32), 128, dtype=torch.uint8)  # mid-grey: clipping never happens
    for s, c in enumerate(SEVERITY["gaussian_noise"], 1):
        d = (corrupt(x, "gaussian_noise", s).float() - 128) / 255
        assert d.std().item() == pytest.approx(c, rel=0.03)
        assert abs(d.mean().item()) < 0.004  # truncation to uint8 costs half a grey level on average


def test_contrast_scales_distance_to_the_channel_mean():
    x = smooth_images(2)
    for s, c in enumerate(SEVERITY["contrast"], 1):
        y = corrupt(x, "contrast", s).float()
        assert y.std((2, 3)) == pytest.approx(c * x.float().std((2, 3)), abs=0.6)
        assert y.mean((2, 3)) == pytest.approx(x.float().mean((2, 3)), abs=1.0)


def test_brightness_adds_to_hsv_value_and_keeps_hue():
    x = torch.tensor([[[[100]], [[50]], [[25]]]], dtype=torch.uint8).expand(1, 3, 9, 9).contiguous()
    y = corrupt(x, "brightness", 3).float()  # +0.15 of V
    assert y[0, 0, 0, 0].item() == pytest.approx(100 + 0.15 * 255, abs=1)
    assert (y[0, :, 0, 0] / y[0, 0, 0, 0]).tolist() == pytest.approx([1, 0.5, 0.25], abs=0.02)
    black = corrupt(torch.zeros(1, 3, 9, 9, dtype=torch.uint8), "brightness", 5)
    assert (black == int(0.3 * 255)).all()  # black turns grey V'


def test_jpeg_error_grows_as_quality_drops():
    x = noise_images(4)
    errs = [(corrupt(x, "jpeg_compression", s).float() - x.float()).abs().mean().item() for s in (1, 5)]
    assert 0 < errs[0] < errs[1]


def test_defocus_kernel_is_a_normalised_disk():
    assert disk_kernel(1.5, 0.1).sum().item() == pytest.approx(1, abs=1e-6)
    k = disk_kernel(0.3, 0.4)  # radius < 1: only the centre, smoothed by the 3x3 anti-alias Gaussian
    assert k[7:10, 7:10].sum().item() == pytest.approx(1, abs=1e-6)
    assert gaussian_taps(1.0).sum().item() == pytest.approx(1, abs=1e-6) and len(gaussian_taps(1.0)) == 9


def test_every_corruption_keeps_shape_and_is_deterministic():
    x = noise_images(3)
    for name in CORRUPTIONS:
        a, b = corrupt(x, name, 2, seed=1), corrupt(x, name, 2, seed=1)
        assert a.dtype == torch.uint8 and a.shape == x.shape and torch.equal(a, b)
    assert not torch.equal(corrupt(x, "gaussian_noise", 2, seed=1), corrupt(x, "gaussian_noise", 2, seed=2))
    assert torch.equal(corrupt(x, "gaussian_noise", 2, batch=2), corrupt(x, "gaussian_noise", 2, batch=1000))


def test_constant_images_survive_blurs():
    x = torch.full((2, 3, 32, 32), 77, dtype=torch.uint8)
    for name in ("gaussian_blur", "defocus_blur", "pixelate", "contrast"):
        assert (corrupt(x, name, 5).int() - 77).abs().max() <= 1


def test_sharpen_raises_high_frequency_energy_monotonically():
    x = smooth_images(2)
    x = corrupt(x, "gaussian_noise", 1)  # some texture to sharpen
    assert torch.equal(sharpen(x, 0), x)
    energies = [high_frequency_energy(sharpen(x, a)) for a in (0, 0.5, 1, 2, 4)]
    assert all(a < b for a, b in zip(energies, energies[1:])), energies


def test_bad_arguments_are_user_errors():
    x = noise_images(1)
    with pytest.raises(UserError, match="unknown corruption"):
        corrupt(x, "fog", 1)
    with pytest.raises(UserError, match="1-5"):
        corrupt(x, "contrast", 6)
    with pytest.raises(UserError, match="uint8"):
        corrupt(x.float(), "contrast", 1)
    assert parse_severities("1-5") == [1, 2, 3, 4, 5] and parse_severities("5,1") == [1, 5]
    for bad in ("0-3", "a", "", "2-9"):
        with pytest.raises(UserError):
            parse_severities(bad)
    assert parse_corruptions("all") == list(CORRUPTIONS) and parse_corruptions("none") == []
    with pytest.raises(UserError, match="snow"):
        parse_corruptions("contrast,snow")
