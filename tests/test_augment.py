import numpy as np
import pytest
import torch

from cifarlab.data.augment import AugmentConfig, affine_theta, apply_params, augment_batch, preview_grid, sample_params
from cifarlab.errors import UserError

IMP2 = AugmentConfig(rotation=20, width_shift=0.1, height_shift=0.1, zoom=(0.8, 1.3), channel_shift=0.2, hflip=True)


def rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def params(n, **kw):
    """Identity parameters, with the named ones overridden (hand-built transforms)."""
    p = dict(angle=0.0, tx=0.0, ty=0.0, zx=1.0, zy=1.0, flip=False, shift=0.0)
    p.update(kw)
    return {k: torch.full((n,), v, dtype=torch.bool if k == "flip" else torch.float64) for k, v in p.items()}


# --- flip ---------------------------------------------------------------------------------------

def test_forced_flip_is_exact():
    x = rand(4, 3, 32, 32)
    out = apply_params(x, params(4, flip=True), AugmentConfig(hflip=True))
    assert torch.equal(out, x.flip(-1))


def test_flip_probability_is_half():
    x = torch.arange(2).float().view(1, 1, 1, 2).expand(2000, 3, 1, 2)  # [0, 1] -> [1, 0] when flipped
    out = augment_batch(x, AugmentConfig(hflip=True), torch.Generator().manual_seed(0))
    flipped = out[:, 0, 0, 0] == 1
    assert torch.equal(out[flipped], x[flipped].flip(-1)) and torch.equal(out[~flipped], x[~flipped])
    assert abs(flipped.float().mean().item() - 0.5) < 0.05


# --- geometry -----------------------------------------------------------------------------------

def test_rotation_keeps_centre_pixel():
    x = rand(16, 3, 33, 33)
    out = augment_batch(x, AugmentConfig(rotation=20), torch.Generator().manual_seed(1))
    assert not torch.allclose(out, x)
    torch.testing.assert_close(out[..., 16, 16], x[..., 16, 16], atol=1e-5, rtol=0)


def test_rotation_90_is_counter_clockwise_rot90_on_non_square():
    x = rand(2, 3, 21, 33)
    out = apply_params(x, params(2, angle=90.0), AugmentConfig(rotation=90))
    # the centred 21x21 square turns like torch.rot90 (counter-clockwise, as scipy.ndimage.rotate)
    torch.testing.assert_close(out[..., 6:27], torch.rot90(x[..., 6:27], 1, dims=(-2, -1)), atol=1e-5, rtol=0)
    marker = torch.zeros(1, 1, 21, 21)
    marker[0, 0, 1, 18] = 1  # top-right goes to top-left under a counter-clockwise turn
    out = apply_params(marker, params(1, angle=90.0), AugmentConfig(rotation=90))
    assert out[0, 0].argmax().item() == 2 * 21 + 1


@pytest.mark.parametrize("k", [1, 3])
def test_shift_moves_content_right_and_down(k):
    x = rand(2, 3, 24, 32)
    right = apply_params(x, params(2, tx=k / 32), AugmentConfig(width_shift=0.1))
    torch.testing.assert_close(right[..., k:], x[..., :-k], atol=1e-5, rtol=0)
    down = apply_params(x, params(2, ty=k / 24), AugmentConfig(height_shift=0.1))
    torch.testing.assert_close(down[..., k:, :], x[..., :-k, :], atol=1e-5, rtol=0)
    # 'nearest' fill repeats the edge column / row that the shift uncovered
    torch.testing.assert_close(right[..., :k], x[..., :1].expand(-1, -1, -1, k), atol=1e-5, rtol=0)
    torch.testing.assert_close(down[..., :k, :], x[..., :1, :].expand(-1, -1, k, -1), atol=1e-5, rtol=0)


def test_half_pixel_shift_is_bilinear():
    x = rand(2, 3, 16, 16)
    out = apply_params(x, params(2, tx=0.5 / 16), AugmentConfig(width_shift=0.1))
    torch.testing.assert_close(out[..., 1:], (x[..., 1:] + x[..., :-1]) / 2, atol=1e-5, rtol=0)


def test_keras_order_shift_after_rotation_is_in_output_frame():
    # Keras' rotation @ shift @ zoom: the image is rotated, then shifted along the output's own axes
    x = rand(2, 3, 33, 33)
    out = apply_params(x, params(2, angle=90.0, tx=3 / 33), AugmentConfig(rotation=90, width_shift=0.1))
    torch.testing.assert_close(out[..., 3:], torch.rot90(x, 1, dims=(-2, -1))[..., :-3], atol=1e-5, rtol=0)


def test_zoom_2_halves_a_centred_square():
    x = torch.zeros(1, 3, 32, 32)
    x[..., 8:24, 8:24] = 1
    out = apply_params(x, params(1, zx=2.0, zy=2.0), AugmentConfig(zoom=(2.0, 2.0), fill="constant"))
    expect = torch.zeros_like(x)
    expect[..., 12:20, 12:20] = 1
    torch.testing.assert_close(out, expect, atol=1e-5, rtol=0)
    assert out.mean().item() == pytest.approx(x.mean().item() / 4, abs=1e-5)


def test_zoom_is_per_axis():
    x = torch.zeros(1, 1, 32, 32)
    x[..., 8:24, 8:24] = 1
    out = apply_params(x, params(1, zx=2.0), AugmentConfig(zoom=(1.0, 2.0), fill="constant"))
    expect = torch.zeros_like(x)
    expect[..., 8:24, 12:20] = 1  # narrower, same height
    torch.testing.assert_close(out, expect, atol=1e-5, rtol=0)


@pytest.mark.parametrize("fill", ["nearest", "constant", "reflect"])
def test_fill_modes(fill):
    x = (torch.arange(8.0) + 1).view(1, 1, 1, 8).expand(1, 1, 8, 8) / 10
    out = apply_params(x, params(1, tx=2 / 8), AugmentConfig(width_shift=0.5, fill=fill))
    uncovered = {"nearest": [0.1, 0.1], "constant": [0.0, 0.0], "reflect": [0.2, 0.1]}[fill]  # reflect: b a | a b
    torch.testing.assert_close(out[0, 0, 0, :2], torch.tensor(uncovered), atol=1e-5, rtol=0)


def test_identity_theta():
    theta = affine_theta(params(3), 32, 32)
    torch.testing.assert_close(theta, torch.eye(2, 3, dtype=torch.float64).expand(3, 2, 3))


# --- channel shift ------------------------------------------------------------------------------

def test_channel_shift_same_for_all_channels_and_clipped_to_image_range():
    x = 0.2 + 0.6 * rand(64, 3, 8, 8)
    out = augment_batch(x, AugmentConfig(channel_shift=0.2), torch.Generator().manual_seed(2))
    lo, hi = x.amin((1, 2, 3), keepdim=True), x.amax((1, 2, 3), keepdim=True)
    assert (out >= lo).all() and (out <= hi).all()
    d = out - x
    free = (out > lo) & (out < hi)  # pixels the clip left alone
    per_image = torch.stack([d[i][free[i]].mean() for i in range(64)])
    for i in range(64):
        torch.testing.assert_close(d[i][free[i]], per_image[i].expand(int(free[i].sum())), atol=1e-6, rtol=0)
    assert per_image.abs().max() <= 0.2 and per_image.min() < -0.1 and per_image.max() > 0.1


def test_channel_shift_without_geometry_is_exact():
    x = rand(4, 3, 8, 8)
    out = apply_params(x, params(4, shift=0.1), AugmentConfig(channel_shift=0.2))
    lo, hi = x.amin((1, 2, 3), keepdim=True), x.amax((1, 2, 3), keepdim=True)
    assert torch.equal(out, torch.minimum(torch.maximum(x + 0.1, lo), hi))


# --- distributions ------------------------------------------------------------------------------

def test_parameter_distributions():
    p = sample_params(20000, IMP2, torch.Generator().manual_seed(0))
    a = p["angle"]
    assert a.abs().max() <= 20 and a.min() < -19 and a.max() > 19 and abs(a.mean()) < 0.5
    for k in ("tx", "ty"):
        assert p[k].abs().max() <= 0.1 and p[k].min() < -0.099 and p[k].max() > 0.099
    for k in ("zx", "zy"):
        assert p[k].min() >= 0.8 and p[k].max() <= 1.3 and p[k].min() < 0.81 and p[k].max() > 1.29
    assert abs(torch.corrcoef(torch.stack([p["zx"], p["zy"]]))[0, 1]) < 0.05
    assert abs(torch.corrcoef(torch.stack([p["tx"], p["ty"]]))[0, 1]) < 0.05
    assert p["shift"].abs().max() <= 0.2 and p["shift"].min() < -0.19 and p["shift"].max() > 0.19
    assert abs(p["flip"].float().mean() - 0.5) < 0.02


def test_disabled_parameters_are_identity():
    p = sample_params(100, AugmentConfig(), torch.Generator().manual_seed(0))
    assert (p["angle"] == 0).all() and (p["tx"] == 0).all() and (p["zx"] == 1).all() and not p["flip"].any()


# --- API ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_device_preserved(dtype):
    x = rand(5, 3, 32, 32).to(dtype)
    out = augment_batch(x, IMP2, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    assert 0 <= out.min() and out.max() <= 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_cuda_matches_cpu():
    x = rand(8, 3, 32, 32)
    cpu = augment_batch(x, IMP2, torch.Generator().manual_seed(0))
    gpu = augment_batch(x.cuda(), IMP2, torch.Generator().manual_seed(0))
    assert gpu.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=0)


def test_disabled_config_returns_input():
    x = rand(2, 3, 8, 8)
    assert not AugmentConfig().enabled and augment_batch(x, AugmentConfig()) is x
    assert IMP2.enabled and AugmentConfig(hflip=True).enabled and not AugmentConfig(hflip=True).geometric


def test_seeded_generator_is_deterministic():
    x = rand(8, 3, 32, 32)
    a = augment_batch(x, IMP2, torch.Generator().manual_seed(7))
    b = augment_batch(x, IMP2, torch.Generator().manual_seed(7))
    c = augment_batch(x, IMP2, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_config_validation():
    assert AugmentConfig(zoom=[0.8, 1.3]).zoom == (0.8, 1.3)  # YAML lists become tuples
    for bad in (dict(fill="wrap"), dict(zoom=(1.3, 0.8)), dict(zoom=(0.0, 1.0)), dict(rotation=-1)):
        with pytest.raises(UserError):
            AugmentConfig(**bad)


def test_preview_grid_size_and_layout():
    images = (rand(3, 3, 32, 32) * 255).to(torch.uint8)
    img = preview_grid(images, IMP2, n_aug=4, scale=2, seed=0)
    assert img.size == ((5 * 32 + 4 * 2) * 2, (3 * 32 + 2 * 2) * 2) and img.mode == "RGB"
    px = torch.from_numpy(np.array(img)).permute(2, 0, 1)  # (3, H, W)
    assert torch.equal(px[:, :64:2, :64:2], images[0])  # first column is the original
    assert (px[:, :, 64:68] == 255).all() and (px[:, 64:68, :] == 255).all()  # white gaps
    assert not torch.equal(px[:, :64:2, 68:132:2], images[0])  # second column is augmented
