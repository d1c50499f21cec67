"""Fixtures for the records tests: a synthetic site (no devices running, a clock the test
moves, events journaled through ``Site.record``) and a live one (the simulated site's real
devices and the real lane services, with Records wired in as the daemon wires it)."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from gatectl.api import start_api
from gatectl.config import load_config
from gatectl.records import Records
from gatectl.records_cli import add_subcommands
from gatectl.service import Site
from simulators.site import SimulatedSite, free_tcp_port
from journaling import record

TZ = ZoneInfo("Asia/Shanghai")
TOKEN = "rec-token"


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, step: float = 0.02) -> None:
    """Poll until ``predicate()`` holds; fail the test if it never does."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(step)


def cli(argv: list[str]) -> int:
    """Run a records subcommand as ``gatectl`` would."""
    parser = argparse.ArgumentParser(prog="gatectl")
    sub = parser.add_subparsers(dest="command", required=True)
    add_subcommands(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def synthetic_yaml(tmp_path: Path) -> str:
    """Two lanes on one IO module (shared), nothing listening: the drivers never run."""
    lane = """
  - id: {id}
    name: {name}
    kind: bonded
    direction: {dir}
    channel_no: {ch}
    authority: customs
    card_reader: {{port: /dev/ttyREC{n}0, format: stx-hex-xor}}
    weighbridge: {{port: /dev/ttyREC{n}1, format: xk3190-tf0}}
    points: {{arrival_loop: "io1:di:{a0}", safety_loop: "io1:di:{a1}", exit_loop: "io1:di:{a2}",
              barrier_up: "io1:di:{a3}", barrier_down: "io1:di:{a4}",
              barrier_open: "io1:coil:{c0}", barrier_close: "io1:coil:{c1}"}}"""
    lanes = "".join(
        lane.format(id=i, name=nm, dir=d, ch=ch, n=n, a0=8 * n, a1=8 * n + 1, a2=8 * n + 2, a3=8 * n + 3,
                    a4=8 * n + 4, c0=2 * n, c1=2 * n + 1)
        for n, (i, nm, d, ch) in enumerate([("B1-IN", "保税进区1号", "in", "K001"), ("B1-OUT", "保税出区1号", "out", "K002")])
    )
    return f"""
site: {{id: rec-site, name: 记录测试卡口, timezone: Asia/Shanghai}}
journal: {{path: {tmp_path / 'gatectl.db'}}}
local_api: {{listen: "127.0.0.1:{free_tcp_port()}", token: {TOKEN}}}
authorities: {{customs: {{protocol: http-json, url: "http://127.0.0.1:9/", timeout_ms: 1000}}}}
io_modules:
  io1: {{protocol: modbus-tcp, host: 127.0.0.1, port: 9, unit: 1, poll_ms: 50}}
lanes:{lanes}
"""


@dataclass
class Synthetic:
    """A site whose clock the test sets; events go through ``site.record`` as the lanes'
    would (same journal, same subscribers)."""

    site: Site
    records: Records
    config_path: Path
    clock: list[datetime] = field(default_factory=list)

    @property
    def now(self) -> datetime:
        return self.clock[0]

    def at(self, when: datetime) -> None:
        self.clock[0] = when

    def later(self, **delta: float) -> datetime:
        self.clock[0] += timedelta(**delta)
        return self.clock[0]

    def lane_event(self, lane: str, type_: str, **data: Any) -> dict:
        return record(self.site, lane, type_, data)

    def events(self, type_: str | None = None, lane: str | None = None) -> list[dict]:
        return [e for e in self.site.journal.events(lane) if type_ is None or e["type"] == type_]


def build_synthetic(tmp_path: Path, start: datetime) -> Synthetic:
    path = tmp_path / "site.yaml"
    path.write_text(synthetic_yaml(tmp_path), encoding="utf-8")
    clock = [start]
    site = Site(load_config(path), now=lambda: clock[0])
    records = Records(site)
    return Synthetic(site, records, path, clock)


@pytest.fixture
def synthetic(tmp_path: Path):
    syn = build_synthetic(tmp_path, datetime(2026, 11, 26, 8, 0, tzinfo=TZ))
    try:
        yield syn
    finally:
        syn.site.journal.close()


@dataclass
class Live:
    sim: SimulatedSite
    site: Site
    records: Records
    api: str
    config_path: Path

    def events(self, type_: str | None = None, lane: str | None = "B1-IN") -> list[dict]:
        return [e for e in self.site.journal.events(lane) if type_ is None or e["type"] == type_]

    async def get(self, path: str) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as s, s.get(self.api + path) as r:
            return r.status, await r.json()

    async def post(self, path: str, body: dict, token: str | None = TOKEN) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with aiohttp.ClientSession() as s, s.post(self.api + path, json=body, headers=headers) as r:
            return r.status, await r.json()


@pytest.fixture
async def live(tmp_path: Path, fast_sim: SimulatedSite):
    """The simulated site with the daemon's lane services and Records wired as in the daemon."""
    path = fast_sim.write_config(tmp_path / "site.yaml", journal_path=str(tmp_path / "gatectl.db"),
                                 api_listen=f"127.0.0.1:{free_tcp_port()}", token=TOKEN)
    config = load_config(path)
    site = Site(config)
    records = Records(site)
    site.add_task(records.run, "records")
    runner = await start_api(site, records.setup_routes)
    stop = asyncio.Event()
    task = asyncio.create_task(site.run(stop))
    try:
        await wait_until(lambda: site.running)
        yield Live(fast_sim, site, records, f"http://{config.local_api.listen}", path)
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
        await runner.cleanup()
