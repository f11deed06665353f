"""Render state: everything a killed render needs to continue with byte-identical frames.

Written after every frame, atomically (one `.npz` file written to a temporary name, flushed to
disk and renamed over the old one), so a kill at any instant leaves either the old or the new
state and never half of one. No pickle: plain arrays plus one JSON string.

What it holds, and why that is enough:

- ``next_frame``: every frame index below it is written; rendering continues there.
- the cadence phase: ``prev_key``/``prev_image``, the latest diffused frame the chain continues
  from, and ``next_key``/``next_image``, a diffused frame already rendered ahead of the tweens
  that lead up to it (None when no tween is pending). Images are the uint8 frames exactly as
  written: the chain continues from what is on disk, so nothing is lost in saving it.
- the colour reference (`anim.colour.ColourReference`: mode, window and its frames). Its frames
  are uint8-exact (they come from written frames), so they are stored as uint8; the state checks
  the round trip is exact and falls back to float32 otherwise.
- seed and RNG state: every random draw (noise picture, img2img/txt2img generator, walk noise)
  comes from a generator seeded from the frame's plan record, and no global RNG is used, so the
  plan is the whole seed state. ``next_seed`` is recorded for people reading the file.
- ``fingerprint``: a hash of the plan and of every job field that changes pixels. A state with
  another fingerprint belongs to another job: `load_state` refuses it rather than mixing frames.

API:
    RenderState (frozen dataclass), save_state(path, state), load_state(path, fingerprint),
    saved_frames(path), state_arrays(state) + write_state_arrays(path, arrays) (save_state in
    two halves: a snapshot now, the write later)
    encode_colour(reference) -> dict of arrays, decode_colour(arrays) -> ColourReference
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sdfleet.anim.colour import ColourReference
from sdfleet.batch.errors import ConfigError
from sdfleet.batch.paths import write_atomic

logger = logging.getLogger(__name__)

STATE_VERSION = 1


@dataclass(frozen=True)
class RenderState:
    """Where a render stands after its latest written frame (see the module doc)."""

    next_frame: int = 0
    prev_key: int | None = None
    prev_image: np.ndarray | None = field(default=None, compare=False)  # (H, W, 3) uint8
    next_key: int | None = None
    next_image: np.ndarray | None = field(default=None, compare=False)  # (H, W, 3) uint8
    colour: ColourReference | None = field(default=None, compare=False)
    next_seed: int | None = None
    fingerprint: str = ""


def encode_colour(reference: ColourReference) -> dict[str, np.ndarray]:
    """The reference's state with its frames as uint8 when that is exact (it normally is)."""
    state = reference.state_dict()
    frames = state["frames"]  # (k, 3, H, W) float32
    as_uint8 = np.round(frames * np.float32(255)).clip(0, 255).astype(np.uint8)
    if np.array_equal(as_uint8.astype(np.float32) / np.float32(255), frames):
        state["frames"] = as_uint8
    return {f"colour_{key}": value for key, value in state.items()}


def decode_colour(arrays: dict[str, np.ndarray]) -> ColourReference:
    state = {key.removeprefix("colour_"): value for key, value in arrays.items()}
    if state["frames"].dtype == np.uint8:  # same float32 division as anim.colour.from_uint8
        state["frames"] = state["frames"].astype(np.float32) / np.float32(255)
    return ColourReference.from_state_dict(state)


def _meta(state: RenderState) -> dict[str, Any]:
    return {
        "version": STATE_VERSION,
        "next_frame": state.next_frame,
        "prev_key": state.prev_key,
        "next_key": state.next_key,
        "next_seed": state.next_seed,
        "fingerprint": state.fingerprint,
        "rng": "none global: every draw is seeded from the frame's plan record",
    }


def state_arrays(state: RenderState) -> dict[str, np.ndarray]:
    """The arrays of one state file: meta (JSON text), images, colour reference."""
    arrays = {"meta": np.array(json.dumps(_meta(state)))}
    if state.prev_image is not None:
        arrays["prev_image"] = state.prev_image
    if state.next_image is not None:
        arrays["next_image"] = state.next_image
    if state.colour is not None:
        arrays |= encode_colour(state.colour)
    return arrays


def save_state(path: Path, state: RenderState) -> None:
    """Write `state` to `path` atomically (temp file, fsync, rename)."""
    write_state_arrays(path, state_arrays(state))


def write_state_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write `state_arrays` output to `path` atomically (temp file, fsync, rename). The arrays
    are a snapshot (the colour reference is copied), so they may be written later."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_atomic(path, buffer.getvalue())


def saved_frames(path: Path) -> int:
    """How many frames the saved state counts as written (0 without a readable state)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return int(json.loads(str(archive["meta"]))["next_frame"])
    except (OSError, KeyError, ValueError):
        return 0


def load_state(path: Path, fingerprint: str) -> RenderState | None:
    """The saved state, or None when there is none; ConfigError if it is another job's."""
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    meta = json.loads(str(arrays.pop("meta")))
    if meta.get("version") != STATE_VERSION or meta["fingerprint"] != fingerprint:
        raise ConfigError(
            f"{path}: this output folder holds a render of a different job (the plan, model or "
            "render settings changed since). Render into a new --out folder, or delete "
            f"{path.parent} and the frames to start this job over."
        )
    colour = {key: value for key, value in arrays.items() if key.startswith("colour_")}
    return RenderState(
        next_frame=meta["next_frame"],
        prev_key=meta["prev_key"],
        prev_image=arrays.get("prev_image"),
        next_key=meta["next_key"],
        next_image=arrays.get("next_image"),
        colour=decode_colour(colour) if colour else None,
        next_seed=meta["next_seed"],
        fingerprint=fingerprint,
    )
