"""The ``poolai`` command's own output: a closed pipe, ``config show``."""

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
