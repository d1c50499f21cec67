"""Shared test options: long soak and fuzz runs are opt-in with --soak."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", action="store_true", default=False, help="also run long soak and fuzz tests")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--soak"):
        return
    skip = pytest.mark.skip(reason="long run: opt in with --soak")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


# Helpers shared by test directories (in-memory journals, fakes, the fast simulated site):
# importable by name.
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent / "support"))

# fastsite: the ``fast_sim`` and ``lane_specs`` fixtures, beside its ``fast_site`` factory.
pytest_plugins = ["chaos_figures", "fastsite"]
