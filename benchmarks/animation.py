"""`sdfleet bench --animation`: the 2D render against a plain img2img loop, and the encoder.

- sdfleet: `anim.clip.render_clip` (the path `sdfleet run` takes) on a 2D clip with motion
  (zoom, rotation, drift), LAB colour coherence, contrast, anti-blur and Perlin noise, cadence 1
  (every frame diffused), each frame written as PNG with metadata and the resume state saved
  after it. The model is wrapped in a stopwatch, so the frame time splits into the model step
  and everything else (sdfleet's animation overhead).
- plain: what a user writes first: txt2img for frame 0, then `img2img(prompt, image=previous,
  strength, num_inference_steps)` per frame with a seeded generator, saving each PNG; no warp,
  colour, noise or video.
- the encoder: `anim.video.encode_frames` on the rendered frames (and on the same frames
  resized to 512 px), frames/s.

Both load their model once, before timing; each repeat renders into a fresh folder, and the
two alternate (rotated order per repeat).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from sdfleet.bench.options import BenchOptions
from sdfleet.bench.report import fmt_spread, format_table, machine_info, spread, write_report
from sdfleet.bench.workload import rotated

logger = logging.getLogger(__name__)

BENCH_PROMPT = "a lighthouse on a cliff at dusk, oil painting"
BENCH_SEED = 1234  # frame k uses seed + k (seed_behavior: iter) in both renders
ENCODE_SIZES_PX = (None, 512)  # None: the clip's own size


def bench_animation_job(settings: BenchOptions) -> Any:
    """A 2D clip exercising the whole chain; `strength` is img2img's share denoised."""
    from sdfleet.anim.spec import load_animation_job

    return load_animation_job(
        {
            "kind": "animation",
            "model": settings.model,
            "device": settings.device,
            "dtype": settings.dtype,
            "W": settings.size_px,
            "H": settings.size_px,
            "max_frames": settings.frames,
            "fps": 12,
            "seed": BENCH_SEED,
            "seed_behavior": "iter",
            "diffusion_cadence": 1,
            "zoom": "0:(1.02)",
            "angle": "0:(1)",
            "translation_x": "0:(1)",
            "strength_schedule": f"0:({1 - settings.strength:g})",
            "noise_schedule": "0:(0.04)",
            "steps_schedule": f"0:({settings.steps})",
            "cfg_scale_schedule": f"0:({settings.guidance_scale:g})",
            "color_coherence": "LAB",
            "prompts": {"0": BENCH_PROMPT},
            "video": {"format": "mp4", "crf": 20, "preset": "veryfast"},
        },
        source="sdfleet bench --animation",
    )


class TimedFrames:
    """The clip's model with a stopwatch around every step (`anim.clip.FrameModel`)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.model_s = inner, 0.0
        self.latent_shape = inner.latent_shape

    def __call__(self, record: Any, init: Any) -> Any:
        started = time.perf_counter()
        try:
            return self.inner(record, init)
        finally:
            self.model_s += time.perf_counter() - started

    def walk(self, records: Any, noise: Any) -> Any:
        started = time.perf_counter()
        try:
            return self.inner.walk(records, noise)
        finally:
            self.model_s += time.perf_counter() - started


def render_sdfleet(job: Any, pipes: Any, folder: Path) -> dict[str, float]:
    """render_clip into a fresh folder; frame phase (until the last frame and its state are
    written) and the video + contact sheet phase after it."""
    from sdfleet.anim.clip import ClipPaths, render_clip
    from sdfleet.anim.frames import PipelineFrames

    model = TimedFrames(PipelineFrames.for_job(pipes, job))
    last_frame = [0.0]
    started = time.perf_counter()
    render_clip(
        job,
        ClipPaths.for_job(folder, job, "bench"),
        model,
        progress=lambda n: last_frame.__setitem__(0, time.perf_counter()),
    )
    ended = time.perf_counter()
    frames_s = last_frame[0] - started
    return {
        "frames_s": frames_s,
        "model_s": model.model_s,
        "video_s": ended - last_frame[0],
        "frames_per_s": job.max_frames / frames_s,
    }


def render_plain(settings: BenchOptions, plain: tuple[Any, Any], folder: Path) -> dict:
    """txt2img for frame 0, then img2img of the previous frame per frame; PNG per frame."""
    import torch

    txt2img, img2img = plain
    folder.mkdir(parents=True, exist_ok=True)
    call = {
        "prompt": BENCH_PROMPT,
        "num_inference_steps": settings.steps,
        "guidance_scale": settings.guidance_scale,
    }
    model_s, started, image = 0.0, time.perf_counter(), None
    for frame in range(settings.frames):
        generator = torch.Generator(device="cpu").manual_seed(BENCH_SEED + frame)
        step_started = time.perf_counter()
        if image is None:
            size = {"width": settings.size_px, "height": settings.size_px}
            image = txt2img(**call, **size, generator=generator).images[0]
        else:
            image = img2img(
                **call, image=image, strength=settings.strength, generator=generator
            ).images[0]
        model_s += time.perf_counter() - step_started
        image.save(folder / f"frame_{frame:06d}.png")
    frames_s = time.perf_counter() - started
    return {"frames_s": frames_s, "model_s": model_s, "frames_per_s": settings.frames / frames_s}


def load_models(settings: BenchOptions, job: Any) -> tuple[Any, tuple[Any, Any]]:
    """sdfleet's model (loaded as `anim.ray_clips.RenderClips` loads it) and the plain
    pipelines, both with the job's scheduler and the same torch thread count."""
    from diffusers import AutoPipelineForImage2Image

    from sdfleet.batch.models import load_model, model_spec
    from sdfleet.batch.schedulers import make_scheduler
    from sdfleet.bench.contenders import load_plain_pipeline

    # the loader sets torch threads on a CPU (every core unless told); plain uses those
    pipes = load_model(model_spec(job), settings.cpu_threads)
    txt2img = load_plain_pipeline(settings.spec)
    txt2img.scheduler = make_scheduler(job.scheduler, txt2img.scheduler.config)
    img2img = AutoPipelineForImage2Image.from_pipe(txt2img)
    img2img.set_progress_bar_config(disable=True)
    return pipes, (txt2img, img2img)


def time_encoder(frames_dir: Path, fps: float, size_px: int | None) -> float:
    """frames/s of `anim.video.encode_frames` (mp4, H.264 veryfast) on frames in memory."""
    import numpy as np
    from PIL import Image

    from sdfleet.anim.video import EncodeOptions, encode_frames

    frames = []
    for path in sorted(frames_dir.glob("frame_*.png")):
        with Image.open(path) as image:
            image = image.convert("RGB")
            if size_px:
                image = image.resize((size_px, size_px), Image.Resampling.BICUBIC)
            frames.append(np.asarray(image))
    options = EncodeOptions(fps=fps, format="mp4", crf=20, preset="veryfast")
    started = time.perf_counter()
    encode_frames(frames, frames_dir.parent / f"encode-{size_px or 'clip'}.mp4", options)
    return len(frames) / (time.perf_counter() - started)


def run_animation_bench(settings: BenchOptions) -> dict[str, Any]:
    """Alternate the sdfleet render and the plain loop; then time the encoder."""
    job = bench_animation_job(settings)
    pipes, plain = load_models(settings, job)
    root = settings.out / "animation"
    samples: list[dict[str, Any]] = []
    for repeat in range(settings.repeats):
        for name in rotated(settings.contenders, repeat):
            folder = root / f"{repeat}-{name}"
            shutil.rmtree(folder, ignore_errors=True)
            if name == "sdfleet":
                result = render_sdfleet(job, pipes, folder)
                for size in ENCODE_SIZES_PX:
                    result[f"encode_fps_{size or settings.size_px}px"] = time_encoder(
                        folder / "frames", job.fps, size
                    )
            else:
                result = render_plain(settings, plain, folder)
            result |= {
                "contender": name,
                "repeat": repeat,
                "overhead_share": 1 - result["model_s"] / result["frames_s"],
            }
            samples.append(result)
            if not settings.keep_outputs:
                shutil.rmtree(folder, ignore_errors=True)
    report = {
        "mode": "animation",
        "machine": machine_info(settings.spec),
        "settings": settings.record(),
        "summary": summarize(samples),
        "samples": samples,
    }
    write_report(settings.out / "animation.json", report)
    print(animation_table(report))
    return report


def summarize(samples: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per render: the spread of every measured figure over the repeats."""
    summary: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(s["contender"] for s in samples):
        mine = [s for s in samples if s["contender"] == name]
        keys = dict.fromkeys(k for s in mine for k in s if k not in ("contender", "repeat"))
        summary[name] = {key: spread([s[key] for s in mine]) for key in keys}
    return summary


def animation_table(report: dict[str, Any]) -> str:
    settings, summary = report["settings"], report["summary"]
    rows = []
    for name, entry in summary.items():
        per_frame = {
            k: {q: v / settings["frames"] * 1000 for q, v in entry[k].items()}
            for k in ("frames_s", "model_s")
        }
        rows.append(
            [
                name,
                fmt_spread(entry["frames_per_s"]),
                fmt_spread(per_frame["frames_s"]),
                fmt_spread(per_frame["model_s"]),
                fmt_spread(entry["overhead_share"]),
            ]
        )
    title = (
        f"{settings['model']}, {settings['frames']} frames, {settings['size_px']} px, "
        f"{settings['steps']} steps, strength {settings['strength']}, "
        f"{settings['repeats']} repeats; median (min-max)"
    )
    headers = ["render", "frames/s", "ms/frame", "model ms/frame", "share not model"]
    lines = [title, format_table(headers, rows)]
    for key, value in summary.get("sdfleet", {}).items():
        if key.startswith("encode_fps_"):
            lines.append(
                f"encoder (mp4, veryfast) at {key.removeprefix('encode_fps_')}: "
                f"{fmt_spread(value)} frames/s"
            )
    return "\n".join(lines)
