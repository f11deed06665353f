"""2D warps on synthetic images against known results (no model)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sdfleet.anim.motion import (
    PerspectiveFlip,
    motion_matrix,
    perspective_flip_matrix,
    rotation_zoom_matrix,
    warp_frame,
    warp_with_matrix,
)


def random_image(height: int = 32, width: int = 32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(3, height, width, generator=generator)  # (3, H, W)


def apply(matrix: np.ndarray, x: float, y: float) -> tuple[float, float]:
    point = matrix @ np.array([x, y, 1.0])
    return point[0] / point[2], point[1] / point[2]


@pytest.mark.parametrize("border", ["replicate", "wrap"])
def test_identity_is_identity(border: str) -> None:
    image = random_image(24, 40)
    assert torch.allclose(warp_frame(image, border=border), image, atol=1e-5)


def test_90_degrees_is_rot90_counter_clockwise() -> None:
    image = random_image(32, 32)
    turned = warp_frame(image, angle_deg=90.0)
    expected = torch.rot90(image, k=1, dims=(1, 2))  # np.rot90: counter-clockwise on screen
    assert torch.allclose(turned[:, 1:-1, 1:-1], expected[:, 1:-1, 1:-1], atol=1e-5)
    assert torch.allclose(turned, expected, atol=1e-5)  # exact centre: the edges match too
    back = warp_frame(image, angle_deg=-90.0)
    assert torch.allclose(back, torch.rot90(image, k=-1, dims=(1, 2)), atol=1e-5)


def test_positive_angle_moves_right_of_centre_upwards() -> None:
    image = torch.zeros(3, 33, 33)
    image[:, 16, 26] = 1.0  # a dot right of the centre pixel (16, 16)
    turned = warp_frame(image, angle_deg=90.0)
    row, col = divmod(int(turned[0].argmax()), 33)
    assert (row, col) == (6, 16)  # now above the centre


def test_zoom_2_is_centre_crop_upscaled() -> None:
    image = random_image(32, 32)
    zoomed = warp_frame(image, zoom=2.0)
    crop = image[:, 8:24, 8:24].unsqueeze(0)  # (1, 3, 16, 16)
    expected = F.interpolate(crop, scale_factor=2, mode="bilinear", align_corners=False)[0]
    # interpolate clamps at the crop's edge where the warp still sees the neighbours: interior
    assert torch.allclose(zoomed[:, 1:-1, 1:-1], expected[:, 1:-1, 1:-1], atol=1e-5)


def test_zoom_below_one_shrinks_about_the_centre() -> None:
    image = torch.zeros(3, 32, 32)
    image[:, 8:24, 8:24] = 1.0  # a 16 px square in the middle
    shrunk = warp_frame(image, zoom=0.5)
    assert shrunk[0, 16, 16] == pytest.approx(1.0)
    assert shrunk[0].sum().item() == pytest.approx(64.0, abs=1.0)  # 16x16 area / 4


@pytest.mark.parametrize(("dx", "dy"), [(3, 0), (0, 5), (4, -2), (-6, 7)])
def test_translation_shifts_content(dx: int, dy: int) -> None:
    image = random_image(30, 36)
    moved = warp_frame(image, translation_x=float(dx), translation_y=float(dy))
    height, width = image.shape[1:]
    rows, cols = slice(max(dy, 0), height + min(dy, 0)), slice(max(dx, 0), width + min(dx, 0))
    src_rows = slice(max(-dy, 0), height + min(-dy, 0))
    src_cols = slice(max(-dx, 0), width + min(-dx, 0))
    assert torch.allclose(moved[:, rows, cols], image[:, src_rows, src_cols], atol=1e-5)


def test_replicate_border_repeats_the_edge() -> None:
    image = random_image(20, 20)
    moved = warp_frame(image, translation_x=5.0, border="replicate")
    for col in range(5):
        assert torch.allclose(moved[:, :, col], image[:, :, 0], atol=1e-5)


def test_wrap_border_wraps() -> None:
    image = random_image(20, 28)
    moved = warp_frame(image, translation_x=5.0, translation_y=-3.0, border="wrap")
    assert torch.allclose(moved, torch.roll(image, shifts=(-3, 5), dims=(1, 2)), atol=1e-5)


def test_wrap_seam_blends_opposite_edges() -> None:
    image = random_image(16, 16)
    moved = warp_frame(image, translation_x=0.5, border="wrap")
    expected = 0.5 * (image + torch.roll(image, shifts=1, dims=2))
    assert torch.allclose(moved, expected, atol=1e-5)


def test_batch_matches_single_images() -> None:
    batch = torch.stack([random_image(seed=s) for s in range(3)])  # (3, 3, 32, 32)
    kwargs = {"angle_deg": 12.0, "zoom": 1.1, "translation_x": 2.5, "border": "wrap"}
    warped = warp_frame(batch, **kwargs)
    assert warped.shape == batch.shape
    for i in range(3):
        assert torch.allclose(warped[i], warp_frame(batch[i], **kwargs), atol=1e-6)


def test_rotation_matrix_is_opencvs() -> None:
    # cv2.getRotationMatrix2D((10, 20), 30, 1.5) computed by hand from OpenCV's documentation
    alpha, beta = 1.5 * math.cos(math.radians(30)), 1.5 * math.sin(math.radians(30))
    expected = [
        [alpha, beta, (1 - alpha) * 10 - beta * 20],
        [-beta, alpha, beta * 10 + (1 - alpha) * 20],
    ]
    assert np.allclose(rotation_zoom_matrix(30, 1.5, 10, 20)[:2], expected)


def test_translation_is_applied_before_rotation_and_zoom() -> None:
    matrix = motion_matrix(64, 64, angle_deg=90.0, zoom=2.0, translation_x=1.0)
    # Deforum: rot_mat @ trans_mat, so the translation is turned and scaled too
    no_shift = motion_matrix(64, 64, angle_deg=90.0, zoom=2.0)
    dx, dy = np.subtract(apply(matrix, 10, 10), apply(no_shift, 10, 10))
    assert (dx, dy) == pytest.approx((0.0, -2.0))


def test_transform_centre_is_a_fixed_point() -> None:
    matrix = motion_matrix(
        80, 60, angle_deg=37.0, zoom=1.3, transform_center_x=0.25, transform_center_y=0.75
    )
    assert apply(matrix, 20.0, 45.0) == pytest.approx((20.0, 45.0))


def test_composed_matrices_equal_successive_warps() -> None:
    image = random_image(24, 24)
    first = motion_matrix(24, 24, translation_x=2.0)
    second = motion_matrix(24, 24, translation_y=3.0)
    twice = warp_with_matrix(warp_with_matrix(image, first, border="wrap"), second, border="wrap")
    once = warp_with_matrix(image, second @ first, border="wrap")
    assert torch.allclose(twice, once, atol=1e-5)


@pytest.mark.parametrize("fv", [30.0, 53.0, 120.0])
def test_flat_perspective_flip_is_identity(fv: float) -> None:
    assert np.allclose(perspective_flip_matrix(64, 48, PerspectiveFlip(fv_deg=fv)), np.eye(3))
    image = random_image(48, 64)
    flipped = warp_frame(image, perspective=PerspectiveFlip(fv_deg=fv))
    assert torch.allclose(flipped, image, atol=1e-5)


def test_perspective_theta_turns_in_plane_clockwise() -> None:
    image = random_image(32, 32)
    # Deforum's Rz has y pointing down on screen: +theta turns clockwise (unlike angle_deg)
    flipped = warp_frame(image, perspective=PerspectiveFlip(theta_deg=90.0))
    assert torch.allclose(flipped, torch.rot90(image, k=-1, dims=(1, 2)), atol=1e-5)


def test_perspective_phi_makes_a_trapezoid_about_the_centre() -> None:
    matrix = perspective_flip_matrix(64, 64, PerspectiveFlip(phi_deg=20.0))
    assert apply(matrix, 32, 32) == pytest.approx((32, 32))
    top = np.subtract(apply(matrix, 64, 0), apply(matrix, 0, 0))[0]
    bottom = np.subtract(apply(matrix, 64, 64), apply(matrix, 0, 64))[0]
    assert abs(top - bottom) > 1.0  # one edge leans away from the camera


def test_bad_arguments_name_the_fix() -> None:
    image = random_image(8, 8)
    with pytest.raises(ValueError, match="did you mean 'wrap'"):
        warp_frame(image, border="wrapp")
    with pytest.raises(ValueError, match="zoom"):
        warp_frame(image, zoom=0.0)
    with pytest.raises(ValueError, match="fv_deg"):
        PerspectiveFlip(fv_deg=0.0)
