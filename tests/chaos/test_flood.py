"""Flood campaign (#13, ``--soak`` only): ``gatectl run`` in its own process, with its
default edge, attacked from the network while vehicles keep coming.

1. **Half-open HTTP connections**: an attacker opens connections that send half a
   request header, 2 000 at first, and reopens every one the daemon closes, for
   ``HTTP_S`` seconds (the issue's 1 100 made the lanes' next authority request fail with
   "Too many open files").
2. **MQTT junk**: two clients publish unsigned spot checks and unsigned approvals as fast
   as they can for ``MQTT_S`` seconds (the issue's 147 784 in 30 s became 147 k journal
   events and 120 MB).

Checked: the daemon lives, ``/api/v1/health`` answers 200 throughout, a released lorry
passes during each phase, the daemon's open files stay under the API's cap plus what the
lanes hold, and the journal grows by a handful of counted records, not one per message.
Figures (printed at the end of the run, quoted in docs/reliability.md): connections held
at most, health latency, refusals per second, journal growth, RSS.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from pathlib import Path

import aiohttp
import aiomqtt
import pytest
from fastsite import fast_site

from gatectl.api import HttpLimits
from simulators.site import SITE_ID, Vehicle

from .harness import MOSQUITTO, Broker, Daemon, wait_until, write_config

pytestmark = [pytest.mark.soak, pytest.mark.timeout(600), pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is needed")]

PREFIX = f"gatectl/{SITE_ID}"
TRUCK = Vehicle("0100E2850E", "云A12345", 31250)
HTTP_S = 30.0
MQTT_S = 30.0
HALF_OPEN = 2000
ATTACKER = "127.0.0.2"  # another address than the health checks' (loopback is a /8)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def journal_rows(path: Path) -> int:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    finally:
        db.close()


def journal_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())


async def refused_total(api: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(api + "/metrics") as r:
        text = await r.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("gatectl_input_refused_total{"))


async def histogram(api: str, name: str) -> dict[str, dict[float, float]]:
    """``{label value: {le: count}}`` of a one-label histogram in ``/metrics``."""
    async with aiohttp.ClientSession() as s, s.get(api + "/metrics") as r:
        text = await r.text()
    out: dict[str, dict[float, float]] = {}
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket{{"):
            labels, value = line[len(name) + 8:].rsplit(" ", 1)
            parts = dict(p.split("=", 1) for p in labels.rstrip("}").split(","))
            key = next((v.strip('"') for k, v in parts.items() if k != "le"), "")
            le = float(parts["le"].strip('"'))
            out.setdefault(key, {})[le] = float(value)
    return out


def p99_bound(before: dict[float, float], after: dict[float, float]) -> str:
    """The bucket bound under which 99 % of the samples taken between two scrapes fell."""
    deltas = {le: after.get(le, 0) - before.get(le, 0) for le in after}
    total = deltas.get(float("inf"), 0)
    if not total:
        return "no samples"
    for le in sorted(deltas):
        if deltas[le] >= 0.99 * total:
            return f"<= {le * 1000:g} ms" if le != float("inf") else "> largest bucket"
    return "?"


class Watch:
    """Health (from another process: curl), open files and RSS of the daemon every
    0.25 s while a phase runs, and the daemon's own loop lags over the phase."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.latencies: list[float] = []
        self.statuses: list[int | None] = []
        self.files: list[int] = []
        self.rss: list[float] = []
        self.lags: dict[str, str] = {}
        self._lag0: dict[str, dict[float, float]] = {}
        self._task: asyncio.Task | None = None

    async def _health(self) -> tuple[int | None, float]:
        proc = await asyncio.create_subprocess_exec(
            "curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{time_total}", "--max-time", "5",
            self.daemon.api + "/api/v1/health", stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate()
        code, seconds = out.decode().split()
        return (int(code) or None), float(seconds)

    async def _run(self) -> None:
        pid = self.daemon.proc.pid  # type: ignore[union-attr]
        while True:
            status, seconds = await self._health()
            self.statuses.append(status)
            self.latencies.append(seconds)
            self.files.append(open_files(pid))
            self.rss.append(rss_mb(pid))
            await asyncio.sleep(0.25)

    async def __aenter__(self) -> Watch:
        self._lag0 = await histogram(self.daemon.api, "gatectl_loop_lag_seconds")
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def __aexit__(self, *exc) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        lag1 = await histogram(self.daemon.api, "gatectl_loop_lag_seconds")
        self.lags = {loop: p99_bound(self._lag0.get(loop, {}), lag1[loop]) for loop in lag1}

    def figures(self) -> dict:
        lat = sorted(self.latencies)
        return {"health_ok": sum(1 for s in self.statuses if s == 200), "health_not_ok": sum(
            1 for s in self.statuses if s != 200), "health_p50_ms": round(lat[len(lat) // 2] * 1000, 1),
            "health_max_ms": round(lat[-1] * 1000, 1), "daemon_open_files_max": max(self.files),
            "rss_max_mb": round(max(self.rss), 1), "loop_lag_p99": self.lags}


async def half_open_attacker(host: str, port: int, stop: asyncio.Event, stats: dict) -> None:
    """Keep ``HALF_OPEN`` half-sent requests open; reopen each the daemon closes."""
    sem = asyncio.Semaphore(HALF_OPEN)

    async def one() -> None:
        try:
            reader, writer = await asyncio.open_connection(host, port, local_addr=(ATTACKER, 0))
        except OSError:
            stats["connect_failed"] += 1
            sem.release()
            return
        stats["opened"] += 1
        writer.write(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        try:
            await reader.read()  # until the daemon closes it
        except OSError:
            pass
        finally:
            stats["closed_by_daemon"] += 1
            writer.close()
            sem.release()

    tasks: set[asyncio.Task] = set()
    while not stop.is_set():
        await sem.acquire()
        task = asyncio.create_task(one())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    for task in list(tasks):
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def mqtt_attacker(port: int, stop: asyncio.Event, stats: dict, topic: str, payload: bytes) -> None:
    async with aiomqtt.Client("127.0.0.1", port, max_queued_outgoing_messages=10_000) as client:
        client.pending_calls_threshold = 100_000
        while not stop.is_set():
            await asyncio.gather(*(client.publish(topic, payload, qos=0) for _ in range(200)))
            stats["published"] += 200
            await asyncio.sleep(0)


async def test_flood_half_open_connections_and_mqtt_junk_against_the_daemon_process(
    tmp_path: Path, figures: dict
) -> None:
    broker = Broker(tmp_path / "broker")
    await broker.start()
    sim = fast_site(tmp_path / "sim")
    await sim.start()
    path = write_config(sim, tmp_path, mqtt=f"127.0.0.1:{broker.port}")
    journal = tmp_path / "gatectl.db"
    daemon = Daemon(path, tmp_path / "daemon.log")
    daemon.start()
    lane = sim.lane("B1-IN")
    sim.authority.script(TRUCK.card, "release")
    try:
        await daemon.wait_healthy()
        pid = daemon.proc.pid  # type: ignore[union-attr]
        base_rss, base_files = rss_mb(pid), open_files(pid)
        host, _, port = daemon.api.removeprefix("http://").rpartition(":")

        # 1. Half-open connections.
        stats = {"opened": 0, "closed_by_daemon": 0, "connect_failed": 0}
        stop = asyncio.Event()
        async with Watch(daemon) as watch:
            attacker = asyncio.create_task(half_open_attacker(host, int(port), stop, stats))
            await asyncio.sleep(HTTP_S / 2)
            assert await lane.drive(TRUCK) == "passed"
            await asyncio.sleep(HTTP_S / 2)
            stop.set()
            await attacker
        http = {**stats, **watch.figures()}
        assert daemon.alive
        assert http["health_not_ok"] == 0, http
        assert http["daemon_open_files_max"] <= base_files + HttpLimits().max_connections + 50, http

        # 2. MQTT junk.
        await wait_until(lambda: lane.barrier.position == "down")
        rows0, bytes0, refused0 = journal_rows(journal), journal_bytes(journal), await refused_total(daemon.api)
        spot = b'{"command": "spot-check", "command_id": "x", "lane_id": "B1-IN", ' \
               b'"issued_at": "2027-01-01T00:00:00+08:00", "hold_next": 1}'
        approval = b'{"approval_id": "AP-JUNK", "lane_id": "B1-IN"}'
        mstats = {"published": 0}
        stop = asyncio.Event()
        started = time.monotonic()
        async with Watch(daemon) as watch:
            attackers = [asyncio.create_task(mqtt_attacker(broker.port, stop, mstats, f"{PREFIX}/cmd/spot-checks",
                                                           spot)),
                         asyncio.create_task(mqtt_attacker(broker.port, stop, mstats, f"{PREFIX}/cmd/approvals",
                                                           approval))]
            await asyncio.sleep(MQTT_S / 2)
            assert await lane.drive(TRUCK) == "passed"
            await asyncio.sleep(MQTT_S / 2)
            stop.set()
            await asyncio.gather(*attackers, return_exceptions=True)
        elapsed = time.monotonic() - started
        await asyncio.sleep(65)  # the interval's counted records
        refused = await refused_total(daemon.api) - refused0
        mqtt = {**mstats, **watch.figures(), "refused": int(refused), "refused_per_s": round(refused / elapsed),
                "journal_rows_added": journal_rows(journal) - rows0,
                "journal_kb_added": round((journal_bytes(journal) - bytes0) / 1024, 1)}
        assert daemon.alive and mqtt["health_not_ok"] == 0, mqtt
        assert mqtt["journal_rows_added"] < 100, mqtt  # the passage's events and a few counted records
        figures.update({"baseline": {"rss_mb": round(base_rss, 1), "open_files": base_files},
                        "half_open_http": http, "mqtt_junk": mqtt})
        assert await daemon.terminate() == 0
    finally:
        daemon.cleanup()
        with contextlib.suppress(Exception):
            await sim.stop()
        broker.stop()
