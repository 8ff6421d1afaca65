"""Unit-test configuration: the ``slow`` marker, so ``pytest -m "not slow"`` gives a quick loop."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: a unit test that takes more than a few seconds")
