"""Shared pytest options: slow benchmarks run only with --runslow; Hypothesis runs derandomised (the same examples on
every run, so CI is reproducible)."""

from __future__ import annotations

import pytest
from hypothesis import settings

# Examples drawn from a seed derived from each test, no example database: a run is a function of the code alone.
settings.register_profile("reproducible", derandomize=True, database=None)
settings.load_profile("reproducible")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)
