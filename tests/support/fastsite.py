"""The simulated site most end-to-end tests run the daemon against, made fast: drivers'
pauses divided by five, a barrier that travels in 0.2 s and indicators that send a weight
every 50 ms (``simulators.site``; a loop change still lasts long enough for the daemon's
IO polls to see it).

``fast_site(workdir, lanes)`` makes one, not started (one bonded lane unless told). The
``fast_sim`` fixture is one on ``tmp_path`` with the lanes of the ``lane_specs`` fixture
(a test overrides them with ``@pytest.mark.parametrize("lane_specs", [[...]])``), started,
and stopped after the test and every fixture built on it, however the test ends. Who
writes its config is the caller's business. Loaded by ``tests/conftest.py``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import pytest

from simulators.site import LaneSpec, SimulatedSite

BONDED = LaneSpec("B1-IN", "保税货物进区1号", "bonded", "in", "K001")
FAST: dict[str, float] = {"travel_s": 0.2, "speed": 5.0, "weigh_interval_s": 0.05}


def fast_site(workdir: Path, lanes: Iterable[LaneSpec] = (BONDED,), **extra: Any) -> SimulatedSite:
    """A fast site in ``workdir`` with ``lanes``, not started; ``extra`` goes to
    ``SimulatedSite`` (over :data:`FAST` where it names the same argument)."""
    return SimulatedSite(workdir, list(lanes), **{**FAST, **extra})


@pytest.fixture
def lane_specs() -> list[LaneSpec]:
    return [BONDED]


@pytest.fixture
async def fast_sim(tmp_path: Path, lane_specs: list[LaneSpec]) -> AsyncIterator[SimulatedSite]:
    sim = fast_site(tmp_path, lane_specs)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()
