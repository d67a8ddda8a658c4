"""Test-wide hooks: a test without its own ``timeout`` mark gets an absolute 120 s one
(pytest-timeout), so a hung network test fails instead of stalling the run."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items):
    # trio tests without an explicit bound still end: a hung network test fails, not stalls CI.
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(120))
