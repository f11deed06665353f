"""What the committed builtin:shapes model draws, read back by the judge (fixed seeds, so every
figure is the same on every run of the same weights)."""

from __future__ import annotations

import numpy as np
import pytest

from sdfleet.batch.shapes import world
from sdfleet.batch.shapes.judge import judge, mismatches

# 20 steps and guidance 3 (what a builtin:shapes job gets by default) unless a test says otherwise.

FIXED_SET = [  # colour, kind, background, size and position
    "a large red circle on a white background, top left",
    "a small blue square on a yellow background, bottom right",
    "a large yellow triangle on a black background in the center",
    "a large white square on a purple background, top right",
    "a small black circle on a green background, bottom left",
    "a large purple triangle on an orange background, top left",
    "a large orange circle on a blue background in the center",
    "a small green square on a red background, top right",
]


@pytest.fixture(scope="module")
def shapes_pipes():
    from sdfleet.batch.models import ModelSpec, load_pipelines

    return load_pipelines(ModelSpec(model="builtin:shapes", device="cpu"))


def draw(pipes, prompts: list[str], seed: int = 0, guidance: float = 3.0, **kwargs) -> list:
    import torch

    with torch.inference_mode():
        return pipes.txt2img(
            prompt=prompts,
            num_inference_steps=kwargs.pop("steps", 20),
            guidance_scale=guidance,
            generator=[torch.Generator().manual_seed(seed + i) for i in range(len(prompts))],
            height=64,
            width=64,
            **kwargs,
        ).images


def test_builtin_shapes_loads_through_from_pretrained(shapes_pipes) -> None:
    from sdfleet.batch.shapes import shapes_model_dir

    assert shapes_pipes.txt2img.vae_scale_factor == 8
    assert shapes_pipes.txt2img.name_or_path == str(shapes_model_dir())


@pytest.mark.parametrize("which", ["pipeline", "controlnet"])
def test_the_committed_weights_are_the_ones_their_sha256_names(which) -> None:
    import hashlib

    from sdfleet.batch.shapes import shapes_controlnet_dir, shapes_model_dir

    folder = shapes_model_dir() if which == "pipeline" else shapes_controlnet_dir()
    lines = (folder / "SHA256SUMS").read_text().splitlines()
    listed = {name.removeprefix("./"): digest for digest, name in (line.split() for line in lines)}
    files = {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in folder.rglob("*")
        if path.is_file() and path.name != "SHA256SUMS"
    }
    assert files == listed
    assert sum(path.stat().st_size for path in folder.rglob("*")) < 40 * 2**20  # tens of MB


def test_txt2img_follows_colour_shape_background_size_and_position(shapes_pipes) -> None:
    images = draw(shapes_pipes, FIXED_SET)
    failures = [(p, mismatches(judge(i), p)) for i, p in zip(images, FIXED_SET)]
    failures = [f for f in failures if f[1]]
    # 98% of the evaluation's fixed set (SHAPES.md); on these 8 pictures at least 6 right in
    # every one of the five attributes (a swapped colour space or a broken CFG sign gets ~0)
    assert len(failures) <= 2, failures
    assert not [f for f in failures if any(m.startswith("position") for m in f[1])], failures


def test_guidance_steers_towards_the_prompt_and_its_sign_matters(shapes_pipes) -> None:
    """Classifier-free guidance with its branches swapped (what a flipped sign computes: the
    prompt as the negative, an empty prompt as the positive) draws what the prompt is not."""
    flipped = draw(shapes_pipes, [""] * 8, guidance=3.0, negative_prompt=FIXED_SET)
    followed = [not mismatches(judge(image), p) for image, p in zip(flipped, FIXED_SET)]
    assert sum(followed) <= 1, followed  # 0 of 32 on the evaluation's set; the right sign: 32


def test_guidance_1_follows_the_prompt_less_often_than_the_default(shapes_pipes) -> None:
    """CFG works: the conditional branch alone (guidance 1) draws the prompt measurably less
    often than the default guidance 3, on 96 pictures of the evaluation's fixed set (32
    training-pair and 16 held-out captions x seeds 0-1; 92 against 84 today; bench --quality:
    94% / 88% on 256). A broken guidance (a branch ignored, both branches the same) scores
    the two alike."""
    from sdfleet.batch.shapes.evaluate import fixed_prompts, score

    prompts = fixed_prompts(32, held_out=False) + fixed_prompts(16, held_out=True)
    right = {
        g: round(score(shapes_pipes.txt2img, prompts, [0, 1], 20, g).adherence * 96)
        for g in (3.0, 1.0)
    }
    assert right[3.0] >= 85 and right[3.0] - right[1.0] >= 4, right


def test_img2img_keeps_place_and_size_while_the_prompt_changes_the_colour(shapes_pipes) -> None:
    import torch

    scene = world.Scene("square", "red", "white", "large", "top left")
    prompt = "a large blue square on a white background, top left"
    before, kept = judge(world.render_array(scene)), []
    with torch.inference_mode():
        images = shapes_pipes.img2img(
            prompt=[prompt] * 8,
            image=world.render(scene),
            strength=0.7,
            num_inference_steps=20,
            guidance_scale=3.0,
            generator=[torch.Generator().manual_seed(seed) for seed in range(8)],
        ).images
    for image in images:
        after = judge(image)
        kept.append(
            (after.colour, after.background) == ("blue", "white")
            and (after.position, after.size, after.kind) == (before.position, before.size, "square")
            and abs(after.area_fraction - before.area_fraction) < 0.3 * before.area_fraction
        )
    # 8 of 8 with these seeds (at 0.6 the colour is still on its way: 1 blue, 3 purple); an
    # inverted strength keeps the red square (0 of 8), a colour-space swap draws no blue
    assert sum(kept) >= 6, kept


# ---------------------------------------------------------------------------- animation


def render_clip(pipes, **fields) -> list[np.ndarray]:
    """The frames (uint8, in frame order) of a 64 px 2D clip on builtin:shapes."""
    from sdfleet.anim.frames import PipelineFrames
    from sdfleet.anim.plan import compile_plan
    from sdfleet.anim.render import ChainOptions, render_frames
    from sdfleet.anim.spec import load_animation_job

    data = {
        "kind": "animation",
        "model": "builtin:shapes",
        "W": 64,
        "H": 64,
        "max_frames": 6,
        "steps_schedule": 20,
        "noise_type": "uniform",
        "noise_schedule": 0.02,
        "zoom": 1.0,
        "seed_behavior": "fixed",
    }
    job = load_animation_job(data | fields, source="<test>")
    step = PipelineFrames.for_job(pipes, job)
    frames = render_frames(compile_plan(job), ChainOptions.from_job(job), step)
    return [image for _, image in sorted((f, image) for f, image, _ in frames)]


def test_zoom_in_makes_the_shape_grow_frame_over_frame(shapes_pipes) -> None:
    frames = render_clip(
        shapes_pipes,
        max_frames=4,
        zoom=1.12,
        strength_schedule=0.8,
        color_coherence=None,  # histogram matching would hold the red share at frame 0's
        prompts={"0": "a red circle on a white background"},  # no size: nothing pulls it back
    )
    areas = [judge(f).area_fraction for f in frames]
    # the model holds a shape near the sizes it learned, so the growth levels off
    assert areas[1] > 1.1 * areas[0] and areas[-1] > 1.2 * areas[0], areas


def _blueness(image: np.ndarray) -> float:
    """Mean (blue - red) of the pixels that are not the background's colour."""
    from sdfleet.batch.shapes.judge import colour_labels

    labels = colour_labels(image)
    border = np.bincount(np.concatenate([labels[0], labels[-1]])).argmax()
    shape = image[labels != border].astype(float)
    return float((shape[:, 2] - shape[:, 0]).mean())


def test_prompt_blend_moves_the_colour_from_one_prompt_to_the_other(shapes_pipes) -> None:
    frames = render_clip(
        shapes_pipes,
        strength_schedule=0.4,
        color_coherence=None,
        prompt_transition="blend",
        prompts={
            "0": "a large red circle on a white background in the center",
            "5": "a large blue circle on a white background in the center",
        },
    )
    assert (judge(frames[0]).colour, judge(frames[-1]).colour) == ("red", "blue")
    blueness = [_blueness(f) for f in frames]
    assert blueness[-1] - blueness[0] > 150 and blueness[3] > blueness[1], blueness


def test_colour_coherence_keeps_the_background_steady(shapes_pipes) -> None:
    frames = render_clip(
        shapes_pipes,
        max_frames=6,
        angle=3,
        strength_schedule=0.55,
        color_coherence="LAB",
        prompts={"0": "a small yellow square on a blue background in the center"},
    )
    assert {judge(f).background for f in frames} == {"blue"}
    corners = np.array([f[:6, :6].reshape(-1, 3).mean(0) for f in frames])  # (frames, 3)
    assert np.abs(corners - corners[0]).max() < 25, corners.round()


def test_an_inpainting_mask_repaints_only_inside(tmp_path) -> None:
    """A row with an init image (a small red square, top left) and a mask over the top left
    quadrant: the prompt's blue circle replaces the square inside the mask; outside it, every
    pixel is the source's. (One shape a picture, as the model learned: a second shape
    elsewhere is a scene it never saw.)"""
    from sdfleet.batch.masks import box_mask
    from sdfleet.batch.models import ModelSpec
    from sdfleet.batch.replica import Replica
    from sdfleet.batch.request import RowDefaults, expand_row

    scene = world.Scene("square", "red", "white", "small", "top left")
    source = world.render(scene)
    mask = box_mask((64, 64), [(0, 0, 32, 32)])
    source.save(tmp_path / "src.png")
    mask.save(tmp_path / "mask.png")
    row = {
        "id": "repaint",
        "prompt": "a small blue circle on a white background, top left",
        "seed": 3,
        "init_image": "src.png",
        "mask_image": "mask.png",
    }
    defaults = RowDefaults(
        num_inference_steps=20, guidance_scale=3.0, strength=1.0, width=64, height=64
    )
    replica = Replica(ModelSpec(model="builtin:shapes", device="cpu"), batch_size=1)
    (result,) = replica.generate(expand_row(row, defaults, 0, tmp_path))
    assert result.error is None, result.error
    out, src = np.asarray(result.image.convert("RGB")), np.asarray(source)
    inside = np.asarray(mask) > 0
    assert np.array_equal(out[~inside], src[~inside])  # outside: the source, exactly
    after = judge(out)  # seeds 0-7 at guidance 3 and 7.5: all sixteen read this way
    assert (after.colour, after.kind, after.background) == ("blue", "circle", "white"), after
    assert (after.size, after.position) == ("small", "top left"), after


LAYOUTS = [  # scenes whose silhouette is the control image; their captions leave the place out
    world.Scene("square", "red", "white", "large", "top left"),
    world.Scene("circle", "yellow", "blue", "small", "bottom right"),
    world.Scene("triangle", "white", "black", "large", "bottom left"),
    world.Scene("circle", "purple", "yellow", "large", "top right"),
    world.Scene("square", "black", "orange", "small", "center"),
    world.Scene("triangle", "red", "green", "small", "top right"),
    world.Scene("circle", "green", "white", "small", "top left"),
    world.Scene("square", "blue", "red", "large", "bottom left"),
]


def test_a_controlnet_places_the_shape_where_its_silhouette_is(shapes_pipes, tmp_path) -> None:
    """The committed layout ControlNet (`shapes.control_train`) through a job's ControlNet unit:
    rows whose prompts name no position get the shape at their silhouette's place, in the
    prompt's colours; the same prompts and seeds without it land there far less often."""
    from sdfleet.batch.controlnets import ControlNetUse
    from sdfleet.batch.models import ModelSpec
    from sdfleet.batch.replica import Replica
    from sdfleet.batch.request import RowDefaults, expand_row
    from sdfleet.batch.shapes import shapes_controlnet_dir

    unit = ControlNetUse(str(shapes_controlnet_dir()))
    defaults = RowDefaults(
        num_inference_steps=20, guidance_scale=3.0, width=64, height=64, controlnets=(unit,)
    )
    prompts = [world.caption(scene, position=False) for scene in LAYOUTS]
    requests = []
    for k, (scene, prompt) in enumerate(zip(LAYOUTS, prompts)):
        world.silhouette(scene).save(tmp_path / f"layout{k}.png")
        row = {"id": f"r{k}", "prompt": prompt, "seed": k, "control_image": f"layout{k}.png"}
        requests += expand_row(row, defaults, 0, tmp_path)
    replica = Replica(ModelSpec(model="builtin:shapes", device="cpu", controlnets=(unit,)), 8)
    results = replica.generate(requests)
    assert all(r.error is None for r in results), [r.error for r in results]
    reads = [judge(np.asarray(r.image.convert("RGB"))) for r in results]
    placed = [read.position == scene.position for read, scene in zip(reads, LAYOUTS)]
    right = [not mismatches(read, world.caption(s)) for read, s in zip(reads, LAYOUTS)]
    free = draw(shapes_pipes, prompts)  # no ControlNet: seeds 0-7, as the rows'
    free_placed = [judge(i).position == s.position for i, s in zip(free, LAYOUTS)]
    assert sum(placed) >= 7 and sum(right) >= 6, (placed, right, reads)
    assert sum(free_placed) <= sum(placed) - 3, free_placed
