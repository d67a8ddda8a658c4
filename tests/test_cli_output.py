"""What the ``poolai`` command and the scripts print: a closed pipe, ``config show``, a
file's spread, devnet's status URLs."""

from __future__ import annotations

import os
import sys

import pytest

from poolai.node.cli.main import EXIT_BROKEN_PIPE, main

pytestmark = pytest.mark.timeout(30)


def test_a_reader_that_left_ends_the_command_quietly(tmp_path, monkeypatch, capsys):
    read_end, write_end = os.pipe()
    os.close(read_end)  # `poolai ... | head` after head has exited
    stdout = os.fdopen(write_end, "w")
    monkeypatch.setattr(sys, "stdout", stdout)
    try:
        code = main(["--data-dir", str(tmp_path), "config", "show"])
        stdout.write("more output, as the interpreter's exit would flush\n")
        stdout.flush()  # lands on /dev/null now: no second BrokenPipeError
    finally:
        stdout.close()
    assert code == EXIT_BROKEN_PIPE
    assert "Traceback" not in capsys.readouterr().err


def test_config_show_aligns_keys_and_writes_sizes_and_durations_as_the_file_takes_them(
        tmp_path, capsys):
    (tmp_path / "config.toml").write_text('storage_quota = "500MB"\n')
    assert main(["--data-dir", str(tmp_path), "config", "show"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert len({line.index(" = ") for line in lines}) == 1  # one column, long keys included
    assert len({line.index("  # ") for line in lines if not line.startswith("data_dir")}) == 1
    shown = {line.split(" = ")[0].strip(): line.split(" = ")[1].split("  # ") for line in lines}
    assert [v.strip() for v in shown["storage_quota"]] == ['"500MB"', "file"]
    assert shown["storage_lease"][0].strip() == '"7d"'
    assert shown["storage_interval"][0].strip() == '"10m"'


def test_a_file_on_fewer_peers_than_shares_is_warned_of():
    from poolai.node.files.cli import spread_warning
    from poolai.node.web.view import file_health

    assert spread_warning(10, 10, 4) is None
    assert "if that peer is lost, so is the file" in spread_warning(1, 10, 4)
    assert "on 2 distinct peer(s), not 10" in spread_warning(2, 10, 4, most_on_one=5)
    assert "loses segments" in spread_warning(2, 10, 4, most_on_one=7)
    assert file_health({"healthy": 3, "concentrated": 1, "degraded": 0, "lost": 0}) == "concentrated"
    assert file_health({"healthy": 3, "concentrated": 0, "degraded": 0, "lost": 0}) == "healthy"


def test_the_status_url_carries_the_admin_token_as_node_url_prints_it(tmp_path):
    from poolai.node.auth import load_or_create_token
    from poolai.node.launcher import NodeProcess

    node = NodeProcess(tmp_path / "n")
    node.info = {"api": "http://127.0.0.1:8740"}  # as a started node publishes it
    assert node.status_url == "http://127.0.0.1:8740/"  # no token yet: the page still opens, locked
    (tmp_path / "n").mkdir(mode=0o700)
    token, _ = load_or_create_token(tmp_path / "n")
    assert node.status_url == f"http://127.0.0.1:8740/#token={token}"
