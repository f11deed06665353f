"""2D motion of the animation chain: Deforum's angle / zoom / translation / perspective flip.

Image representation (shared by `anim.motion`, `anim.colour` and `anim.filters`): a float torch
tensor, RGB, values in [0, 1], shaped (3, H, W) or batched (B, 3, H, W).

Coordinates are continuous pixel coordinates, x to the right and y down. Pixel (row i, col j)
covers [j, j + 1) x [i, i + 1), so its centre is (j + 0.5, i + 0.5) and the image centre is
exactly (W / 2, H / 2); this is torch's `align_corners=False` convention. (Deforum passes
`(W * cx, H * cy)` to OpenCV, whose pixel centres sit on integers, so its centre is half a pixel
off; ours makes a 90-degree turn of a square image an exact `np.rot90`.)

Conventions follow Deforum's 2D mode (`anim_frame_warp_2d`), one step per frame:
- `angle_deg` > 0 turns the picture counter-clockwise on screen (`cv2.getRotationMatrix2D`);
- `zoom` > 1 zooms in (content grows), multiplicatively per frame, about the transform centre
  `(transform_center_x * W, transform_center_y * H)`;
- `translation_x` > 0 moves content right, `translation_y` > 0 moves content down (pixels).
  As in Deforum the translation is applied first, then rotation/zoom, so it is scaled by `zoom`.
- the optional perspective flip (theta / phi / gamma / fv) is applied last.

`motion_matrix` returns the forward 3x3 homography (source pixel -> destination pixel, the matrix
`cv2.warpPerspective` takes); `warp_with_matrix` applies any such matrix, so cadence tweens can
compose or re-use motions.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from sdfleet.batch.errors import suggest_name

logger = logging.getLogger(__name__)

BORDERS = ("replicate", "wrap")


@dataclass(frozen=True)
class PerspectiveFlip:
    """Deforum's `flip_2d_perspective`: the picture plane turned in 3D and seen by a pinhole camera.

    theta_deg turns about the view axis, phi_deg about the horizontal axis, gamma_deg about the
    vertical axis; fv_deg is the camera's field of view (Deforum's default 53).
    """

    theta_deg: float = 0.0
    phi_deg: float = 0.0
    gamma_deg: float = 0.0
    fv_deg: float = 53.0

    def __post_init__(self) -> None:
        if not 0.0 < self.fv_deg < 180.0:
            raise ValueError(
                f"perspective flip fv_deg={self.fv_deg!r} is not a field of view; "
                "use a value between 0 and 180 degrees (Deforum's default is 53)"
            )


def rotation_zoom_matrix(
    angle_deg: float, zoom: float, center_x: float, center_y: float
) -> np.ndarray:
    """Rotate by angle_deg (counter-clockwise on screen) and scale by zoom about a point.

    Same matrix as `cv2.getRotationMatrix2D(center, angle, zoom)`, as 3x3.
    """
    if not zoom > 0:
        raise ValueError(f"zoom={zoom!r} must be > 0 (1.0 keeps the size, >1 zooms in)")
    a = zoom * math.cos(math.radians(angle_deg))
    b = zoom * math.sin(math.radians(angle_deg))
    return np.array(
        [
            [a, b, (1 - a) * center_x - b * center_y],
            [-b, a, b * center_x + (1 - a) * center_y],
            [0.0, 0.0, 1.0],
        ]
    )


def _rotation_3d(theta_deg: float, phi_deg: float, gamma_deg: float) -> np.ndarray:
    """Rx(phi) @ Ry(gamma) @ Rz(theta): the order and signs of Deforum's rotation matrix."""
    phi, gamma, theta = (math.radians(v) for v in (phi_deg, gamma_deg, theta_deg))
    cp, sp = math.cos(phi), math.sin(phi)
    cg, sg = math.cos(gamma), math.sin(gamma)
    ct, st = math.cos(theta), math.sin(theta)
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    ry = np.array([[cg, 0, sg], [0, 1, 0], [-sg, 0, cg]])
    rz = np.array([[ct, -st, 0], [st, ct, 0], [0, 0, 1]])
    return rx @ ry @ rz


def perspective_flip_matrix(width: int, height: int, flip: PerspectiveFlip) -> np.ndarray:
    """Forward homography of Deforum's perspective flip, about the image centre.

    Deforum (`warpMatrix`) puts the picture, centred, at distance h = d / (2 sin(fv/2)) from a
    pinhole camera of focal length h (d = image diagonal), turns it, projects it and fits the
    4-corner homography. For a plane that homography has the closed form built here. Deforum then
    composes its centring shift on the input side, which turns the picture about an off-centre
    point whenever theta/phi/gamma are not 0; we centre the output, so zero angles are the
    identity and theta turns about the image centre.
    """
    half_fv = math.radians(flip.fv_deg / 2)
    h = math.hypot(width, height) / (2 * math.sin(half_fv))
    r = _rotation_3d(flip.theta_deg, flip.phi_deg, flip.gamma_deg)
    cx, cy = width / 2, height / 2
    # a centred point (x, y, 0) lands at (R00 x + R01 y, R10 x + R11 y, R20 x + R21 y); the camera
    # sees it at centre + h * (X, Y) / (h - Z). In homogeneous form, on (x, y, 1):
    centred = np.array(
        [
            [h * r[0, 0] - cx * r[2, 0], h * r[0, 1] - cx * r[2, 1], cx * h],
            [h * r[1, 0] - cy * r[2, 0], h * r[1, 1] - cy * r[2, 1], cy * h],
            [-r[2, 0], -r[2, 1], h],
        ]
    )
    to_centred = np.array([[1.0, 0.0, -cx], [0.0, 1.0, -cy], [0.0, 0.0, 1.0]])
    matrix = centred @ to_centred
    return matrix / matrix[2, 2]


def motion_matrix(
    width: int,
    height: int,
    *,
    angle_deg: float = 0.0,
    zoom: float = 1.0,
    translation_x: float = 0.0,
    translation_y: float = 0.0,
    transform_center_x: float = 0.5,
    transform_center_y: float = 0.5,
    perspective: PerspectiveFlip | None = None,
) -> np.ndarray:
    """Forward 3x3 homography (source pixel -> destination pixel) of one frame's 2D motion.

    destination = flip @ rotate_zoom(about the transform centre) @ translate @ source, the
    composition of Deforum's `anim_frame_warp_2d`. Pure numpy (float64); compose motions with `@`.
    """
    translate = np.array([[1.0, 0.0, translation_x], [0.0, 1.0, translation_y], [0.0, 0.0, 1.0]])
    rotate_zoom = rotation_zoom_matrix(
        angle_deg, zoom, transform_center_x * width, transform_center_y * height
    )
    matrix = rotate_zoom @ translate
    if perspective is not None:
        matrix = perspective_flip_matrix(width, height, perspective) @ matrix
    return matrix


def _check_border(border: str) -> None:
    if border not in BORDERS:
        raise ValueError(
            f"border={border!r} is not one of {', '.join(BORDERS)}{suggest_name(border, BORDERS)}"
        )


def _source_coordinates(matrix: np.ndarray, height: int, width: int) -> torch.Tensor:
    """Where each destination pixel centre comes from in the source: (H, W, 2) float64 (x, y)."""
    inverse = torch.from_numpy(np.linalg.inv(matrix))  # (3, 3) destination -> source
    ys = torch.arange(height, dtype=torch.float64) + 0.5
    xs = torch.arange(width, dtype=torch.float64) + 0.5
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")  # (H, W) each
    points = torch.stack([grid_x, grid_y, torch.ones_like(grid_x)], dim=-1)  # (H, W, 3)
    source = points @ inverse.T  # (H, W, 3)
    return source[..., :2] / source[..., 2:3]


def warp_with_matrix(
    image: torch.Tensor, matrix: np.ndarray, *, border: str = "replicate"
) -> torch.Tensor:
    """Warp (C, H, W) or (B, C, H, W) by a forward homography; bilinear `grid_sample`.

    border "replicate" repeats edge pixels (OpenCV BORDER_REPLICATE); "wrap" tiles the picture
    (BORDER_WRAP): coordinates are taken modulo the size and the picture is padded circularly by
    one pixel, so bilinear sampling across the seam blends the opposite edges.
    """
    _check_border(border)
    batch = image if image.dim() == 4 else image.unsqueeze(0)  # (B, C, H, W)
    height, width = batch.shape[-2:]
    source = _source_coordinates(np.asarray(matrix, dtype=np.float64), height, width)
    size = torch.tensor([width, height], dtype=torch.float64)
    if border == "wrap":
        source = torch.remainder(source, size) + 1.0  # into the 1-pixel circular padding frame
        batch = F.pad(batch, (1, 1, 1, 1), mode="circular")
        size = size + 2.0
    grid = (2.0 * source / size - 1.0).to(device=batch.device, dtype=batch.dtype)  # (H, W, 2)
    grid = grid.unsqueeze(0).expand(batch.shape[0], -1, -1, -1)  # (B, H, W, 2)
    warped = F.grid_sample(
        batch, grid, mode="bilinear", padding_mode="border", align_corners=False
    )  # (B, C, H, W)
    return warped if image.dim() == 4 else warped.squeeze(0)


def warp_frame(
    image: torch.Tensor,
    *,
    angle_deg: float = 0.0,
    zoom: float = 1.0,
    translation_x: float = 0.0,
    translation_y: float = 0.0,
    transform_center_x: float = 0.5,
    transform_center_y: float = 0.5,
    perspective: PerspectiveFlip | None = None,
    border: str = "replicate",
) -> torch.Tensor:
    """Apply one frame of Deforum 2D motion to (3, H, W) or (B, 3, H, W) in [0, 1]."""
    _check_border(border)
    height, width = image.shape[-2:]
    matrix = motion_matrix(
        width,
        height,
        angle_deg=angle_deg,
        zoom=zoom,
        translation_x=translation_x,
        translation_y=translation_y,
        transform_center_x=transform_center_x,
        transform_center_y=transform_center_y,
        perspective=perspective,
    )
    return warp_with_matrix(image, matrix, border=border)
