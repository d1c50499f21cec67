"""Shared test options: long soak and fuzz runs are opt-in with --soak."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", action="store_true", default=False, help="also run long soak and fuzz tests")
    parser.addoption("--chaos", action="store_true", default=False, help="also run the fault campaigns in tests/chaos")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The fault campaigns are not yet verified for the default run: opt in with --chaos.
    if not config.getoption("--chaos"):
        skip_chaos = pytest.mark.skip(reason="fault campaign: opt in with --chaos")
        for item in items:
            if "tests/chaos/" in item.nodeid or item.nodeid.startswith("chaos/"):
                item.add_marker(skip_chaos)
    if config.getoption("--soak"):
        return
    skip = pytest.mark.skip(reason="long run: opt in with --soak")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)
