"""The example jobs render byte-identical PNGs to the ones recorded before the reorganisation.

`tests/data/example_image_sha256.<cpu vendor>.txt` holds the sha256 of every PNG that
``sdfleet run jobs/examples/<name>.yaml --out /tmp/base/<name> --executor local`` wrote at commit
573afac, for the five jobs below, on a 2-core CPU: one file per CPU vendor (GenuineIntel,
AuthenticAMD), since float kernels round differently on each; both were made by 573afac's code.
The jobs and the manifests and images they read
are frozen in `tests/data/examples_v0/` (the live examples move to other models later), pinned to
``device: cpu`` and 2 torch threads: CPU kernels split work by thread count, which changes float
rounding, so the recorded pixels are those of 2 threads.

What is compared: whole files, with one part swapped first. The text chunks (A1111
``parameters`` and the ``sdfleet`` JSON) are metadata that later work changes on purpose (the
infotext format, new fields; `tests/batch/test_outputs.py` owns them), and they hold the absolute
``init_image`` path of an img2img row. So every rendered PNG gets the text chunks it had at 573afac
(`tests/data/example_image_metadata.json`, read from those files) in place of its own, and the
result must hash to the recorded sha256: header, pixels, compression and chunk layout are
compared byte for byte, and the recorded metadata is checked by the recorded hashes themselves.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zlib
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
FROZEN = DATA / "examples_v0"
JOBS = ("marketing", "augmentation", "anim_demo", "anim_walk", "anim_clips")
RECORDED_THREADS = 2
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
METADATA = (b"tEXt", b"iTXt", b"zTXt", b"eXIf")  # PNG chunks that hold text, not pixels

Chunk = tuple[bytes, bytes]  # (type, payload)


def cpu_vendor() -> str:
    """/proc/cpuinfo's vendor_id (GenuineIntel, AuthenticAMD, ...), or 'unknown'."""
    from sdfleet.bench.report import cpuinfo

    return cpuinfo("vendor_id") or "unknown"


def hashes_file() -> Path:
    """The recording for this CPU vendor: float kernels (torch's, OpenCV's warps) round
    differently on Intel and AMD CPUs, so each vendor has its own, both made by the code of
    573afac on the frozen jobs."""
    return DATA / f"example_image_sha256.{cpu_vendor()}.txt"


def recorded_hashes() -> dict[str, str]:
    lines = hashes_file().read_text().splitlines()
    return {path: digest for digest, path in (line.split() for line in lines if line.strip())}


def recorded_metadata() -> dict[str, list[Chunk]]:
    """Per PNG, its metadata chunks at 573afac (payloads stored as latin-1 text: lossless)."""
    data = json.loads((DATA / "example_image_metadata.json").read_text())
    return {
        path: [(kind.encode(), payload.encode("latin-1")) for kind, payload in chunks]
        for path, chunks in data.items()
    }


def png_chunks(data: bytes) -> list[Chunk]:
    """(type, payload) of every chunk of a PNG file, in order."""
    assert data.startswith(PNG_SIGNATURE), "not a PNG file"
    chunks, offset = [], len(PNG_SIGNATURE)
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        chunks.append((kind, data[offset + 8 : offset + 8 + length]))
        offset += 12 + length
    return chunks


def png_bytes(chunks: list[Chunk]) -> bytes:
    parts = [PNG_SIGNATURE]
    for kind, payload in chunks:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        parts.append(struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc))
    return b"".join(parts)


def with_metadata(data: bytes, metadata: list[Chunk]) -> bytes:
    """The PNG with its metadata chunks replaced by `metadata`, placed right after IHDR (where
    PIL writes them)."""
    kept = [chunk for chunk in png_chunks(data) if chunk[0] not in METADATA]
    assert kept[0][0] == b"IHDR"
    return png_bytes([kept[0], *metadata, *kept[1:]])


def test_with_metadata_swaps_only_the_text_chunks() -> None:
    from io import BytesIO

    from PIL import Image, PngImagePlugin

    files = []
    for prompt in ("a cat", "a dog, with more words"):
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", prompt)
        info.add_text("sdfleet", json.dumps({"prompt": prompt}), zip=False)
        buffer = BytesIO()
        Image.new("RGB", (4, 4), (10, 20, 30)).save(buffer, format="PNG", pnginfo=info)
        files.append(buffer.getvalue())
    cat, dog = files
    dog_metadata = [chunk for chunk in png_chunks(dog) if chunk[0] in METADATA]
    assert cat != dog and len(dog_metadata) == 2
    assert with_metadata(cat, dog_metadata) == dog
    assert with_metadata(dog, dog_metadata) == dog


def rendered_hashes(out: Path) -> dict[str, str]:
    """sha256 per PNG under `out` with its recorded metadata, keyed `<job>/<path>`."""
    metadata = recorded_metadata()
    hashes = {}
    for path in sorted(out.rglob("*.png")):
        key = path.relative_to(out).as_posix()
        data = with_metadata(path.read_bytes(), metadata.get(key, []))
        hashes[key] = hashlib.sha256(data).hexdigest()
    return hashes


@pytest.mark.slow
def test_example_jobs_render_the_recorded_images(tmp_path, monkeypatch) -> None:
    import torch

    if not hashes_file().is_file():
        pytest.skip(f"no recording of 573afac's images for {cpu_vendor()} CPUs ({hashes_file()})")

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
