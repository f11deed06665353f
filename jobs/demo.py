"""`sdfleet demo`: a small batch (txt2img variants + one img2img row) on builtin:shapes, then a
short animated clip (jobs/examples/anim_demo.yaml: 24 frames at 64x64) encoded to mp4."""

from __future__ import annotations

from pathlib import Path

from sdfleet.jobs.anim_runner import run_demo_clip
from sdfleet.jobs.examples import demo_rows, write_manifest
from sdfleet.jobs.runner import run_batch
from sdfleet.jobs.spec import BatchJob


def demo_job(manifest: Path, executor: str) -> BatchJob:
    return BatchJob.model_validate(
        {
            "name": "demo",
            "model": "builtin:shapes",
            "manifest": str(manifest),
            "seed": 1,
            "defaults": {
                "prompt_template": "{prompt} on a {style} background",
                "num_inference_steps": 20,
                "guidance_scale": 3.0,
                "width": 64,
                "height": 64,
                "scheduler": "euler",
            },
            "batch_size": 4,
            "executor": executor,
        }
    )


def run_demo(out: Path, executor: str | None) -> int:
    manifest = write_manifest(demo_rows(), out.resolve() / "manifest" / "demo.parquet")
    job = demo_job(manifest, executor or "ray")
    status = run_batch(job, out / "job.yaml", str(out / "batch"), job.executor, None)
    print(f"demo images: {out / 'batch' / 'images'}")
    clip_status = run_demo_clip(out / "clip")
    print(f"demo clip: {out / 'clip'}")
    return status or clip_status
