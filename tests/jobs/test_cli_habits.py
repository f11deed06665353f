"""What a command line is expected to do: --version, -q/-v on either side of the sub-command,
NO_COLOR, `run --json`, and SIGTERM taken as Ctrl-C (exit 1, statuses written, resumable),
the last with real signals sent to a real `sdfleet` process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from importlib.metadata import version
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from sdfleet.batch.sources import table_from_rows
from sdfleet.jobs.cli import build_parser, main, plain_terminal
from sdfleet.jobs.runner import EXIT_CRASH, EXIT_OK

FAULTS = Path(__file__).parents[1] / "batch" / "faults.py"  # `sdfleet` with a slowed actor


def write_job(tmp_path: Path, n: int, **fields) -> Path:
    rows = [{"id": f"r{i:02d}", "prompt": f"prompt {i}"} for i in range(n)]
    pq.write_table(table_from_rows(rows), tmp_path / "m.parquet")
    job = {
        "manifest": "m.parquet",
        "executor": "local",
        "seed": 5,
        "batch_size": 1,
        "defaults": {"num_inference_steps": 2, "width": 64, "height": 64},
    } | fields
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def test_version_names_the_installed_package(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"sdfleet {version('sdfleet')}"


@pytest.mark.parametrize(
    "argv",
    [
        ["-q", "run", "job.yaml"],
        ["run", "job.yaml", "-q"],
        ["run", "-q", "job.yaml", "--out", "o"],
    ],
)
def test_quiet_is_read_before_or_after_the_sub_command(argv):
    args = build_parser().parse_args(argv)
    assert args.quiet and not args.verbose and args.job == Path("job.yaml")


def test_verbose_after_validate_and_plan():
    for command in ("validate", "plan"):
        args = build_parser().parse_args([command, "job.yaml", "-v"])
        assert args.verbose and not args.quiet


def test_verbose_and_quiet_together_are_refused(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["run", "job.yaml", "-q", "-v"])
    assert stop.value.code == 2
    assert "-v and -q" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("no_color", "tty", "expected"), [("1", True, "0"), ("", False, "0"), ("", True, None)]
)
def test_no_color_or_a_pipe_turns_ray_prefix_colours_off(monkeypatch, no_color, tty, expected):
    monkeypatch.delenv("RAY_COLOR_PREFIX", raising=False)
    monkeypatch.setenv("NO_COLOR", no_color)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty)
    plain_terminal()
    assert os.environ.get("RAY_COLOR_PREFIX") == expected


def test_run_json_prints_the_summary_and_nothing_else(tiny_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", str(write_job(tmp_path, 2)), "--out", str(out), "--json"]) == EXIT_OK
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((out / "summary.json").read_text())
    assert printed["ok"] == 2


def test_quiet_run_prints_nothing(tiny_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", str(write_job(tmp_path, 2)), "--out", str(out), "-q"]) == EXIT_OK
    printed = capsys.readouterr()
    assert printed.out == "" and printed.err == ""
    assert json.loads((out / "summary.json").read_text())["ok"] == 2


# ------------------------------------------------------------------------------- SIGTERM


def start(command: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for(condition, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def terminate(process: subprocess.Popen) -> tuple[int, str]:
    process.send_signal(signal.SIGTERM)
    try:
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    return process.returncode, err


@pytest.mark.slow
def test_sigterm_stops_a_batch_run_as_ctrl_c_does_and_the_rerun_finishes(
    tiny_dir, tmp_path, sdfleet_cache
):
    job, out = write_job(tmp_path, 60), tmp_path / "out"  # parts of 16 rows, 0.3 s a row
    env = os.environ | {"SDFLEET_CACHE": str(sdfleet_cache)}
    command = [sys.executable, str(FAULTS), json.dumps({"sleep_s": 0.3})]
    command += ["run", str(job), "--out", str(out), "--no-progress"]
    first = start(command, env)
    wait_for(lambda: len(list(out.glob("results/*.parquet"))) >= 1, first, 240)
    code, err = terminate(first)

    assert code == EXIT_CRASH, err
    assert "interrupted; run the same command again to resume" in err
    assert "Traceback" not in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True and 16 <= summary["ok"] < 60
    done = summary["ok"]

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    assert again.returncode == EXIT_OK, again.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped_already_done_rows"] == done and "interrupted" not in summary
    found = Counter(r["output_id"] for r in pq.read_table(out / "results").to_pylist())
    assert len(found) == 60 and max(found.values()) == 1  # every output exactly once


@pytest.mark.slow
def test_sigterm_leaves_an_animation_status_that_says_interrupted(
    tiny_dir, tmp_path, sdfleet_cache
):
    job = {
        "kind": "animation",
        "model": "builtin:tiny",
        "W": 64,
        "H": 64,
        "max_frames": 40,
        "seed": 2,
        "steps_schedule": "0:(6)",
        "strength_schedule": "0:(0.5)",
        "prompts": {0: "a red circle"},
        "video": {"format": "mp4"},
    }
    path, out = tmp_path / "clip.yaml", tmp_path / "out"
    path.write_text(yaml.safe_dump(job))
    env = os.environ | {"SDFLEET_CACHE": str(sdfleet_cache)}
    command = [sys.executable, "-m", "sdfleet.jobs.cli", "run", str(path), "--out", str(out)]
    command += ["--no-progress"]
    first = start(command, env)
    wait_for(lambda: len(list(out.glob("frames/*.png"))) >= 3, first, 240)
    code, err = terminate(first)

    assert code == EXIT_CRASH, err
    assert "run the same command again to resume" in err and "Traceback" not in err
    status = json.loads((out / "status.json").read_text())
    on_disk = len(list(out.glob("frames/*.png")))
    assert status["status"] == "interrupted"
    assert 3 <= status["frames_written"] <= on_disk < 40
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] == 1 and summary["statuses"][0]["status"] == "interrupted"

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    assert again.returncode == EXIT_OK, again.stderr
    resumed = json.loads((out / "status.json").read_text())
    assert resumed["status"] == "ok" and resumed["frames_written"] == 40
    assert resumed["resumed_from"] == status["frames_written"]  # continued, not started over


@pytest.mark.ray
@pytest.mark.slow
def test_sigterm_stops_a_ray_run_with_exit_1_and_the_rerun_makes_the_rest_once(
    tiny_dir, tmp_path, sdfleet_cache
):
    """On Ray too: ray.init sets its own SIGTERM handler (sys.exit(15)); ours stays."""
    job = write_job(tmp_path, 40, executor="ray", ray={"rows_per_block": 2})
    out = tmp_path / "out"
    env = os.environ | {"SDFLEET_CACHE": str(sdfleet_cache), "RAY_AUTH_MODE": "disabled"}
    command = [sys.executable, str(FAULTS), json.dumps({"sleep_s": 0.4})]
    command += ["run", str(job), "--out", str(out), "--no-progress"]
    first = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        wait_for(lambda: len(list(out.glob("_checkpoint/*.parquet"))) >= 2, first, 240)
        code, err = terminate(first)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(first.pid, signal.SIGKILL)  # what the driver's Ray left behind
    assert code == EXIT_CRASH, err
    assert "interrupted; run the same command again to resume" in err
    assert "Traceback" not in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["unique_outputs"] < 40

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    assert again.returncode == EXIT_OK, again.stderr
    assert "constructor arguments in the object store" not in again.stderr  # Ray's noise
    found = Counter(r["output_id"] for r in pq.read_table(out / "results").to_pylist())
    assert len(found) == 40 and max(found.values()) == 1
