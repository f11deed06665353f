"""Hostile job files: alias bombs, deep nesting, duplicate keys - refused fast, naming the file."""

from __future__ import annotations

import resource
import time

import pytest

from sdfleet.batch.errors import ConfigError
from sdfleet.jobs.cli import main
from sdfleet.jobs.runner import EXIT_CONFIG
from sdfleet.jobs.yaml_files import MAX_DEPTH, MAX_NODES, load_yaml


def billion_laughs(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for k in range(1, levels):
        refs = ",".join([f"*a{k - 1}"] * 9)
        lines.append(f"a{k}: &a{k} [{refs}]")
    return "\n".join(lines) + "\n"


HOSTILE = [
    ("alias bomb", billion_laughs(), f"more than {MAX_NODES} values"),
    (
        "alias bomb in a mapping",
        "x: &x {k: [1,2,3,4,5,6,7,8,9,10]}\n" + billion_laughs(),
        "aliases",
    ),
    ("deep flow nesting", "[" * 50_000 + "]" * 50_000, f"more than {MAX_DEPTH} levels"),
    ("deep block nesting", "".join(f"{'  ' * k}k{k}:\n" for k in range(200)) + "x", "levels deep"),
    ("duplicate key", "kind: batch\nmodel: a\nmodel: b\n", "key 'model' is given twice"),
    ("duplicate key in flow", "defaults: {width: 64, width: 128}\n", "first on line 1"),
    ("duplicate nested key", "ray:\n  replicas: 1\n  replicas: 2\n", "line 3"),
]


@pytest.mark.parametrize(
    "text, expected", [(t, e) for _, t, e in HOSTILE], ids=[n for n, *_ in HOSTILE]
)
def test_hostile_yaml_is_refused_quickly_naming_the_file(text, expected):
    t0 = time.process_time()
    with pytest.raises(ConfigError) as info:
        load_yaml(text, "job.yaml")
    assert info.value.args[0].startswith("job.yaml: ")
    assert expected in str(info.value)
    assert time.process_time() - t0 < 5  # bounded cost (a bomb took 99 s before)


def test_ordinary_yaml_still_loads_with_anchors_and_merge_keys():
    text = "base: &b {steps: 4, cfg: 5}\nclip:\n  <<: *b\n  cfg: 7\nlist: [*b, *b]\n"
    assert load_yaml(text, "job.yaml") == {
        "base": {"steps": 4, "cfg": 5},
        "clip": {"steps": 4, "cfg": 7},
        "list": [{"steps": 4, "cfg": 5}, {"steps": 4, "cfg": 5}],
    }


def test_same_key_in_different_mappings_is_fine():
    assert load_yaml("a: {x: 1}\nb: {x: 2}\n", "j") == {"a": {"x": 1}, "b": {"x": 2}}


@pytest.mark.parametrize("name, text, expected", HOSTILE, ids=[n for n, *_ in HOSTILE])
def test_validate_exits_2_on_hostile_job_files(tmp_path, capsys, name, text, expected):
    job = tmp_path / "job.yaml"
    job.write_text(text)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert main(["validate", str(job)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert str(job) in err and expected in err
    assert "Traceback" not in err
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 300 * 1024  # a few hundred MB at most (the bomb took 5.5 GB before)
