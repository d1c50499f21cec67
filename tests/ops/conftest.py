"""Fixtures for the ops tests: a real Site on the simulators (real ptys, real Modbus TCP,
real HTTP) with its metrics on the local API, as ``gatectl run`` serves them."""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client.parser import text_string_to_metric_families

from e2e.conftest import wait_until
from gatectl.api import start_api
from gatectl.approvals import public_key_b64
from gatectl.config import load_config
from gatectl.metrics import Metrics
from gatectl.service import Site
from simulators.site import SimulatedSite, free_tcp_port

CUSTOMS = Ed25519PrivateKey.generate()
TOKEN = {"Authorization": "Bearer demo-token"}


def approval(lane: str, approval_id: str, trigger: str = "panel", max_lifts: int = 1) -> dict:
    """An approval document (CONTRACT section 4), valid from a minute ago for an hour; unsigned."""
    now = datetime.now(ZoneInfo("Asia/Shanghai"))
    return {
        "approval_id": approval_id,
        "lane_id": lane,
        "trigger": trigger,
        "reason": "equipment_fault",
        "detail": "读卡器通讯中断",
        "requested_by": {"org": "某某物流有限公司", "name": "张三"},
        "verified_by": {"org": "运维单位", "name": "李四"},
        "approved_by": {"org": "昆明海关", "name": "王五"},
        "countersigned_by": None,
        "plate": None,
        "valid_from": (now - timedelta(seconds=60)).isoformat(),
        "valid_until": (now + timedelta(seconds=3600)).isoformat(),
        "max_lifts": max_lifts,
        "signatures": [],
    }


def write_config(sim: SimulatedSite, tmp_path: Path) -> Path:
    """The simulated site's config, trusting ``CUSTOMS`` for approvals."""
    return sim.write_config(
        tmp_path / "site.yaml",
        journal_path=str(tmp_path / "gatectl.db"),
        api_listen=f"127.0.0.1:{free_tcp_port()}",
        trust={"customs": [public_key_b64(CUSTOMS)]},
    )


@dataclass
class Scrape:
    """One ``GET /metrics``: the content type and the parsed samples."""

    content_type: str
    text: str

    def samples(self, name: str) -> list[tuple[dict[str, str], float]]:
        out = []
        for family in text_string_to_metric_families(self.text):
            for s in family.samples:
                if s.name == name:
                    out.append((dict(s.labels), s.value))
        return out

    def value(self, name: str, **labels: str) -> float | None:
        """The one sample of ``name`` whose labels include ``labels`` (None if absent)."""
        found = [v for lab, v in self.samples(name) if all(lab.get(k) == want for k, want in labels.items())]
        assert len(found) <= 1, (name, labels, found)
        return found[0] if found else None

    def label_values(self) -> set[str]:
        return {v for family in text_string_to_metric_families(self.text) for s in family.samples
                for v in s.labels.values()}


@dataclass
class OpsSite:
    sim: SimulatedSite
    site: Site
    metrics: Metrics
    api: str

    async def scrape(self, accept: str | None = None) -> Scrape:
        headers = {"Accept": accept} if accept else {}
        async with aiohttp.ClientSession() as s, s.get(self.api + "/metrics", headers=headers) as r:
            assert r.status == 200
            return Scrape(r.headers["Content-Type"], await r.text())

    async def post(self, path: str, body: dict) -> tuple[int, dict]:
        async with aiohttp.ClientSession() as s, s.post(
            self.api + path, data=json.dumps(body, ensure_ascii=False), headers=TOKEN
        ) as r:
            return r.status, await r.json()

    def events(self, lane: str, type_: str) -> list[dict]:
        return [e for e in self.site.journal.events(lane) if e["type"] == type_]


@pytest.fixture
async def ops_site(tmp_path: Path, fast_sim: SimulatedSite):
    config = load_config(write_config(fast_sim, tmp_path))
    site = Site(config)
    metrics = Metrics(site)
    runner = await start_api(site, metrics.setup_routes)
    stop = asyncio.Event()
    task = asyncio.create_task(site.run(stop))
    try:
        await wait_until(lambda: site.running)
        yield OpsSite(fast_sim, site, metrics, f"http://{config.local_api.listen}")
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
        await runner.cleanup()


class FakeSystemd:
    """The receiving end of NOTIFY_SOCKET: a bound AF_UNIX datagram socket."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.setblocking(False)
        self.messages: list[list[str]] = []

    def drain(self) -> list[list[str]]:
        """Every datagram received since the last drain, without waiting."""
        got = []
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                break
            got.append(data.decode("utf-8").split("\n"))
        self.messages += got
        return got

    def lines(self) -> list[str]:
        self.drain()
        return [line for msg in self.messages for line in msg]

    def count(self, line: str) -> int:
        return self.lines().count(line)

    def close(self) -> None:
        self.sock.close()
