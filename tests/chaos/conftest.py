"""Fault campaigns: each test records its figures (kills, passages, lifts, events checked,
outages, recoveries) with the ``figures`` fixture; they are printed at the end of the run
and, if ``GATECTL_CHAOS_FIGURES`` names a file, written there as JSON (docs/reliability.md
quotes them)."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import pytest

_FIGURES: dict[str, dict] = {}


def _machine() -> dict:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = f"{int(line.split()[1]) / 1024 / 1024:.0f}"
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu": cpu, "mem_gb": mem_gb, "kernel": platform.release(),
            "python": platform.python_version(), "load_at_end": os.getloadavg()[0]}


@pytest.fixture
def figures(request: pytest.FixtureRequest):
    """A dict the test fills with its figures; kept under the test's name."""
    data: dict = {}
    start = time.monotonic()
    yield data
    data["wall_s"] = round(time.monotonic() - start, 1)
    data["outcome"] = "failed" if getattr(request.node, "_chaos_failed", False) else "ok"
    _FIGURES[request.node.name] = data


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        item._chaos_failed = True  # type: ignore[attr-defined]


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not _FIGURES:
        return
    terminalreporter.section("chaos campaign figures")
    for name, data in _FIGURES.items():
        terminalreporter.write_line(f"{name}: {json.dumps(data, ensure_ascii=False, sort_keys=True)}")
    target = os.environ.get("GATECTL_CHAOS_FIGURES")
    if target:
        Path(target).write_text(json.dumps({"machine": _machine(), "campaigns": _FIGURES}, ensure_ascii=False,
                                           indent=2, sort_keys=True) + "\n", encoding="utf-8")
        terminalreporter.write_line(f"figures written to {target}")
