"""Aspect-ratio presets: a ratio such as "2:3" -> the model family's nearest trained size.

SD 1.x: short side 512 (its training size), long side 512 to 1024 in steps of 64, both ways.
SDXL: the nine sizes of its multi-aspect training that the SDXL report lists (1024 x 1024,
1152 x 896 ... 1536 x 640).
A ratio picks the bucket nearest to it in log space; "WxH" names a size as it is. `scale`
shrinks a preset for toy models (builtin:tiny draws at 64 px), rounded to multiples of 8.
Pure: no torch.
"""

from __future__ import annotations

import math
import re

from sdfleet.batch.errors import ConfigError

# Short side 512 (SD 1.x's training size), long side in steps of 64: the sizes SD 1.x users
# pick (512x768 for 2:3, 768x512 for 3:2, ...), both orientations.
SD15_BUCKETS = [
    (512, 512),
    (512, 576),
    (512, 640),
    (512, 704),
    (512, 768),
    (512, 832),
    (512, 896),
    (512, 1024),
]
SD15_BUCKETS += [(h, w) for w, h in SD15_BUCKETS if w != h]
SDXL_BUCKETS = [
    (1024, 1024),
    (1152, 896),
    (896, 1152),
    (1216, 832),
    (832, 1216),
    (1344, 768),
    (768, 1344),
    (1536, 640),
    (640, 1536),
]
PRESETS = {
    "sd15": SD15_BUCKETS,
    "sdxl": SDXL_BUCKETS,
}
_RATIO = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*:\s*(\d+(?:\.\d+)?)\s*$")
_SIZE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


def nearest_bucket(ratio: float, preset: str) -> tuple[int, int]:
    """The preset's size whose width / height is nearest `ratio` (log distance)."""
    return min(PRESETS[preset], key=lambda size: abs(math.log(size[0] / size[1] / ratio)))


def aspect_size(label: str, preset: str, scale: float, where: str) -> tuple[int, int]:
    """ "W:H" -> the nearest bucket, "WxH" -> that size; scaled; multiples of 8, at least 16."""
    if match := _SIZE.match(str(label)):
        width, height = int(match.group(1)), int(match.group(2))
        if any(side % 8 or not 16 <= side <= 4096 for side in (width, height)):
            raise ConfigError(
                f"{where}: aspect size {label!r}: sides are multiples of 8 from 16 to 4096, "
                f"e.g. '{_scaled(width, 1)}x{_scaled(height, 1)}'"
            )
    elif (match := _RATIO.match(str(label))) and float(match.group(2)) > 0 < float(match.group(1)):
        width, height = nearest_bucket(float(match.group(1)) / float(match.group(2)), preset)
    else:
        raise ConfigError(
            f"{where}: aspect {label!r} is neither a ratio nor a size; write a ratio such as "
            "'2:3' (the nearest trained size of the preset) or a size such as '512x768'"
        )
    return _scaled(width, scale), _scaled(height, scale)


def _scaled(side_px: int, scale: float) -> int:
    return min(4096, max(16, round(side_px * scale / 8) * 8))
