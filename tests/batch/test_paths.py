"""batch.paths: one URI reading, one path resolver, one atomic write (fsynced on local disks)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sdfleet.batch.paths import (
    is_local,
    is_uri,
    join_uri,
    local_path,
    resolve_path,
    uri_scheme,
    write_atomic,
)

URI_CASES = [
    # (value, scheme, is a URI, local)
    ("s3://bucket/x.parquet", "s3", True, False),
    ("gs://b/x", "gs", True, False),
    ("abfs://c/x", "abfs", True, False),
    ("file:///mnt/shared/out", "file", True, True),
    ("FILE:///mnt/x", "file", True, True),
    ("out/run", None, False, True),
    ("/abs/path", None, False, True),
    ("~/data/m.parquet", None, False, True),
    ("weird name://x", None, False, True),  # a scheme has no spaces: a local path
    ("builtin:tiny", None, False, True),  # no '//': not a URI
]


@pytest.mark.parametrize("value,scheme,uri,local", URI_CASES)
def test_uri_reading(value, scheme, uri, local):
    assert uri_scheme(value) == scheme
    assert is_uri(value) is uri
    assert is_local(value) is local


def test_local_path_strips_file_scheme_and_refuses_others():
    assert local_path("file:///mnt/x") == "/mnt/x"
    assert local_path("out/x") == "out/x"
    with pytest.raises(ValueError, match="s3:// URI"):
        local_path("s3://b/x")


def test_join_uri_keeps_the_form_given():
    assert join_uri("s3://b/out/", "results") == "s3://b/out/results"
    assert join_uri("file:///mnt/out", "x") == "file:///mnt/out/x"
    assert join_uri("/tmp/out", "x") == "/tmp/out/x"


def test_resolve_path(tmp_path):
    assert resolve_path("a/b.png", tmp_path) == tmp_path / "a" / "b.png"
    assert resolve_path("/abs/b.png", tmp_path) == Path("/abs/b.png")
    assert resolve_path("a/b.png") == Path("a/b.png")  # no base: left relative
    assert resolve_path("~/b.png", tmp_path) == Path(os.path.expanduser("~")) / "b.png"
    assert resolve_path("../x", tmp_path) == tmp_path / ".." / "x"  # links and .. kept


def test_write_atomic_fsyncs_before_the_rename(tmp_path, monkeypatch):
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    target = tmp_path / "deep" / "f.bin"
    write_atomic(target, b"one")
    write_atomic(target, b"two")  # over an existing file
    assert target.read_bytes() == b"two"
    assert len(synced) == 2
    assert not list(target.parent.glob("*.tmp"))


def test_write_atomic_on_a_local_pyarrow_filesystem_fsyncs(tmp_path, monkeypatch):
    from pyarrow import fs

    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", synced.append)
    write_atomic(str(tmp_path / "a" / "b.txt"), b"hi", fs.LocalFileSystem())
    assert (tmp_path / "a" / "b.txt").read_bytes() == b"hi" and len(synced) == 1


def test_write_atomic_on_another_filesystem_moves_a_temporary_object(tmp_path):
    from pyarrow import fs

    calls: list[str] = []
    local = fs.LocalFileSystem()

    def unused(*args):
        raise NotImplementedError("not used by write_atomic")

    stubs = dict.fromkeys(fs.FileSystemHandler.__abstractmethods__, unused)

    class Handler(type("Stubs", (fs.FileSystemHandler,), stubs)):
        """A non-local filesystem (like an object store) over a local folder, recording."""

        def get_type_name(self):
            return "recording"

        def normalize_path(self, path):
            return path

        def create_dir(self, path, recursive):
            local.create_dir(path, recursive=recursive)

        def open_output_stream(self, path, metadata):
            calls.append(f"write {Path(path).name}")
            return local.open_output_stream(path)

        def move(self, src, dest):
            calls.append(f"move {Path(src).name} -> {Path(dest).name}")
            local.move(src, dest)

    filesystem = fs.PyFileSystem(Handler())
    write_atomic(str(tmp_path / "out" / "x.json"), b"{}", filesystem)
    assert calls == ["write x.json.tmp", "move x.json.tmp -> x.json"]
    assert (tmp_path / "out" / "x.json").read_bytes() == b"{}"
