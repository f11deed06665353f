"""`batch.out_lock`: one run holds an OUT; real processes contend for it."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pyarrow import fs

from sdfleet.batch.errors import ConfigError
from sdfleet.batch.out_lock import (
    LOCK_NAME,
    Holder,
    check_out_folder,
    hold_out,
    out_kind,
    parse_holder,
)
from tests.fs_faults import read_only_folder


@pytest.fixture
def read_only_dir(tmp_path):
    with read_only_folder(tmp_path / "ro") as folder:
        yield folder


HOLD = textwrap.dedent(
    """
    import sys, time
    from sdfleet.batch.out_lock import hold_out
    with hold_out(sys.argv[1], "batch"):
        print("held", flush=True)
        time.sleep(float(sys.argv[2]))
    """
)


def start_holder(out: Path, seconds: float = 60) -> subprocess.Popen:
    """Another process holding OUT; returns once it holds it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_is_told_who_holds_out(tmp_path):
    out = tmp_path / "out"
    holder = start_holder(out)
    try:
        with pytest.raises(ConfigError) as caught, hold_out(str(out), "batch"):
            pass
        message = str(caught.value)
        assert f"pid {holder.pid} on {os.uname().nodename}" in message and "in use" in message
        assert "use another --out" in message
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_holder_is_taken_over_with_a_message(tmp_path, caplog):
    out = tmp_path / "out"
    holder = start_holder(out)
    os.kill(holder.pid, signal.SIGKILL)  # no cleanup runs: the file still names it
    holder.wait()
    assert parse_holder((out / LOCK_NAME).read_bytes()).pid == holder.pid
    with caplog.at_level(logging.WARNING), hold_out(str(out), "batch") as me:
        assert parse_holder((out / LOCK_NAME).read_bytes()) == me
    assert f"taking over from pid {holder.pid}" in caplog.text
    assert (out / LOCK_NAME).read_bytes() == b""  # released: empty


def test_released_lock_is_free_for_the_next_run(tmp_path, caplog):
    out = tmp_path / "out"
    start_holder(out, seconds=0).wait()
    with caplog.at_level(logging.WARNING), hold_out(str(out), "batch"):
        pass
    assert "taking over" not in caplog.text


def test_processes_started_together_get_out_one_at_a_time(tmp_path):
    """Four processes try at once while each holds OUT briefly: at no instant two hold it."""
    out, log = tmp_path / "out", tmp_path / "log"
    script = textwrap.dedent(
        """
        import os, sys, time
        from sdfleet.batch.errors import ConfigError
        from sdfleet.batch.out_lock import hold_out
        out, log = sys.argv[1], sys.argv[2]
        try:
            with hold_out(out, "batch"):
                with open(log, "a") as f: f.write(f"in {time.monotonic()}\\n")
                time.sleep(0.3)
                with open(log, "a") as f: f.write(f"out {time.monotonic()}\\n")
        except ConfigError:
            sys.exit(2)
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(out), str(log)]) for _ in range(4)]
    codes = [p.wait() for p in procs]
    assert set(codes) <= {0, 2} and 0 in codes
    events = sorted(
        (float(t), kind) for kind, t in (line.split() for line in log.read_text().splitlines())
    )
    inside = 0
    for _, kind in events:
        inside += 1 if kind == "in" else -1
        assert inside in (0, 1)
    assert [kind for _, kind in events].count("in") == codes.count(0)


# ---------------------------------------------------------------------------- object stores


def store(tmp_path: Path) -> tuple[fs.SubTreeFileSystem, str]:
    """An object-store-like filesystem (not LocalFileSystem), so the claim path is taken."""
    (tmp_path / "bucket").mkdir(exist_ok=True)
    return fs.SubTreeFileSystem(str(tmp_path / "bucket"), fs.LocalFileSystem()), "out"


def write_claim(tmp_path: Path, **fields) -> None:
    holder = Holder(host="h", pid=1, started="then", kind="batch", command="sdfleet run")
    payload = {**holder.__dict__, **fields}
    (tmp_path / "bucket" / "out").mkdir(parents=True, exist_ok=True)
    (tmp_path / "bucket" / "out" / LOCK_NAME).write_text(json.dumps(payload))


def test_object_store_claim_refuses_a_live_holder_and_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr("sdfleet.batch.out_lock.CLAIM_SETTLE_S", 0.0)
    filesystem, root = store(tmp_path)
    write_claim(tmp_path, host="other-node", pid=4242)
    with pytest.raises(ConfigError) as caught, hold_out("s3://b/out", "batch", (filesystem, root)):
        pass
    assert "pid 4242 on other-node" in str(caught.value)
    assert f"delete s3://b/out/{LOCK_NAME}" in str(caught.value)


def test_object_store_claim_of_a_dead_local_process_is_taken_over(tmp_path, monkeypatch):
    monkeypatch.setattr("sdfleet.batch.out_lock.CLAIM_SETTLE_S", 0.0)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    filesystem, root = store(tmp_path)
    write_claim(tmp_path, host=os.uname().nodename, pid=dead.pid)
    with hold_out("s3://b/out", "batch", (filesystem, root)) as me:
        claim = parse_holder((tmp_path / "bucket" / "out" / LOCK_NAME).read_bytes())
        assert claim == me
    assert not (tmp_path / "bucket" / "out" / LOCK_NAME).exists()  # released: deleted


def test_object_store_claim_lost_to_a_later_writer_is_refused(tmp_path, monkeypatch):
    """Two runs that both found no claim: the one whose claim was written over gives way."""
    filesystem, root = store(tmp_path)

    def other_run_writes_meanwhile(seconds: float) -> None:
        write_claim(tmp_path, host="other-node", pid=7)

    monkeypatch.setattr("sdfleet.batch.out_lock.time.sleep", other_run_writes_meanwhile)
    with pytest.raises(ConfigError, match="pid 7 on other-node"):
        with hold_out("s3://b/out", "batch", (filesystem, root)):
            pass
    assert parse_holder((tmp_path / "bucket" / "out" / LOCK_NAME).read_bytes()).pid == 7


# ---------------------------------------------------------------------------- kinds, folders


@pytest.mark.parametrize(
    ("marker", "kind"),
    [
        ("results/", "batch"),
        ("images/", "batch"),
        ("status.json", "animation"),
        ("frames/", "animation"),
        ("summary.json:clips", "animation"),
        ("summary.json:expected_outputs", "batch"),
        ("job.yaml", None),
    ],
)
def test_out_kind_from_what_it_holds(tmp_path, marker, kind):
    name, _, key = marker.partition(":")
    if name.endswith("/"):
        (tmp_path / name).mkdir()
    else:
        (tmp_path / name).write_text(json.dumps({key: 1}) if key else "x")
    assert out_kind(fs.LocalFileSystem(), str(tmp_path)) == kind


@pytest.mark.parametrize(("held", "wanted"), [("batch", "animation"), ("animation", "batch")])
def test_another_kinds_out_is_refused_and_left_alone(tmp_path, held, wanted):
    marker = "results" if held == "batch" else "frames"
    (tmp_path / marker).mkdir()
    (tmp_path / "summary.json").write_text("{}")
    article = "an" if held == "animation" else "a"
    with pytest.raises(ConfigError, match=f"holds the outputs of {article} {held} job"):
        with hold_out(str(tmp_path), wanted):
            pass
    assert (tmp_path / "summary.json").read_text() == "{}"
    with hold_out(str(tmp_path), held):  # its own kind resumes
        pass


def test_an_out_that_is_a_file_or_under_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="is a file; give a folder"):
        check_out_folder(str(tmp_path / "f"))
    with pytest.raises(ConfigError, match="is a file, so no folder can be made"):
        check_out_folder(str(tmp_path / "f" / "sub"))
    assert (tmp_path / "f").read_text() == "x"


def test_a_read_only_out_is_refused(read_only_dir):
    with pytest.raises(ConfigError, match="cannot be written"):
        check_out_folder(str(read_only_dir / "out"))
    with pytest.raises(ConfigError, match="cannot be written"):
        with hold_out(str(read_only_dir), "batch"):
            pass


def test_a_fresh_out_is_made_and_holds_only_the_lock_file(tmp_path):
    out = tmp_path / "a" / "b"
    with hold_out(f"file://{out}", "animation"):
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]


def test_holder_round_trips_and_bad_files_are_no_holder():
    me = Holder.this_process("batch")
    assert parse_holder(json.dumps(me.__dict__).encode()) == me
    assert parse_holder(b"") is None and parse_holder(b"\xff{") is None
    assert parse_holder(b'{"unknown": 1}') is None
    assert not me.is_dead_here()
