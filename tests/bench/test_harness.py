"""The bench harness on tiny sizes: same images from every contender, ratios against (a),
the overhead and animation reports. No timing assertions: benchmarks are not timed tests."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import pytest

from sdfleet.batch.errors import ConfigError
from sdfleet.batch.models import ModelSpec
from sdfleet.bench.options import BenchOptions, add_flags, options_from_args
from sdfleet.bench.throughput import (
    fill_warning,
    pair_ratios,
    run_throughput,
    summarize_samples,
    too_few_rows,
)
from sdfleet.bench.workload import (
    FILE_CLOCK_S,
    Sample,
    Workload,
    rotated,
    steady_rate,
    write_bench_manifest,
)
from sdfleet.jobs.cli import main


def settings(tmp_path: Path, **fields) -> BenchOptions:
    base = {
        "model": "builtin:null",
        "rows": (12,),
        "steps": 1,
        "size_px": 64,
        "batch_size": 4,
        "repeats": 2,
        "out": tmp_path / "bench",
        "contenders": ("a", "b", "local"),
    }
    return BenchOptions(**(base | fields))


def parse(*flags: str) -> BenchOptions:
    """The options `sdfleet bench FLAGS...` runs with."""
    parser = argparse.ArgumentParser()
    add_flags(parser)
    return options_from_args(parser.parse_args(flags))


def sample(contender: str, repeat: int, rate: float) -> Sample:
    return Sample(contender, repeat, images=10, wall_s=2.0, startup_s=0.5, images_per_s=rate)


@pytest.mark.slow  # ~15-20 s: runs every contender for real; make test runs it
def test_every_contender_makes_the_same_images_and_a_is_the_baseline(tmp_path, sdfleet_cache):
    report = run_throughput(settings(tmp_path))
    assert {s["images"] for s in report["samples"]} == {12}
    assert len(report["samples"]) == 6  # 3 contenders x 2 repeats
    assert report["contenders"]["a"]["ratio_to_a"] == {"min": 1.0, "median": 1.0, "max": 1.0}
    assert report["contenders"]["local"]["cpu_ms_per_image"]["median"] > 0
    written = json.loads((tmp_path / "bench" / "throughput.json").read_text())
    assert written["settings"]["rows"] == [12] and written["machine"]["cpu_count"] >= 1
    assert not (tmp_path / "bench" / "runs" / "0-a").exists()  # outputs removed by default


def test_ratios_are_taken_against_a_repeat_by_repeat():
    samples = [
        sample("a", 0, 10),
        sample("local", 0, 15),
        sample("a", 1, 20),
        sample("local", 1, 20),
    ]
    summary = summarize_samples(samples, ["a", "local"])
    assert summary["local"]["ratio_to_a"] == {"min": 1.0, "median": 1.25, "max": 1.5}
    assert summary["local"]["images_per_s"]["median"] == 17.5
    assert summary["local"]["fixed_s"]["max"] == pytest.approx(2.0 - 10 / 20)
    assert pair_ratios(samples) == {"local/a": summary["local"]["ratio_to_a"]}


def test_a_series_stopped_part_way_summarizes_only_what_ran():
    # the report is rewritten after every sample: after the first, only (a) has figures
    summary = summarize_samples([sample("a", 0, 10)], ["a", "b", "local"])
    assert list(summary) == ["a"]
    assert summary["a"]["images_per_s"] == {"min": 10.0, "median": 10.0, "max": 10.0}


def test_each_repeat_rotates_the_order():
    names = ["a", "b", "c"]
    assert [rotated(names, r) for r in range(4)] == [
        ["a", "b", "c"],
        ["b", "c", "a"],
        ["c", "a", "b"],
        ["a", "b", "c"],
    ]


def test_steady_rate_runs_from_the_first_replica_ready_to_the_last_image():
    # ready at 6.5 s; 5 groups of 4 images, one group every 0.5 s from 7 s
    times = [7.0 + 0.5 * group + 0.001 * k for group in range(5) for k in range(4)]
    expected = 20 / (times[-1] + FILE_CLOCK_S - 6.5)
    assert steady_rate(times, ready_at=6.5) == pytest.approx(expected)


@pytest.mark.parametrize("block", [1, 4, 128, 1024])
def test_steady_rate_cannot_be_faster_than_images_were_made(block):
    # 2048 images made one every 10 ms (100 images/s) after a replica is ready at t=0, but
    # written in blocks: a slope over the writes would call a block "instant"
    made = [0.01 * (i + 1) for i in range(2048)]
    written = sorted(made[min(len(made), (i // block + 1) * block) - 1] for i in range(2048))
    rate = steady_rate(written, ready_at=0.0)
    assert rate <= 100.0
    assert rate == pytest.approx(100.0, rel=0.01)  # and it is the true rate, whatever the block


def test_fixed_seconds_are_never_negative():
    # a rate taken over the whole wall time (or a hair more, file clock granularity)
    tight = Sample("ray", 0, images=100, wall_s=1.0, startup_s=0.0, images_per_s=99.9)
    assert tight.fixed_s == 0.0
    assert sample("a", 0, 10).fixed_s == pytest.approx(2.0 - 10 / 10)


def test_a_contender_without_enough_rows_for_a_steady_figure_is_warned_about(tmp_path):
    work = Workload(
        ModelSpec(model="builtin:null"), tmp_path / "m.parquet", 1, 64, 7.5, batch_size=4
    )
    warnings = too_few_rows(work, 1000, ["a", "b", "c", "ray"], ray_replicas=2)
    assert len(warnings) == 1 and warnings[0].startswith("ray: 1000 rows is fewer")
    assert "(2560: 10 x 2 replica(s) x 128 rows per block)" in warnings[0]
    assert too_few_rows(work, 2560, ["ray"], ray_replicas=2) == []
    assert len(too_few_rows(work, 39, ["b"])) == 1 and not too_few_rows(work, 40, ["b"])
    slow_fill = Sample("ray", 1, 100, 30.0, 5.0, images_per_s=10.0, fill_s=2.0)
    assert "2 s from ready to the first image, 20% of its 10 s" in fill_warning(slow_fill)
    assert fill_warning(replace(slow_fill, fill_s=0.5)) is None


def test_manifest_rows_have_ids_prompts_and_seeds(tmp_path):
    import pyarrow.parquet as pq

    table = pq.read_table(write_bench_manifest(tmp_path / "m.parquet", 70_000))
    assert table.num_rows == 70_000 and table.column_names == ["id", "prompt", "seed"]
    assert len(set(table.column("id").to_pylist())) == 70_000


@pytest.mark.parametrize(
    "flags,fragment",
    [
        (["--contenders", "a,zz"], "--contenders: zz unknown"),
        (["--rows", "10,20"], "--rows: one number"),
        (["--rows", "ten"], "--rows: give whole numbers"),
        (["--rows", "0"], "--rows: every value must be at least 1"),
        (["--repeats", "0"], "--repeats: Input should be greater than or equal to 1"),
        (["--size", "zero"], "--size: Input should be a valid integer"),
        (["--strength", "1.5"], "--strength: Input should be less than or equal to 1"),
        (["--overhead", "--contenders", "a"], "choose from local, ray"),
        (["--overhead", "--animation"], "give one of them"),
        (["--quality", "--animation"], "give one of them"),
        (["--quality", "--contenders", "a"], "a unknown here"),
    ],
)
def test_bad_flags_say_what_to_change(flags, fragment):
    with pytest.raises(ConfigError, match=fragment):
        parse(*flags)


def test_mode_defaults():
    assert parse().contenders == ("a", "b", "c", "local", "ray") and parse().rows == (128,)
    overhead = parse("--overhead")
    assert overhead.rows == (10_000, 100_000) and overhead.contenders == ("local", "ray")
    assert parse("--animation").contenders == ("sdfleet", "plain")
    assert parse("--quality").model == "builtin:shapes" and parse("--quality").mode == "quality"
    assert parse("--quality", "--model", "/m/shapes").model == "/m/shapes"


def test_flags_are_made_from_the_options_model():
    options = parse("--size", "32", "--batch-size", "2", "--rows", "1_000", "--keep-outputs")
    assert (options.size_px, options.batch_size, options.rows, options.keep_outputs) == (
        32,
        2,
        (1000,),
        True,
    )
    assert parse() == BenchOptions()  # a flag not given takes the model's default
    parser = argparse.ArgumentParser()
    add_flags(parser)
    flags = {option for action in parser._actions for option in action.option_strings}
    assert len(flags - {"-h", "--help"}) == len(BenchOptions.model_fields)


def test_sdfleet_bench_is_a_contributed_command_with_clean_errors(capsys):
    assert main(["bench", "--repeats", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sdfleet: error: sdfleet bench: --repeats") and "Traceback" not in err


def test_a_contender_that_makes_too_few_images_is_a_message(tmp_path, monkeypatch, capsys):
    from sdfleet.bench import contenders

    def too_few(work, folder, repeat):
        return Sample("a", repeat, images=3, wall_s=1.0, startup_s=0.1, images_per_s=3.0)

    monkeypatch.setitem(contenders.CONTENDERS, "a", too_few)
    out = tmp_path / "bench"
    flags = ["--model", "builtin:null", "--rows", "4", "--contenders", "a", "--repeats", "1"]
    assert main(["bench", *flags, "--out", str(out)]) == 2
    assert "sdfleet: error: a made 3 images, not 4" in capsys.readouterr().err


@pytest.mark.slow  # ~15-20 s: runs every contender for real; make test runs it
def test_overhead_mode_reports_rows_per_s_and_peak_memory(tmp_path, sdfleet_cache, monkeypatch):
    from sdfleet.bench.overhead import run_overhead

    monkeypatch.chdir(tmp_path)  # a relative --out (the default is out/bench)
    relative = Path("bench-out")
    report = run_overhead(settings(relative, overhead=True, rows=(40,), contenders=("local",)))
    assert (tmp_path / "bench-out" / "bench" / "overhead.json").is_file()
    (result,) = report["results"]
    assert result["rows"] == 40 and result["error"] == 0
    assert result["rows_per_s"] > 0 and result["ms_per_row"] > 0
    assert result["peak_rss_mib"] >= result["rss_before_job_mib"] > 0


@pytest.mark.slow  # ~15-20 s: runs every contender for real; make test runs it
def test_quality_mode_reports_the_judges_adherence_beside_images_per_s(tmp_path, capsys):
    from sdfleet.batch.shapes import shapes_model_dir
    from sdfleet.batch.shapes.evaluate import fixed_prompts, load, score
    from sdfleet.bench.quality import run_quality_bench

    sweep, seeds = [(False, False, 4, 7.5, None), (False, False, 4, 7.5, "euler_a")], [0, 1]
    options = parse("--quality", "--out", str(tmp_path))
    report = run_quality_bench(options, sweep, prompts=4, seeds=seeds)
    rows = report["settings"]
    assert [row["scheduler"] for row in rows] == ["model's own", "euler_a"]
    assert all(row["images"] == 4 * len(seeds) and row["seconds_per_image"] > 0 for row in rows)
    # the figure is the judge's reading of what plain diffusers draws at the same setting
    plain = score(load(str(shapes_model_dir())), fixed_prompts(4, False, False), seeds, 4, 7.5)
    assert rows[0]["adherence"] == plain.adherence and rows[0]["failures"] == plain.failures
    written = json.loads((tmp_path / "quality.json").read_text())["settings"]
    assert written[1]["scheduler"] == "euler_a" and written[0]["adherence"] == plain.adherence
    table = capsys.readouterr().out
    assert f"{plain.adherence:.0%} of 8" in table and "images/s" in table


@pytest.mark.slow  # ~15-20 s: runs every contender for real; make test runs it
def test_animation_mode_splits_model_and_overhead(tmp_path, tiny_dir):
    from sdfleet.bench.animation import run_animation_bench

    bench = settings(
        tmp_path,
        animation=True,
        model="builtin:tiny",
        frames=3,
        repeats=1,
        size_px=32,
        steps=2,
        contenders=("sdfleet", "plain"),
    )
    summary = run_animation_bench(bench)["summary"]
    for name in ("sdfleet", "plain"):
        assert 0 <= summary[name]["overhead_share"]["median"] < 1
        assert summary[name]["frames_per_s"]["median"] > 0
    assert summary["sdfleet"]["encode_fps_512px"]["median"] > 0


@pytest.fixture
def bench_ray(sdfleet_cache, monkeypatch):
    """A local Ray instance started the way `sdfleet bench` starts it; shut down after."""
    import ray

    from sdfleet.bench.workload import start_ray

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    start_ray()
    yield
    ray.shutdown()


@pytest.mark.ray
@pytest.mark.slow
def test_ray_contenders_make_the_same_images(tmp_path, bench_ray):
    report = run_throughput(settings(tmp_path, repeats=1, contenders=("a", "c", "ray")))
    assert {s["images"] for s in report["samples"]} == {12}
    assert report["contenders"]["c"]["startup_s"] is not None
    assert report["contenders"]["ray"]["ratio_to_a"] is not None


def documented_commands() -> list[list[str]]:
    """The flags of every `sdfleet bench` line of benchmarks/run_all.sh (continuations joined)."""
    import shlex

    script = (Path(__file__).resolve().parents[2] / "benchmarks" / "run_all.sh").read_text()
    lines = script.replace("\\\n", " ").splitlines()
    return [shlex.split(line)[2:] for line in lines if line.startswith('"$SDFLEET" bench')]


def test_every_command_of_run_all_is_valid():
    commands = documented_commands()
    assert len(commands) >= 10
    for flags in commands:
        assert parse(*flags).out.parts[0] == "$OUT"  # parsed and validated; writes under OUT


def test_a_run_in_passes_counts_only_the_first_pool_start_as_set_up(monkeypatch):
    """Each pass starts its replicas again; the bench's set-up is the first pass's (the
    last actor up, 911 s in, once made a 1M-row run read 0.118 ms/row)."""
    import sdfleet.bench.contenders as contenders
    from sdfleet.bench.overhead import first_pool_start_s

    ready = [1005.0, 1004.0, 1400.0, 1401.0, 1911.0, 1910.0]  # 3 passes of 2 replicas
    monkeypatch.setattr(contenders, "replica_ready_times", lambda since: ready)
    assert first_pool_start_s({"ray": {"replicas": 2}}, 1000.0) == 5.0
    assert first_pool_start_s({"ray": {"replicas": 1}}, 1000.0) == 4.0
    monkeypatch.setattr(contenders, "replica_ready_times", lambda since: [])
    assert first_pool_start_s({"ray": {"replicas": 2}}, 1000.0) is None
