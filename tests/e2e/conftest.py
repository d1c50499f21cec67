"""End-to-end fixtures: the simulated site (real ptys, real Modbus TCP, real HTTP) and
the daemon's lane services running against it in this process."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

# The e2e modules import their bonded lane from here.
from fastsite import BONDED  # noqa: F401

from gatectl.api import start_api
from gatectl.config import load_config
from gatectl.service import Site
from simulators.site import LaneSpec, SimulatedSite, free_tcp_port

NO_EXIT = LaneSpec("N1-OUT", "非保税出区", "non_bonded", "out", "K003", exit_loop=False)


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, step: float = 0.02) -> None:
    """Poll until ``predicate()`` holds; fail the test if it never does."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(step)


@dataclass
class Running:
    sim: SimulatedSite
    site: Site
    api: str
    config_path: Path

    def events(self, lane: str, type_: str | None = None) -> list[dict]:
        evs = self.site.journal.events(lane)
        return [e for e in evs if type_ is None or e["type"] == type_]

    def alarms(self, lane: str) -> list[str]:
        return [e["alarm"] for e in self.events(lane, "alarm.raised")]

    async def get(self, path: str) -> tuple[int, dict]:
        async with aiohttp.ClientSession() as s, s.get(self.api + path) as r:
            return r.status, await r.json()


def write_site_config(sim: SimulatedSite, tmp_path: Path, authority_timeout_ms: int = 3000) -> Path:
    port = free_tcp_port()
    path = sim.write_config(tmp_path / "site.yaml", journal_path=str(tmp_path / "gatectl.db"), api_listen=f"127.0.0.1:{port}")
    if authority_timeout_ms != 3000:
        text = path.read_text(encoding="utf-8").replace("timeout_ms: 3000", f"timeout_ms: {authority_timeout_ms}")
        path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def authority_timeout_ms() -> int:
    return 3000


@pytest.fixture
async def running(tmp_path: Path, fast_sim: SimulatedSite, authority_timeout_ms: int):
    """The daemon's lane services and API on ``fast_sim`` (its lanes: ``lane_specs``)."""
    cfg_path = write_site_config(fast_sim, tmp_path, authority_timeout_ms)
    config = load_config(cfg_path)
    site = Site(config)
    runner = await start_api(site)
    stop = asyncio.Event()
    task = asyncio.create_task(site.run(stop))
    try:
        await wait_until(lambda: site.running)
        yield Running(fast_sim, site, f"http://{config.local_api.listen}", cfg_path)
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
        await runner.cleanup()
