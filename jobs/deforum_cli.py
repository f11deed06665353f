"""Deforum settings files on the command line.

- ``sdfleet run|validate|plan settings.txt``: a Deforum settings file is taken where a job file
  is (`load_cli_job`); ``--accept-deforum-differences`` renders despite the settings sdfleet
  cannot honour (listed otherwise, exit 2), ``--model`` names the checkpoint for
  ``sd_model_name``.
- ``sdfleet import-deforum settings.txt -o job.yaml``: writes the equivalent job file.

A settings file with ``seed: -1`` gets a random seed; running the same file into the same OUT
again takes the seed its job.yaml recorded, so an interrupted render resumes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from sdfleet.batch.errors import ConfigError
from sdfleet.batch.paths import is_local, is_uri, local_path, resolve_path

ACCEPT_HELP = "Deforum settings files: render without the settings sdfleet cannot honour"
MODEL_HELP = "Deforum settings files: the checkpoint for sd_model_name (file or folder)"


def add_deforum_arguments(*parsers: argparse.ArgumentParser) -> None:
    for parser in parsers:
        parser.add_argument("--accept-deforum-differences", action="store_true", help=ACCEPT_HELP)
        parser.add_argument("--model", help=MODEL_HELP)


def add_import_parser(sub) -> None:
    parser = sub.add_parser("import-deforum", help="write a Deforum settings file as a job file")
    parser.add_argument("settings", type=Path, help="the settings file Deforum wrote (JSON)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the job file to write")
    parser.add_argument("--seed", type=int, help="the seed for seed -1 (default: a random one)")
    add_deforum_arguments(parser)


def load_cli_job(args: argparse.Namespace):
    """The job named by ``args.job``: a Deforum settings file or a job file."""
    from sdfleet.anim.deforum import looks_like_settings

    path = Path(args.job)
    if not looks_like_settings(path):
        if getattr(args, "model", None):
            raise ConfigError(f"--model is for Deforum settings files; set model: in {path}")
        from sdfleet.jobs.spec import load_job

        return load_job(path)
    from sdfleet.anim.deforum import load_deforum_job
    from sdfleet.jobs.anim_runner import default_out

    out = getattr(args, "out", None) or default_out(path)
    seed = recorded_seed(out, path)
    if seed is not None:
        print(f"sdfleet: {path}: the seed {out}/job.yaml recorded is used again", file=sys.stderr)
    job, imported = load_deforum_job(path, args.accept_deforum_differences, seed, args.model)
    for note in imported.notes:
        print(f"sdfleet: {path}: {note}", file=sys.stderr)
    return job


def recorded_seed(out: str, settings: Path) -> int | None:
    """The seed OUT/job.yaml recorded when it was rendered from `settings`, else None."""
    if not is_local(out):
        return None  # no record to read: an animation OUT is a local folder
    record = Path(local_path(out)) / "job.yaml"
    try:
        text = record.read_text(encoding="utf-8")
    except OSError:
        return None
    source = next((ln for ln in text.splitlines() if ln.startswith("# rendered from: ")), "")
    if Path(source.removeprefix("# rendered from: ")).resolve() != settings.resolve():
        return None
    seed = (yaml.safe_load(text) or {}).get("seed")
    return seed if isinstance(seed, int) else None


def cmd_import_deforum(args: argparse.Namespace) -> int:
    """Write the job file; exit 2 (via ConfigError) on differences not accepted."""
    from sdfleet.anim.deforum import (
        check_differences,
        import_settings,
        job_yaml,
        read_settings,
    )
    from sdfleet.anim.spec import load_animation_job

    settings: Path = args.settings
    imported = import_settings(
        read_settings(settings), str(settings), args.seed, args.model, settings.parent
    )
    check_differences(imported, args.accept_deforum_differences)
    job = load_animation_job(imported.job, source=str(settings))  # the same checks as run
    if args.output.resolve().parent != settings.resolve().parent:
        imported.job.update(absolute_paths(imported.job, settings.parent))
    args.output.write_text(job_yaml(imported), encoding="utf-8")
    print(f"{args.output}: animation job, {job.max_frames} frames, from {settings}")
    for note in imported.notes:
        print(f"  note: {note}")
    for difference in imported.differences:
        print(f"  accepted difference: {difference.line()}")
    return 0


def absolute_paths(job: dict[str, Any], base: Path) -> dict[str, Any]:
    """The job's relative file fields made absolute from `base` (the settings file's folder),
    for a job file written elsewhere."""

    def absolute(value: str) -> str:
        return value if is_uri(value) else str(resolve_path(value, base.resolve()))

    fields: dict[str, Any] = {}
    if job.get("init_image"):
        fields["init_image"] = absolute(job["init_image"])
    if job.get("model") and (base / job["model"]).exists():
        fields["model"] = absolute(job["model"])
    if (job.get("video") or {}).get("soundtrack"):
        fields["video"] = {**job["video"], "soundtrack": absolute(job["video"]["soundtrack"])}
    return fields
