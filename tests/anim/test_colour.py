"""Colour spaces, histogram matching and the colour reference, on synthetic images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdfleet.anim.colour import (
    ColourReference,
    channel_histogram,
    from_uint8,
    hsv_to_rgb,
    lab_to_rgb,
    match_channel,
    match_histograms,
    rgb_to_hsv,
    rgb_to_lab,
    to_uint8,
)

QUANTILES = np.linspace(0.02, 0.98, 25)


def random_rgb(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape)


def smooth_image(seed: int, tint: tuple[float, float, float], height: int = 48) -> torch.Tensor:
    """An in-gamut (3, H, H) picture: a gradient plus texture, scaled per channel by tint."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.25, 0.85, height)
    base = 0.5 * (ramp[None, :, None] + ramp[None, None, :]) + 0.1 * rng.random((3, height, height))
    tinted = np.clip(base * np.array(tint)[:, None, None], 0.0, 1.0)
    return torch.from_numpy(tinted).float()


def channel_quantiles(image: torch.Tensor, convert) -> np.ndarray:
    """(3, len(QUANTILES)) quantiles of each channel of image in a colour space."""
    values = convert(image.double().numpy()).reshape(3, -1)
    return np.quantile(values, QUANTILES, axis=1)


def test_lab_known_values() -> None:
    colours = np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    expected = np.array([[100, 0, 0], [0, 0, 0], [53.24, 80.09, 67.20], [32.30, 79.19, -107.86]])
    assert np.allclose(rgb_to_lab(colours.T).T, expected, atol=0.05)
    assert np.allclose(rgb_to_lab(colours.T.astype(np.float32)).T, expected, atol=0.05)


def test_hsv_known_values() -> None:
    colours = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0.5, 0.5, 0.5], [1.0, 1.0, 0]])
    expected = np.array([[0, 1, 1], [1 / 3, 1, 1], [2 / 3, 1, 1], [0, 0, 0.5], [1 / 6, 1, 1]])
    assert np.allclose(rgb_to_hsv(colours.T).T, expected)


@pytest.mark.parametrize(
    ("forward", "backward"), [(rgb_to_lab, lab_to_rgb), (rgb_to_hsv, hsv_to_rgb)]
)
def test_colour_space_round_trips(forward, backward) -> None:
    rgb = random_rgb((64, 64, 3))
    rgb[0, :8] = [
        [0, 0, 0],
        [1, 1, 1],
        [1, 0, 0],
        [0, 1, 0],
        [0, 0, 1],
        [1, 1, 0],
        [0, 1, 1],
        [1, 0, 1],
    ]
    channels_first = np.moveaxis(rgb, -1, 0)  # (3, H, W), as images are
    assert np.allclose(backward(forward(channels_first)), channels_first, atol=1e-9)
    single = channels_first.astype(np.float32)  # what renders use: float32 stays float32
    assert backward(forward(single)).dtype == np.float32
    assert np.allclose(backward(forward(single)), single, atol=2e-5)


def test_matched_channel_takes_the_reference_quantiles_and_keeps_the_order() -> None:
    rng = np.random.default_rng(1)
    source = rng.normal(0, 1, 5000).clip(-4, 4).astype(np.float32)
    reference = rng.exponential(1.0, 3000).clip(0, 8)
    matched = match_channel(source, -8.0, 8.0, channel_histogram(reference, -8.0, 8.0))
    assert matched.dtype == np.float32
    assert np.allclose(
        np.quantile(matched, QUANTILES), np.quantile(reference, QUANTILES), atol=0.02
    )
    order = np.argsort(source, kind="stable")
    assert np.all(np.diff(matched[order]) >= 0)  # monotone: no pixel overtakes another


def test_a_channel_matched_to_itself_is_unchanged_even_with_empty_bins() -> None:
    rng = np.random.default_rng(2)  # two clusters with a wide gap, and a spike of equal values
    values = np.concatenate(
        [rng.uniform(0.1, 0.2, 500), rng.uniform(0.7, 0.9, 500), np.full(300, 0.5)]
    )
    matched = match_channel(values, 0.0, 1.0, channel_histogram(values, 0.0, 1.0))
    assert np.allclose(matched, values, atol=1e-9)


@pytest.mark.parametrize(
    ("mode", "convert"),
    [("RGB", lambda x: x), ("LAB", rgb_to_lab), ("HSV", rgb_to_hsv)],
)
def test_match_histograms_matches_the_reference(mode: str, convert) -> None:
    image = smooth_image(0, (1.0, 0.9, 0.8))
    reference = smooth_image(1, (0.5, 0.8, 1.0))[:, :40, :]  # another size is fine
    matched = match_histograms(image, reference, mode)
    assert matched.shape == image.shape and matched.dtype == image.dtype
    got, want = channel_quantiles(matched, convert), channel_quantiles(reference, convert)
    before = channel_quantiles(image, convert)
    scale = np.ptp(want, axis=1, keepdims=True) + 1e-9  # tolerance relative to each channel
    assert np.all(np.abs(got - want) / scale < 0.03)
    assert np.any(np.abs(before - want) / scale > 0.1)  # it really had to move


def test_match_histograms_none_and_self() -> None:
    image = smooth_image(2, (0.9, 0.7, 0.6))
    assert match_histograms(image, smooth_image(3, (1, 1, 1)), None) is image
    assert match_histograms(image, smooth_image(3, (1, 1, 1)), "None") is image
    assert torch.allclose(match_histograms(image, image, "lab"), image, atol=1e-5)


def test_batches_are_matched_image_by_image() -> None:
    batch = torch.stack([smooth_image(s, (1.0, 0.8, 0.6)) for s in range(2)])  # (2, 3, H, W)
    reference = smooth_image(5, (0.6, 0.8, 1.0))
    matched = match_histograms(batch, reference, "LAB")
    assert matched.shape == batch.shape
    assert torch.equal(matched[1], match_histograms(batch[1], reference, "LAB"))


def test_bad_mode_is_named() -> None:
    image = smooth_image(0, (1, 1, 1))
    with pytest.raises(ValueError, match="did you mean 'LAB'"):
        match_histograms(image, image, "LBA")


def test_uint8_conversions_round_trip() -> None:
    array = (random_rgb((5, 7, 3)) * 255).astype(np.uint8)
    tensor = from_uint8(array)
    assert tensor.shape == (3, 5, 7) and tensor.dtype == torch.float32
    assert np.array_equal(to_uint8(tensor), array)


def frames_from_red_to_blue(count: int) -> list[torch.Tensor]:
    return [smooth_image(i, (1.0 - i / count, 0.3, i / count + 0.05)) for i in range(count)]


def test_first_reference_keeps_frame_zero() -> None:
    frames = frames_from_red_to_blue(5)
    keeper = ColourReference("first")
    assert keeper.reference is None and keeper.match(frames[1]) is frames[1]
    for frame in frames:
        keeper.update(frame)
    assert torch.equal(keeper.reference, frames[0])


def test_window_reference_follows_the_animation() -> None:
    frames = frames_from_red_to_blue(10)
    window, first = ColourReference("window", window=3), ColourReference("first")
    for frame in frames:
        window.update(frame)
        first.update(frame)
    assert torch.equal(window.reference, torch.cat(frames[-3:], dim=-1))
    grey = smooth_image(42, (0.6, 0.6, 0.6))
    blue_ish, red_ish = window.match(grey, "RGB"), first.match(grey, "RGB")
    assert blue_ish[2].mean() > blue_ish[0].mean()
    assert red_ish[0].mean() > red_ish[2].mean()


def test_reference_match_equals_match_histograms_after_updates() -> None:
    frames = frames_from_red_to_blue(6)
    keeper, grey = ColourReference("window", window=2), smooth_image(8, (0.6, 0.6, 0.6))
    for frame in frames:
        keeper.update(frame)
        for mode in ("LAB", "RGB"):  # each match may reuse the CDFs cached since the update
            expected = match_histograms(grey, keeper.reference, mode)
            assert torch.equal(keeper.match(grey, mode), expected)
            assert torch.equal(keeper.match(grey, mode), expected)


@pytest.mark.parametrize("mode", ["first", "window"])
def test_reference_state_resumes_exactly(mode: str) -> None:
    frames = frames_from_red_to_blue(8)
    keeper = ColourReference(mode, window=4)
    for frame in frames[:5]:
        keeper.update(frame)
    restored = ColourReference.from_bytes(keeper.to_bytes())
    again = ColourReference.from_state_dict(keeper.state_dict())
    for other in (restored, again):
        assert (other.mode, other.window) == (keeper.mode, keeper.window)
        assert torch.equal(other.reference, keeper.reference)
    for frame in frames[5:]:
        keeper.update(frame)
        restored.update(frame)
    probe = smooth_image(9, (0.7, 0.7, 0.7))
    assert torch.equal(restored.match(probe), keeper.match(probe))


def test_empty_reference_state_round_trips() -> None:
    restored = ColourReference.from_bytes(ColourReference("window", window=2).to_bytes())
    assert restored.reference is None and restored.window == 2


def test_bad_reference_settings_are_named() -> None:
    with pytest.raises(ValueError, match="did you mean 'window'"):
        ColourReference("windw")
    with pytest.raises(ValueError, match="window"):
        ColourReference("window", window=0)
