"""The fault campaigns' figures (``tests/chaos``), gathered from every test process
(each campaign's ``figures`` ride on its teardown report, so worker processes send them
here), printed at the end of the run and, if ``GATECTL_CHAOS_FIGURES`` names a file,
written there as JSON (docs/reliability.md quotes them). Loaded by ``tests/conftest.py``:
the run's own process loads no conftest of a subdirectory when workers collect."""

from __future__ import annotations

import json
import os
import platform
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


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    for key, value in report.user_properties:
        if key == "chaos_figures":
            _FIGURES[report.nodeid.rpartition("::")[2]] = value


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
