"""Fault campaigns: each test records its figures (kills, passages, lifts, events checked,
outages, recoveries) with the ``figures`` fixture; ``tests/support/chaos_figures.py`` prints
them at the end of the run and, if ``GATECTL_CHAOS_FIGURES`` names a file, writes them
there as JSON (docs/reliability.md quotes them)."""

from __future__ import annotations

import time

import pytest


@pytest.fixture
def figures(request: pytest.FixtureRequest):
    """A dict the test fills with its figures; kept under the test's name."""
    data: dict = {}
    start = time.monotonic()
    yield data
    data["wall_s"] = round(time.monotonic() - start, 1)
    data["outcome"] = "failed" if getattr(request.node, "_chaos_failed", False) else "ok"
    # On the teardown's report: it reaches the summary from a worker process too (xdist).
    request.node.user_properties.append(("chaos_figures", data))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        item._chaos_failed = True  # type: ignore[attr-defined]
