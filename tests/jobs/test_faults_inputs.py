"""Bad input classes a corpus got through: each refused by `validate` and `run` with exit 2 and
a message naming the file, row and field, before any model loads."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from sdfleet.jobs.cli import main
from sdfleet.jobs.runner import EXIT_CONFIG, EXIT_OK
from tests.jobs.test_anim_cli import BASE as ANIM_BASE
from tests.jobs.test_cli import write_job


@pytest.fixture
def no_model_loads(monkeypatch):
    from sdfleet.batch import models

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded for an invalid job")

    monkeypatch.setattr(models, "load_pipelines", refuse)


def refused(job: Path, tmp_path: Path, capsys) -> str:
    """`validate` and `run` on both executors exit 2 with one message, and no Ray starts
    (the Ray executor validates on the driver first); the message."""
    import ray

    assert main(["validate", str(job)]) == EXIT_CONFIG
    said = capsys.readouterr().err
    for executor in ("local", "ray"):
        argv = ["run", str(job), "--out", str(tmp_path / "out"), "--executor", executor]
        assert main([*argv, "--no-progress"]) == EXIT_CONFIG
        assert capsys.readouterr().err == said
    assert not ray.is_initialized()
    assert not (tmp_path / "out").exists()  # nothing written
    assert "Traceback" not in said
    return said


def manifest_row_refused(tmp_path: Path, capsys, row: dict, column: str) -> str:
    job = write_job(tmp_path, [{"id": "fine", "prompt": "p"}, row])
    said = refused(job, tmp_path, capsys)
    assert f"m.parquet: row {row['id']!r} (#1), column '{column}'" in said
    return said


# ---------------------------------------------------------------------------- ids


@pytest.mark.parametrize(
    ("row_id", "named"),
    [
        ("next\x85line", "U+0085 (unnamed), a control character"),  # C1 NEL
        ("a\x9bb", "U+009B"),  # C1 CSI
        ("invoice\u202egnp.exe", "U+202E (RIGHT-TO-LEFT OVERRIDE), an invisible format"),
        ("a\u2066b", "U+2066 (LEFT-TO-RIGHT ISOLATE)"),
        ("zero\u200bwidth", "U+200B (ZERO WIDTH SPACE)"),
        ("line\u2028sep", "U+2028 (LINE SEPARATOR), a line separator"),
    ],
)
def test_ids_with_hidden_characters(tmp_path, capsys, no_model_loads, row_id, named):
    said = manifest_row_refused(tmp_path, capsys, {"id": row_id, "prompt": "p"}, "id")
    assert named in said and "remove it" in said


def test_ids_that_are_not_utf8(tmp_path, capsys, no_model_loads):
    ids = pa.array([b"fine", b"caf\xe9"], pa.binary()).view(pa.string())  # latin-1 bytes
    pq.write_table(pa.table({"id": ids, "prompt": ["p", "q"]}), tmp_path / "m.parquet")
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"manifest": "m.parquet", "executor": "local"}))
    said = refused(job, tmp_path, capsys)
    assert "m.parquet: row #1, column 'id': b'caf\\xe9' is not UTF-8 text" in said
    assert "re-encode the column as UTF-8" in said


def test_ids_with_a_lone_surrogate(tmp_path, capsys, no_model_loads):
    """A surrogate cannot be UTF-8 text: a writer that encoded one anyway (CESU-8, WTF-8)
    leaves bytes a UTF-8 reader refuses."""
    ids = pa.array([b"fine", b"half\xed\xa0\x80pair"], pa.binary()).view(pa.string())
    pq.write_table(pa.table({"id": ids, "prompt": ["p", "q"]}), tmp_path / "m.parquet")
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"manifest": "m.parquet", "executor": "local"}))
    said = refused(job, tmp_path, capsys)
    assert "m.parquet: row #1, column 'id': b'half\\xed\\xa0\\x80pair' is not UTF-8" in said


def test_a_prompt_that_is_not_utf8_names_its_column(tmp_path, capsys, no_model_loads):
    prompts = pa.array([b"ok", b"ok", b"\xff\xfe"], pa.binary()).view(pa.string())
    table = pa.table({"id": ["a", "b", "c"], "prompt": prompts})
    pq.write_table(table, tmp_path / "m.parquet")
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"manifest": "m.parquet", "executor": "local"}))
    assert "m.parquet: row #2, column 'prompt'" in refused(job, tmp_path, capsys)


@pytest.mark.parametrize(("characters", "num_images"), [(90, 1), (83, 1), (82, 2)])
def test_ids_whose_file_names_exceed_255_bytes(
    tmp_path, capsys, no_model_loads, characters, num_images
):
    """Under 200 characters, but 3 bytes each in UTF-8: the name, '_<k>', '.webp.tmp'."""
    row = {"id": "漢" * characters, "prompt": "p", "num_images": num_images}
    said = manifest_row_refused(tmp_path, capsys, row, "id")
    assert "over the 255 a file name may have" in said


def test_the_longest_id_that_fits_runs_to_a_file(tiny_dir, tmp_path):
    row_id = "漢" * 82  # 246 bytes + '.png.tmp' / '.webp.tmp' fits 255
    job = write_job(
        tmp_path,
        [{"id": row_id, "prompt": "p"}],
        defaults={"width": 32, "height": 32, "num_inference_steps": 1},
    )
    assert main(["run", str(job), "--out", str(tmp_path / "out"), "--no-progress"]) == EXIT_OK
    assert (tmp_path / "out" / "images" / f"{row_id}.png").is_file()


# ---------------------------------------------------------------------------- init images


@pytest.mark.parametrize(
    ("uri", "said"),
    [
        ("http://example.com/cat.png", "http:// cannot be read here; use a local path or"),
        ("https://example.com/cat.png", "https:// cannot be read here"),
        ("ftp://example.com/cat.png", "ftp:// cannot be read here"),
        ("file:///nowhere/cat.png", "no file at /nowhere/cat.png"),
    ],
)
def test_init_image_uris_that_cannot_be_read(tmp_path, capsys, no_model_loads, uri, said):
    row = {"id": "img", "prompt": "p", "init_image": uri}
    assert said in manifest_row_refused(tmp_path, capsys, row, "init_image")


def test_an_existing_file_uri_passes(tmp_path, capsys):
    from sdfleet.jobs.examples import shape_image_png

    (tmp_path / "cat.png").write_bytes(shape_image_png(1))
    job = write_job(
        tmp_path, [{"id": "img", "prompt": "p", "init_image": f"file://{tmp_path}/cat.png"}]
    )
    assert main(["validate", str(job)]) == EXIT_OK


def not_an_image(tmp_path: Path) -> Path:
    (tmp_path / "cat.png").write_text("<html>404 Not Found</html>")  # a saved error page
    return tmp_path / "cat.png"


@pytest.mark.parametrize("form", ["relative", "absolute", "file-uri"])
def test_an_init_image_file_that_is_no_image(tmp_path, capsys, no_model_loads, form):
    path = not_an_image(tmp_path)
    value = {"relative": "cat.png", "absolute": str(path), "file-uri": f"file://{path}"}[form]
    row = {"id": "img", "prompt": "p", "init_image": value}
    said = manifest_row_refused(tmp_path, capsys, row, "init_image")
    assert f"{value!r}"[:50] in said
    assert "not an image the readers can decode (UnidentifiedImageError; it starts b'<html>4" in (
        said
    )
    assert "give a PNG, JPEG or WEBP image" in said


def test_a_missing_relative_init_image_names_where_it_looked(tmp_path, capsys, no_model_loads):
    row = {"id": "img", "prompt": "p", "init_image": "photos/cat.png"}
    said = manifest_row_refused(tmp_path, capsys, row, "init_image")
    assert f"no readable file at {tmp_path}/photos/cat.png; fix the path (relative paths" in said


def test_an_init_image_that_is_a_folder(tmp_path, capsys, no_model_loads):
    (tmp_path / "photos").mkdir()
    row = {"id": "img", "prompt": "p", "init_image": "photos"}
    assert "no readable file at" in manifest_row_refused(tmp_path, capsys, row, "init_image")


def test_a_header_check_is_all_validation_reads(tmp_path, capsys, monkeypatch):
    """A good header passes: pixels damaged past it fail their own row, and validation never
    decodes a whole image (100k init images are checked in seconds)."""
    from PIL import Image

    from sdfleet.jobs.examples import shape_image_png

    (tmp_path / "cat.png").write_bytes(shape_image_png(1)[:60])  # header, then cut off

    def no_decode(self, *args, **kwargs):
        raise AssertionError("validation decoded pixels")

    monkeypatch.setattr(Image.Image, "load", no_decode)
    job = write_job(tmp_path, [{"id": "img", "prompt": "p", "init_image": "cat.png"}])
    assert main(["validate", str(job)]) == EXIT_OK


@pytest.mark.parametrize(
    ("uri", "said"),
    [
        ("http://example.com/mask.png", "http:// cannot be read here"),
        ("file:///nowhere/mask.png", "no file at /nowhere/mask.png"),
    ],
)
def test_mask_image_uris_that_cannot_be_read(tmp_path, capsys, no_model_loads, uri, said):
    from sdfleet.jobs.examples import shape_image_png

    (tmp_path / "cat.png").write_bytes(shape_image_png(1))
    row = {"id": "img", "prompt": "p", "init_image": "cat.png", "mask_image": uri}
    assert said in manifest_row_refused(tmp_path, capsys, row, "mask_image")


def test_a_mask_file_that_is_no_image(tmp_path, capsys, no_model_loads):
    from sdfleet.jobs.examples import shape_image_png

    (tmp_path / "cat.png").write_bytes(shape_image_png(1))
    mask = not_an_image(tmp_path).rename(tmp_path / "mask.png")
    row = {"id": "img", "prompt": "p", "init_image": "cat.png", "mask_image": f"file://{mask}"}
    said = manifest_row_refused(tmp_path, capsys, row, "mask_image")
    assert "not an image the readers can decode" in said


@pytest.mark.parametrize("strength", [1.5, 0.0, -0.2, float("nan")])
def test_strength_out_of_range_without_an_init_image(tmp_path, capsys, no_model_loads, strength):
    row = {"id": "s", "prompt": "p", "strength": strength}
    said = manifest_row_refused(tmp_path, capsys, row, "strength")
    assert "use 0 < strength <= 1, or leave it empty (this row has no init_image)" in said


def test_a_strength_on_a_row_without_an_init_image_is_refused(tmp_path, capsys, no_model_loads):
    """In range, but it acts on nothing: most often the row lost its init_image."""
    row = {"id": "s", "prompt": "p", "strength": 0.5}
    said = manifest_row_refused(tmp_path, capsys, row, "strength")
    assert "0.5 - strength is the share of an init image re-noised, and this row has no" in said
    assert "give the row its init_image, or leave strength empty on rows without one" in said


def test_the_job_default_strength_applies_only_to_rows_with_an_init_image(tmp_path, capsys):
    job = write_job(
        tmp_path,
        [{"id": "t2i", "prompt": "p"}],
        defaults={"width": 64, "height": 64, "strength": 0.5},
    )
    assert main(["validate", str(job)]) == EXIT_OK


# ---------------------------------------------------------------------------- animation values


def anim_refused(tmp_path: Path, capsys, **fields) -> str:
    job = tmp_path / "clip.yaml"
    job.write_text(yaml.safe_dump(ANIM_BASE | {"max_frames": 4} | fields))
    said = refused(job, tmp_path, capsys)
    assert f"{job}" in said
    return said


@pytest.mark.parametrize("text", ["", "   ", "--neg blurry"])
def test_a_blank_animation_prompt(tmp_path, capsys, no_model_loads, text):
    said = anim_refused(tmp_path, capsys, prompts={"0": "a boat", "2": text})
    assert "prompts: the prompt of frame 2 is blank" in said


def test_a_blank_prompt_with_a_positive_suffix_is_fine(tmp_path, capsys):
    job = tmp_path / "clip.yaml"
    fields = {"prompts": {"0": " "}, "animation_prompts_positive": "a boat", "max_frames": 4}
    job.write_text(yaml.safe_dump(ANIM_BASE | fields))
    assert main(["validate", str(job)]) == EXIT_OK


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        (
            {"translation_x": "0:(0), 2:(900)"},
            "translation_x: gives 450 at frame 1, but moving a frame more than half its width",
        ),
        ({"translation_y": "0:(-40)"}, "translation_y: gives -40 at frame 0"),
        (
            {"kernel_schedule": "0:(100001)"},
            "kernel_schedule: gives 100001 at frame 0, but an anti-blur kernel wider",
        ),
        ({"contrast_schedule": "0:(1e30)"}, "contrast_schedule: gives 1e+30 at frame 0; expected"),
    ],
)
def test_animation_values_that_render_nothing_useful(
    tmp_path, capsys, no_model_loads, fields, said
):
    assert said in anim_refused(tmp_path, capsys, **fields)


def test_motion_within_the_canvas_is_fine(tmp_path, capsys):
    job = tmp_path / "clip.yaml"
    motion = {"translation_x": "0:(32)", "translation_y": "0:(-32)", "kernel_schedule": "0:(63)"}
    job.write_text(yaml.safe_dump(ANIM_BASE | {"max_frames": 4} | motion))
    assert main(["validate", str(job)]) == EXIT_OK


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        ({"zoom": "0:(0)"}, "zoom: gives 0 at frame 0; expected a value >= 0.5 and <= 2"),
        ({"zoom": "0:(-1.5)"}, "zoom: gives -1.5 at frame 0"),
        ({"zoom": "0:(1e9)"}, "zoom: gives 1e+09 at frame 0"),
        ({"strength_schedule": "0:(1.2)"}, "strength_schedule: gives 1.2 at frame 0"),
        ({"strength_schedule": "0:(-0.1)"}, "strength_schedule: gives -0.1 at frame 0"),
        ({"cfg_scale_schedule": "0:(1e30)"}, "cfg_scale_schedule: gives 1e+30 at frame 0"),
        ({"amount_schedule": "0:(1e30)"}, "amount_schedule: gives 1e+30 at frame 0"),
        ({"fps": -8}, "fps: Input should be greater than 0 (got -8)"),
        ({"fps": 0}, "fps: Input should be greater than 0 (got 0)"),
        ({"max_frames": -4}, "max_frames: Input should be greater than or equal to 1 (got -4)"),
        ({"max_frames": 0}, "max_frames: Input should be greater than or equal to 1 (got 0)"),
        ({"W": 65536}, "W: Input should be less than or equal to 4096 (got 65536)"),
        ({"H": -64}, "H: Input should be greater than or equal to 8 (got -64)"),
        ({"perlin_w": 100000}, "perlin_w: Input should be less than or equal to 512 (got 100000)"),
    ],
)
def test_animation_values_out_of_bounds(tmp_path, capsys, no_model_loads, fields, said):
    assert said in anim_refused(tmp_path, capsys, **fields)


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("http://example.com/start.png", "init_image: 'http://example.com/start.png': http://"),
        ("file:///nowhere/start.png", "no file at /nowhere/start.png"),
        ("nowhere/start.png", "no readable file at {tmp}/nowhere/start.png; fix the path"),
        ("start.txt", "not an image the readers can decode (UnidentifiedImageError"),
    ],
)
def test_an_animation_init_image_that_cannot_be_read(tmp_path, capsys, no_model_loads, value, said):
    """Found with the clip's files (a clip's relative path is from its own folder), before
    any model loads; named by clip id and field."""
    (tmp_path / "start.txt").write_text("a boat on a lake")
    job = tmp_path / "clip.yaml"
    job.write_text(yaml.safe_dump(ANIM_BASE | {"max_frames": 4, "init_image": value}))
    err = refused(job, tmp_path, capsys)
    assert f"{job}: animation job:   clip: init_image: " in err and said.format(tmp=tmp_path) in err


def test_an_animation_init_image_that_is_an_image_passes(tmp_path, capsys):
    from sdfleet.jobs.examples import shape_image_png

    (tmp_path / "start.png").write_bytes(shape_image_png(2))
    job = tmp_path / "clip.yaml"
    job.write_text(yaml.safe_dump(ANIM_BASE | {"max_frames": 4, "init_image": "start.png"}))
    assert main(["validate", str(job)]) == EXIT_OK


def test_an_init_image_whose_header_asks_for_billions_of_pixels(tmp_path, capsys, no_model_loads):
    """A 40000 x 40000 PNG header (a few bytes): refused by its size, nothing is decoded."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"")
    (tmp_path / "huge.png").write_bytes(png)
    row = {"id": "huge", "prompt": "p", "init_image": "huge.png"}
    said = manifest_row_refused(tmp_path, capsys, row, "init_image")
    assert "1600000000 pixels" in said and "give a smaller image" in said


# ---------------------------------------------------------------------------- text


def yaml_job_text(tmp_path: Path, body: str, prompt: str | None = "a boat") -> Path:
    prompts = pa.array([prompt], pa.string())
    pq.write_table(pa.table({"id": ["a"], "prompt": prompts}), tmp_path / "m.parquet")
    job = tmp_path / "job.yaml"
    job.write_text(f"manifest: m.parquet\nexecutor: local\n{body}\n")
    return job


@pytest.mark.parametrize(
    ("body", "column"),
    [
        ('defaults: {negative_prompt: "blur\\ud800ry"}', "negative_prompt"),
        ('defaults: {prompt: "a \\udc00 boat"}', "prompt"),
    ],
)
def test_a_lone_surrogate_in_a_job_text(tmp_path, capsys, no_model_loads, body, column):
    """YAML's \\u escapes can make one; Parquet cannot hold one, nor can image metadata."""
    job = yaml_job_text(tmp_path, body, prompt=None if column == "prompt" else "a boat")
    said = refused(job, tmp_path, capsys)
    assert f"m.parquet: row 'a' (#0), column '{column}'" in said
    assert "a lone surrogate: not Unicode text" in said
    assert f"(the job's default {column})" in said


def test_a_lone_surrogate_in_a_prompt_template(tmp_path, capsys, no_model_loads):
    job = yaml_job_text(tmp_path, 'defaults: {prompt_template: "{prompt}, \\ud800 style"}')
    said = refused(job, tmp_path, capsys)
    assert "prompt_template" in said and "a lone surrogate: not Unicode text" in said


def test_a_lone_surrogate_in_an_animation_prompt(tmp_path, capsys, no_model_loads):
    job = tmp_path / "clip.yaml"
    fields = {k: v for k, v in ANIM_BASE.items() if k != "prompts"} | {"max_frames": 4}
    job.write_text(yaml.safe_dump(fields) + 'prompts: {"0": "a paper \\ud800 boat"}\n')
    said = refused(job, tmp_path, capsys)
    assert "prompts: the prompt of key '0': character 8 is U+D800, a lone surrogate" in said


def test_a_clip_manifests_init_image_that_is_no_image(tmp_path, capsys, no_model_loads):
    """A clip's relative init_image is read from the clip manifest's folder, and checked there
    before any clip renders."""
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "start.png").write_text("not a picture")
    table = pa.table({"id": ["calm", "bad"], "init_image": [None, "start.png"]})
    pq.write_table(table, tmp_path / "clips" / "clips.parquet")
    job = tmp_path / "clip.yaml"
    fields = {"max_frames": 2, "clips_manifest": "clips/clips.parquet"}
    job.write_text(yaml.safe_dump(ANIM_BASE | fields))
    said = refused(job, tmp_path, capsys)
    assert f"bad: init_image: '{tmp_path}/clips/start.png': not an image the readers" in said
    assert "calm:" not in said
