"""Shared fixtures. Every test runs under an absolute deadline (see ``deadline``)."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items):
    # trio tests without an explicit bound still end: a hung network test fails, not stalls CI.
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(120))
