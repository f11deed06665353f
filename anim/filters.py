"""Per-frame filters of the 2D chain: contrast, unsharp-mask anti-blur, seeded noise (with Perlin).

Images are float torch tensors (3, H, W) or (B, 3, H, W), RGB in [0, 1] (see `anim.motion`).
Inputs are never modified. Every random draw comes from a `torch.Generator` seeded from the
arguments (on CPU, then moved to the image's device), so the same seed gives the same pixels on
any machine and no global RNG is touched.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

from sdfleet.batch.errors import suggest_name

logger = logging.getLogger(__name__)

NOISE_TYPES = ("uniform", "perlin")


def adjust_contrast(image: torch.Tensor, factor: float) -> torch.Tensor:
    """Deforum's contrast step: a plain multiply, `image * factor`, clamped to [0, 1].

    (Deforum multiplies the 8-bit frame and casts to uint8, which wraps around above 255; we clamp.)
    """
    if factor == 1.0:
        return image
    return (image * factor).clamp(0.0, 1.0)


def gaussian_kernel_1d(kernel_size: int, sigma: float) -> torch.Tensor:
    """(kernel_size,) normalised Gaussian, as `cv2.getGaussianKernel`.

    sigma <= 0 derives it from the size with OpenCV's formula 0.3 * ((k - 1) / 2 - 1) + 0.8.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size={kernel_size!r} must be a positive odd number (e.g. 5)")
    if sigma <= 0:
        sigma = 0.3 * ((kernel_size - 1) * 0.5 - 1) + 0.8
    offsets = torch.arange(kernel_size, dtype=torch.float64) - (kernel_size - 1) / 2
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def gaussian_blur(image: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (C, H, W) or (B, C, H, W), like `cv2.GaussianBlur`.

    Borders reflect without repeating the edge pixel (OpenCV's BORDER_REFLECT_101); an image
    smaller than the kernel radius falls back to repeating the edge.
    """
    batch = image if image.dim() == 4 else image.unsqueeze(0)  # (B, C, H, W)
    channels, height, width = batch.shape[1:]
    kernel = gaussian_kernel_1d(kernel_size, sigma).to(device=batch.device, dtype=batch.dtype)
    pad = kernel_size // 2
    mode = "reflect" if pad < min(height, width) else "replicate"
    padded = F.pad(batch, (pad, pad, pad, pad), mode=mode)  # (B, C, H + 2p, W + 2p)
    horizontal = kernel.view(1, 1, 1, -1).expand(channels, 1, 1, kernel_size)
    vertical = kernel.view(1, 1, -1, 1).expand(channels, 1, kernel_size, 1)
    blurred = F.conv2d(F.conv2d(padded, horizontal, groups=channels), vertical, groups=channels)
    return blurred if image.dim() == 4 else blurred.squeeze(0)


def unsharp_mask(
    image: torch.Tensor,
    amount: float,
    kernel_size: int = 5,
    sigma: float = 1.0,
    threshold: float = 0.0,
) -> torch.Tensor:
    """Deforum's anti-blur: `(1 + amount) * img - amount * blur(img)`, clamped to [0, 1].

    Where |img - blur| < threshold (low-contrast areas) the original pixel is kept. threshold is in
    [0, 1] units (Deforum's is in 0..255 units: divide by 255).
    """
    if amount == 0:
        return image
    blurred = gaussian_blur(image, kernel_size, sigma)
    sharpened = ((1.0 + amount) * image - amount * blurred).clamp(0.0, 1.0)
    if threshold > 0:
        low_contrast = (image - blurred).abs() < threshold
        sharpened = torch.where(low_contrast, image, sharpened)
    return sharpened


def _fade(t: torch.Tensor) -> torch.Tensor:
    """Perlin's quintic fade 6t^5 - 15t^4 + 10t^3."""
    return t * t * t * (t * (6 * t - 15) + 10)


def _perlin_octave(
    height: int, width: int, cells_y: int, cells_x: int, generator: torch.Generator
) -> torch.Tensor:
    """One octave of 2D gradient (Perlin) noise: (H, W) float32, about [-1, 1].

    cells_y x cells_x grid cells span the image; each lattice point gets a random unit gradient.
    Works at any size (Deforum's version needs H and W divisible by the cell counts).
    """
    angles = 2 * math.pi * torch.rand(cells_y + 1, cells_x + 1, generator=generator)
    grad_x, grad_y = torch.cos(angles), torch.sin(angles)  # (cy+1, cx+1) each
    y = torch.arange(height, dtype=torch.float32) * cells_y / height  # (H,) lattice units
    x = torch.arange(width, dtype=torch.float32) * cells_x / width  # (W,)
    iy, ix = y.floor().long(), x.floor().long()
    fy = y - iy  # (H,) place inside the cell
    columns = torch.arange(cells_x + 1, dtype=torch.float32)
    rows = []
    for dy in (0, 1):
        # dot(gradient at lattice (r, c), offset (x - c, fy - dy)) = slope * x + intercept, with
        # slope and intercept worked out on the small (H, cx+1) lattice rows: two gathers a row
        slope = grad_x.index_select(0, iy + dy)
        intercept = grad_y.index_select(0, iy + dy) * (fy - dy)[:, None] - slope * columns
        left = slope.index_select(1, ix) * x + intercept.index_select(1, ix)  # (H, W)
        right = slope.index_select(1, ix + 1) * x + intercept.index_select(1, ix + 1)
        rows.append(torch.lerp(left, right, _fade(x - ix)))
    return math.sqrt(2) * torch.lerp(rows[0], rows[1], _fade(fy)[:, None])


def perlin_noise(
    height: int,
    width: int,
    *,
    generator: torch.Generator,
    perlin_w: int = 8,
    perlin_h: int = 8,
    perlin_octaves: int = 4,
    perlin_persistence: float = 0.5,
) -> torch.Tensor:
    """Fractal Perlin noise (H, W) float32, Deforum's `rand_perlin_2d_octaves` (defaults too).

    perlin_w / perlin_h: cells across the width / height at the first octave; every further
    octave doubles the cell counts and multiplies the amplitude by perlin_persistence.
    """
    if perlin_w < 1 or perlin_h < 1 or perlin_octaves < 1:
        raise ValueError(
            f"perlin_w={perlin_w!r}, perlin_h={perlin_h!r} and perlin_octaves={perlin_octaves!r} "
            "must all be at least 1 (Deforum's defaults are 8, 8 and 4)"
        )
    noise = torch.zeros(height, width)
    for octave in range(perlin_octaves):
        scale = 2**octave
        amplitude = perlin_persistence**octave
        cells = (perlin_h * scale, perlin_w * scale)
        noise += amplitude * _perlin_octave(height, width, *cells, generator)
    return noise


def make_noise(
    shape: tuple[int, ...], seed: int, noise_type: str = "uniform", **perlin_args: float
) -> torch.Tensor:
    """The noise picture Deforum blends in, shaped like the image: float32 in [0, 1], on CPU.

    n = N(0, 1) per pixel and channel (Deforum calls this "uniform": spatially white); for
    "perlin" n is multiplied by (perlin + 1) / 2, one Perlin field shared by the channels.
    The picture is clamp(0.5 + 0.5 * n, 0, 1) (Deforum's `sample_to_cv2(noise)`).
    """
    if noise_type not in NOISE_TYPES:
        raise ValueError(
            f"noise_type={noise_type!r} is not one of {', '.join(NOISE_TYPES)}"
            f"{suggest_name(noise_type, NOISE_TYPES)}"
        )
    generator = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.randn(shape, generator=generator)  # (..., 3, H, W)
    if noise_type == "perlin":
        height, width = shape[-2:]
        field = perlin_noise(height, width, generator=generator, **perlin_args)  # (H, W)
        noise = noise * (field + 1.0) / 2.0
    return (0.5 + 0.5 * noise).clamp(0.0, 1.0)


def add_noise(
    image: torch.Tensor,
    amount: float,
    seed: int,
    noise_type: str = "uniform",
    **perlin_args: float,
) -> torch.Tensor:
    """Deforum's noise step: blend toward seeded noise, `(1 - amount) * img + amount * noise`.

    noise is `make_noise(image.shape, seed, noise_type, **perlin_args)` (Deforum's
    `cv2.addWeighted(sample, 1 - noise_amt, noise, noise_amt, 0)`); perlin_args are perlin_w,
    perlin_h, perlin_octaves, perlin_persistence. amount 0 returns the image untouched.
    """
    check_noise_amount(amount)
    if amount == 0:
        return image
    return blend_noise(
        image, amount, make_noise(tuple(image.shape), seed, noise_type, **perlin_args)
    )


def check_noise_amount(amount: float) -> None:
    if not 0.0 <= amount <= 1.0:
        raise ValueError(f"noise amount={amount!r} must be in [0, 1] (Deforum's default is 0.065)")


def blend_noise(image: torch.Tensor, amount: float, noise: torch.Tensor) -> torch.Tensor:
    """`add_noise` with its noise picture made beforehand (`make_noise` of the image's shape)."""
    noise = noise.to(device=image.device, dtype=image.dtype)
    return (1.0 - amount) * image + amount * noise
