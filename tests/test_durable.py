"""write_atomic: whole files or nothing, private by default, and safe with concurrent writers."""

from __future__ import annotations

import os

import pytest
from racing import race

from poolai.mesh import durable
from poolai.mesh.durable import write_atomic

pytestmark = pytest.mark.timeout(60)


def test_writes_the_bytes_with_the_mode_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        write_atomic(tmp_path / "a", b"alpha")
        write_atomic(tmp_path / "b", b"beta", mode=0o644)
    finally:
        os.umask(old)
    assert (tmp_path / "a").read_bytes() == b"alpha"
    assert os.stat(tmp_path / "a").st_mode & 0o777 == 0o600
    assert os.stat(tmp_path / "b").st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_replaces_an_existing_file(tmp_path):
    path = tmp_path / "state.json"
    write_atomic(path, b"old")
    write_atomic(path, b"new and longer")
    assert path.read_bytes() == b"new and longer"
    assert list(tmp_path.iterdir()) == [path]


def test_short_writes_are_continued(tmp_path, monkeypatch):
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data[:3])))
    write_atomic(tmp_path / "f", b"0123456789" * 10)
    assert (tmp_path / "f").read_bytes() == b"0123456789" * 10


def test_each_write_uses_its_own_temporary_name_beside_the_target(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (seen.append(src), real_replace(src, dst)))
    write_atomic(tmp_path / "f", b"1")
    write_atomic(tmp_path / "f", b"2")
    assert len(set(seen)) == 2
    assert all(os.path.dirname(src) == str(tmp_path) for src in seen)


def test_concurrent_writers_of_one_path_all_succeed(tmp_path):
    path = tmp_path / "shared.json"

    def writer(n: int) -> None:
        for i in range(20):
            write_atomic(path, b"%d-%d" % (n, i))

    assert race(writer, [(n,) for n in range(6)]) == []
    assert path.read_bytes() in {b"%d-19" % n for n in range(6)}
    assert list(tmp_path.iterdir()) == [path]


def test_a_failed_write_leaves_the_target_and_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "f"
    write_atomic(path, b"kept")

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="Input/output"):
        write_atomic(path, b"lost")
    assert path.read_bytes() == b"kept"
    assert list(tmp_path.iterdir()) == [path]


def test_a_failed_rename_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "dir"
    (target / "inside").mkdir(parents=True)
    with pytest.raises(OSError):
        write_atomic(target, b"x")  # a non-empty directory cannot be replaced by a file
    assert [p.name for p in tmp_path.iterdir()] == ["dir"]


def test_create_only_keeps_the_first_and_refuses_the_second(tmp_path):
    path = tmp_path / "identity.key"
    write_atomic(path, b"first", overwrite=False)
    with pytest.raises(FileExistsError):
        write_atomic(path, b"second", overwrite=False)
    assert path.read_bytes() == b"first"
    assert list(tmp_path.iterdir()) == [path]


def test_concurrent_creators_exactly_one_wins(tmp_path):
    path = tmp_path / "admin.token"
    won = []

    def creator(n: int) -> None:
        write_atomic(path, b"%d" % n, overwrite=False)
        won.append(n)

    lost = race(creator, [(n,) for n in range(8)])
    assert len(won) == 1 and len(lost) == 7 and all(isinstance(e, FileExistsError) for e in lost)
    assert path.read_bytes() == b"%d" % won[0]
    assert list(tmp_path.iterdir()) == [path]


def test_fsync_dir_accepts_a_directory_only(tmp_path):
    durable.fsync_dir(tmp_path)
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        durable.fsync_dir(tmp_path / "f")
