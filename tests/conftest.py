"""Test-wide hooks: a test without its own ``timeout`` mark gets an absolute 120 s one
(pytest-timeout), so a hung network test fails instead of stalling the run; and the suite
keeps compiled bytecode even where PYTHONDONTWRITEBYTECODE is set."""

from __future__ import annotations

import sys

import pytest

# Compiling the project and rewriting the tests' asserts afresh costs about 3 s of every run
# (collection 5.8 s, 2.6 s from cached bytecode); __pycache__ is git-ignored.
sys.dont_write_bytecode = False


def pytest_collection_modifyitems(items):
    # trio tests without an explicit bound still end: a hung network test fails, not stalls CI.
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(120))
