"""Contrast, unsharp mask and seeded noise."""

from __future__ import annotations

import pytest
import torch

from sdfleet.anim.filters import (
    add_noise,
    adjust_contrast,
    gaussian_blur,
    gaussian_kernel_1d,
    make_noise,
    perlin_noise,
    unsharp_mask,
)


def random_image(height: int = 32, width: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(3, height, width, generator=torch.Generator().manual_seed(seed))


def step_edge(size: int = 32) -> torch.Tensor:
    image = torch.full((3, size, size), 0.3)
    image[:, :, size // 2 :] = 0.7
    return image


def neighbour_correlation(field: torch.Tensor) -> float:
    """Correlation of horizontally adjacent values of an (H, W) field."""
    left, right = field[:, :-1].flatten(), field[:, 1:].flatten()
    return torch.corrcoef(torch.stack([left, right]))[0, 1].item()


def test_contrast_is_a_plain_multiply_clamped() -> None:
    image = random_image()
    assert adjust_contrast(image, 1.0) is image
    assert torch.allclose(adjust_contrast(image, 0.5), image * 0.5)
    boosted = adjust_contrast(image, 3.0)
    assert boosted.max() <= 1.0 and torch.allclose(boosted, (image * 3).clamp(max=1.0))


def test_gaussian_kernel_is_opencvs() -> None:
    # cv2.getGaussianKernel(5, 1.0)
    expected = torch.tensor([0.05448868, 0.24420134, 0.40261995, 0.24420134, 0.05448868])
    assert torch.allclose(gaussian_kernel_1d(5, 1.0).float(), expected, atol=1e-6)
    with pytest.raises(ValueError, match="odd"):
        gaussian_kernel_1d(4, 1.0)


def test_blur_keeps_flat_images_and_small_images_work() -> None:
    flat = torch.full((3, 16, 16), 0.4)
    assert torch.allclose(gaussian_blur(flat, 5, 1.0), flat, atol=1e-6)
    tiny = random_image(2, 3)
    assert gaussian_blur(tiny, 7, 2.0).shape == tiny.shape


def test_unsharp_mask_formula() -> None:
    image = step_edge()
    sharpened = unsharp_mask(image, amount=0.5, kernel_size=5, sigma=1.0)
    expected = (1.5 * image - 0.5 * gaussian_blur(image, 5, 1.0)).clamp(0, 1)
    assert torch.allclose(sharpened, expected, atol=1e-6)
    # overshoot on both sides of the edge: the edge got sharper
    assert sharpened[0, 5, 15] < 0.3 - 1e-3 and sharpened[0, 5, 16] > 0.7 + 1e-3
    assert torch.allclose(sharpened[:, :, :10], image[:, :, :10], atol=1e-6)  # flat stays flat


def test_unsharp_mask_amount_zero_and_threshold() -> None:
    image = step_edge()
    assert unsharp_mask(image, amount=0.0) is image
    kept = unsharp_mask(image, amount=1.0, threshold=1.0)  # nothing differs from its blur by 1
    assert torch.equal(kept, image)
    partly = unsharp_mask(image, amount=1.0, threshold=0.1)
    changed = (partly != image).any(dim=0)  # (H, W)
    assert changed[:, 14:18].any() and not changed[:, :12].any()


@pytest.mark.parametrize("noise_type", ["uniform", "perlin"])
def test_noise_same_seed_same_result(noise_type: str) -> None:
    image = random_image(40, 56)
    first = add_noise(image, 0.2, seed=123, noise_type=noise_type)
    again = add_noise(image, 0.2, seed=123, noise_type=noise_type)
    other = add_noise(image, 0.2, seed=124, noise_type=noise_type)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)
    assert first.min() >= 0 and first.max() <= 1


def test_noise_blends_toward_the_noise_picture() -> None:
    image = random_image(24, 24)
    noise = make_noise((3, 24, 24), seed=7)
    assert torch.allclose(add_noise(image, 0.25, seed=7), 0.75 * image + 0.25 * noise)
    assert add_noise(image, 0.0, seed=7) is image
    assert 0.45 < noise.mean().item() < 0.55  # 0.5 + 0.5 * N(0, 1), clamped


def test_noise_leaves_the_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    add_noise(random_image(), 0.1, seed=5, noise_type="perlin")
    assert torch.equal(state, torch.random.get_rng_state())


def test_perlin_is_smooth_and_white_noise_is_not() -> None:
    generator = torch.Generator().manual_seed(0)
    field = perlin_noise(64, 96, generator=generator, perlin_octaves=1)
    assert field.shape == (64, 96) and field.abs().max() <= 1.5
    assert neighbour_correlation(field) > 0.8
    white = torch.randn(64, 96, generator=generator)
    assert abs(neighbour_correlation(white)) < 0.1


def test_perlin_works_at_any_size_and_is_seeded() -> None:
    def field(seed: int) -> torch.Tensor:
        return perlin_noise(50, 70, generator=torch.Generator().manual_seed(seed), perlin_w=3)

    assert field(1).shape == (50, 70)
    assert torch.equal(field(1), field(1)) and not torch.equal(field(1), field(2))


def test_batched_noise_has_the_image_shape() -> None:
    batch = torch.stack([random_image(seed=s) for s in range(2)])  # (2, 3, 32, 32)
    noised = add_noise(batch, 0.1, seed=3, noise_type="perlin")
    assert noised.shape == batch.shape


def test_bad_noise_arguments_are_named() -> None:
    image = random_image(8, 8)
    with pytest.raises(ValueError, match="did you mean 'perlin'"):
        add_noise(image, 0.1, seed=1, noise_type="perlni")
    with pytest.raises(ValueError, match="amount"):
        add_noise(image, 1.5, seed=1)
    with pytest.raises(ValueError, match="perlin_octaves"):
        add_noise(image, 0.1, seed=1, noise_type="perlin", perlin_octaves=0)
