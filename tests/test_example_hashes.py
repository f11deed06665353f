"""The example jobs render byte-identical PNGs to the ones recorded before the reorganisation.

`tests/data/example_image_sha256.txt` holds the sha256 of every PNG that
``sdfleet run jobs/examples/<name>.yaml --out /tmp/base/<name> --executor local`` wrote at commit
573afac, for the five jobs below, on a 2-core CPU. The jobs and the manifests and images they read
are frozen in `tests/data/examples_v0/` (the live examples move to other models later), pinned to
``device: cpu`` and 2 torch threads: CPU kernels split work by thread count, which changes float
rounding, so the recorded pixels are those of 2 threads.

Whole files are compared. One part of them depends on where the repository lies: an img2img
image's `sdfleet` text chunk names its absolute ``init_image`` path. That chunk is rewritten to the
recorded location (its CRC recomputed) before hashing, so every other byte - pixels, compression,
chunk order, the rest of the metadata - is still compared exactly.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
FROZEN = DATA / "examples_v0"
JOBS = ("marketing", "augmentation", "anim_demo", "anim_walk", "anim_clips")
RECORDED_MANIFESTS = b"/work/main/manifests"  # where the manifests were when the hashes were made
RECORDED_THREADS = 2
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def recorded_hashes() -> dict[str, str]:
    lines = (DATA / "example_image_sha256.txt").read_text().splitlines()
    return {path: digest for digest, path in (line.split() for line in lines if line.strip())}


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, payload) of every chunk of a PNG file, in order."""
    assert data.startswith(PNG_SIGNATURE), "not a PNG file"
    chunks, offset = [], len(PNG_SIGNATURE)
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        chunks.append((kind, data[offset + 8 : offset + 8 + length]))
        offset += 12 + length
    return chunks


def png_bytes(chunks: list[tuple[bytes, bytes]]) -> bytes:
    parts = [PNG_SIGNATURE]
    for kind, payload in chunks:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        parts.append(struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc))
    return b"".join(parts)


def relocated(data: bytes, here: bytes, recorded: bytes) -> bytes:
    """The PNG with the path prefix `here` in its text chunks written as `recorded`."""
    chunks = png_chunks(data)
    text = (b"tEXt", b"iTXt")
    moved = [(k, p.replace(here, recorded) if k in text else p) for k, p in chunks]
    return data if moved == chunks else png_bytes(moved)


def test_relocated_rewrites_only_the_text_chunk() -> None:
    from io import BytesIO

    from PIL import Image, PngImagePlugin

    buffers = []
    for path in ("/here/manifests", "/there/manifests"):
        info = PngImagePlugin.PngInfo()
        info.add_text("sdfleet", f'{{"init_image": "{path}/a.png"}}')
        buffer = BytesIO()
        Image.new("RGB", (4, 4), (10, 20, 30)).save(buffer, format="PNG", pnginfo=info)
        buffers.append(buffer.getvalue())
    here, there = buffers
    assert here != there
    assert relocated(here, b"/here/manifests", b"/there/manifests") == there
    assert relocated(there, b"/elsewhere", b"/x") == there  # nothing to move: unchanged


def rendered_hashes(out: Path) -> dict[str, str]:
    """sha256 per PNG under `out`, keyed like the recorded file (`<job>/<path>`)."""
    here = str((FROZEN / "manifests").resolve()).encode()
    return {
        path.relative_to(out).as_posix(): hashlib.sha256(
            relocated(path.read_bytes(), here, RECORDED_MANIFESTS)
        ).hexdigest()
        for path in sorted(out.rglob("*.png"))
    }


@pytest.mark.slow
def test_example_jobs_render_the_recorded_images(tmp_path, monkeypatch) -> None:
    import torch

    from sdfleet.jobs.cli import main

    # An animation job has no cpu_threads field: its replica takes every core, so the test
    # says the machine has the cores the hashes were recorded on.
    monkeypatch.setattr(os, "cpu_count", lambda: RECORDED_THREADS)
    threads = torch.get_num_threads()
    try:
        for name in JOBS:
            job = FROZEN / "jobs" / "examples" / f"{name}.yaml"
            argv = ["run", str(job), "--out", str(tmp_path / name), "--executor", "local"]
            assert main([*argv, "--no-progress"]) == 0, name
    finally:
        torch.set_num_threads(threads)
    rendered, recorded = rendered_hashes(tmp_path), recorded_hashes()
    assert sorted(rendered) == sorted(recorded)  # the same files, no more, no fewer
    changed = [path for path in recorded if rendered[path] != recorded[path]]
    assert not changed, f"{len(changed)} of {len(recorded)} PNGs differ, e.g. {changed[:5]}"
