"""benchmarks/conditioning.py: every contender runs its rows and is reported against plain."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_the_conditioning_benchmark_reports_each_contender_against_plain(tmp_path) -> None:
    from sdfleet.bench.conditioning import CONTENDERS, main

    args = ["--rows", "2", "--block", "2", "--batch-size", "2", "--repeats", "1"]
    assert main([*args, "--steps", "2", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "conditioning.json").read_text())
    assert set(report["summary"]) == set(CONTENDERS)
    assert report["summary"]["plain"]["vs_plain"]["median"] == 1.0
    assert all(len(report["samples"][name]) == 1 for name in CONTENDERS)
    assert all(report["samples"][name][0] > 0 for name in CONTENDERS)
