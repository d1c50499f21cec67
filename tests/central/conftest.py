"""Zone central fixtures: one real PostgreSQL for the session (Debian's binaries, a temp
dir, an unprivileged user when run as root; a fresh database per test), a real Mosquitto
per test (the MQTT tests' helper), real lane PCs (``gatectl run`` processes against
simulated sites, each its own site id and prefix) and the central, in this process or as
``gatectl central`` processes to kill."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import aiohttp
import psycopg
import pytest

from gatectl.central.config import load_zone_config
from gatectl.central.pgtemp import PostgresMissing, TempPostgres
from gatectl.users import token_sha256
from mqtt.conftest import Broker
from simulators.site import SITE_ID, LaneSpec, SimulatedSite, free_tcp_port

BONDED = LaneSpec("B1-IN", "保税货物进区1号", "bonded", "in", "K001")
TOKENS = {"customs": "tok-customs", "park": "tok-park", "guard": "tok-guard", "viewer": "tok-viewer"}
NAMES = {"customs": "海关监控中心", "park": "园区管理办", "guard": "王保安", "viewer": "值班大屏"}
_db_counter = itertools.count(1)


def auth(role: str) -> dict:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


async def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, step: float = 0.05) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(step)


async def wait_for(check: Callable, timeout: float = 45.0, step: float = 0.2):
    """Poll an async ``check()`` until it returns something true; return it."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    last = None
    while loop.time() < end:
        last = await check()
        if last:
            return last
        await asyncio.sleep(step)
    raise AssertionError(f"condition not reached in time (last: {last!r})")


# ---------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="session")
def postgres():
    try:
        pg = TempPostgres(fsync=False)
    except PostgresMissing as exc:
        pytest.fail(str(exc), pytrace=False)  # never skipped: CI installs the package
    pg.start()
    try:
        yield pg
    finally:
        pg.cleanup()


@pytest.fixture
def pg_url(postgres: TempPostgres) -> str:
    """A fresh database of the session's PostgreSQL."""
    name = f"t{os.getpid()}_{next(_db_counter)}"
    admin = postgres.url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return postgres.url.rsplit("/", 1)[0] + "/" + name


# ---------------------------------------------------------------------- lane PCs


class LanePC:
    """A simulated site and ``gatectl run`` against it, under its own site id."""

    def __init__(self, workdir: Path, site_id: str, broker_port: int, specs: list[LaneSpec], index: int) -> None:
        self.workdir = workdir
        self.site_id = site_id
        self.broker_port = broker_port
        self.sim = SimulatedSite(workdir, specs, travel_s=0.2, speed=6.0, weigh_interval_s=0.05)
        self.index = index
        self.proc: subprocess.Popen | None = None
        self.config_path = workdir / "site.yaml"
        self.journal_path = workdir / "gatectl.db"
        self.api = f"127.0.0.1:{free_tcp_port()}"

    async def start_sim(self) -> None:
        await self.sim.start()
        # Customs' instruction ids are unique zone-wide; the simulators of two sites would both
        # start at CMD-000001, which the central rightly calls an instruction replay.
        self.sim.authority._instruction_seq = itertools.count(100_000 * (self.index + 1))
        text = self.sim.config_yaml(journal_path=str(self.journal_path), api_listen=self.api,
                                    mqtt=f"127.0.0.1:{self.broker_port}")
        text = text.replace(f"  id: {SITE_ID}\n", f"  id: {self.site_id}\n")
        text = text.replace(f"gatectl/{SITE_ID}", f"gatectl/{self.site_id}")
        text = text.replace("client_id: demo-lanepc", f"client_id: lanepc-{self.site_id}")
        self.config_path.write_text(text, encoding="utf-8")

    def start(self) -> None:
        log = open(self.workdir / "lanepc.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "gatectl", "run", "--config", str(self.config_path)],
                                     stdout=log, stderr=log, start_new_session=True)

    async def ready(self) -> None:
        async def up() -> bool:
            try:
                async with aiohttp.ClientSession() as s, s.get(f"http://{self.api}/api/v1/health") as r:
                    return r.status == 200
            except aiohttp.ClientError:
                assert self.proc is not None and self.proc.poll() is None, (self.workdir / "lanepc.log").read_text()
                return False
        await wait_for(up, 30)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def journal_ids(self) -> set[str]:
        db = sqlite3.connect(f"file:{self.journal_path}?mode=ro", uri=True)
        try:
            return {r[0] for r in db.execute("SELECT event_id FROM events")}
        finally:
            db.close()

    def journal_passages(self) -> dict[str, tuple]:
        db = sqlite3.connect(f"file:{self.journal_path}?mode=ro", uri=True)
        try:
            return {r[0]: tuple(r[1:]) for r in db.execute("SELECT passage_id, card, outcome FROM passages")}
        finally:
            db.close()

    async def drive(self, lane: str, vehicle) -> str:
        return await self.sim.lane(lane).drive(vehicle, wait_for_lift_s=8.0)


class Zone:
    """The broker, lane PCs and centrals of one test."""

    def __init__(self, tmp_path: Path, pg_url: str) -> None:
        self.tmp = tmp_path
        self.pg_url = pg_url
        self.broker: Broker | None = None
        self.pcs: list[LanePC] = []
        self.centrals: list[subprocess.Popen] = []
        self.http_port = free_tcp_port()

    async def start_broker(self) -> Broker:
        self.broker = Broker(self.tmp / "broker")
        await self.broker.start()
        return self.broker

    async def lane_pc(self, site_id: str, specs: list[LaneSpec] = (BONDED,), start: bool = True) -> LanePC:
        assert self.broker is not None
        pc = LanePC(self.tmp / site_id, site_id, self.broker.port, list(specs), len(self.pcs))
        self.pcs.append(pc)
        await pc.start_sim()
        if start:
            pc.start()
            await pc.ready()
        return pc

    def zone_yaml(self, client_id: str = "central-1", shared_group: str | None = None,
                  http_port: int | None = None, **ingest) -> Path:
        assert self.broker is not None
        lines = [
            "zone: {id: kmzb, name: 昆明综合保税区经开片区, timezone: Asia/Shanghai}",
            f"database: {{url: '{self.pg_url}'}}",
            "mqtt:",
            "  host: 127.0.0.1",
            f"  port: {self.broker.port}",
            f"  client_id: {client_id}",
            '  prefixes: ["gatectl/+"]',
            f"  shared_group: {shared_group or 'null'}",
            f"http: {{listen: '127.0.0.1:{http_port or self.http_port}'}}",
            "users:",
            *(f"  - {{name: {NAMES[r]}, role: {r}, token_sha256: '{token_sha256(t)}'}}" for r, t in TOKENS.items()),
            "ingest:",
            f"  gap_grace_s: {ingest.get('gap_grace_s', 1.0)}",
            f"  replay_timeout_s: {ingest.get('replay_timeout_s', 5.0)}",
        ]
        path = self.tmp / f"zone-{client_id}.yaml"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    def central_process(self, path: Path) -> subprocess.Popen:
        log = open(path.with_suffix(".log"), "ab")
        proc = subprocess.Popen([sys.executable, "-m", "gatectl", "central", "--config", str(path)],
                                stdout=log, stderr=log, start_new_session=True)
        self.centrals.append(proc)
        return proc

    # ------------------------------------------------------------------ database views

    def stored_ids(self) -> set[str]:
        with psycopg.connect(self.pg_url) as conn:
            return {r[0] for r in conn.execute("SELECT event_id::text FROM events")}

    def count(self) -> int:
        with psycopg.connect(self.pg_url) as conn:
            return conn.execute("SELECT count(*) FROM events").fetchone()[0]

    def rows_of(self, event_id: str) -> int:
        with psycopg.connect(self.pg_url) as conn:
            return conn.execute("SELECT count(*) FROM events WHERE event_id = %s", (event_id,)).fetchone()[0]

    def passages(self, site_id: str) -> dict[str, tuple]:
        with psycopg.connect(self.pg_url) as conn:
            return {r[0]: (r[1], r[2]) for r in conn.execute(
                "SELECT passage_id, card, outcome FROM passages WHERE site_id = %s", (site_id,))}

    def all_journal_ids(self) -> set[str]:
        return set().union(*(pc.journal_ids() for pc in self.pcs))

    async def complete(self, timeout: float = 60.0) -> None:
        """Until the central holds exactly every lane PC's journal."""
        def done() -> bool:
            try:
                return self.stored_ids() == self.all_journal_ids()
            except psycopg.Error:
                return False
        await wait_until(done, timeout, 0.3)

    async def close(self) -> None:
        for proc in self.centrals:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.centrals:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(15)
            if proc.poll() is None:
                proc.kill()
        for pc in self.pcs:
            pc.stop()
            await pc.sim.stop()
        if self.broker is not None:
            self.broker.stop()


@pytest.fixture
async def zone(tmp_path: Path, pg_url: str):
    z = Zone(tmp_path, pg_url)
    await z.start_broker()
    try:
        yield z
    finally:
        await z.close()


class InProcess:
    """``run_central`` in this process (its ``Central`` at hand)."""

    def __init__(self, path: Path) -> None:
        self.config = load_zone_config(path)
        self.stop = asyncio.Event()
        self.central = None
        self.task: asyncio.Task | None = None
        self.base = f"http://{self.config.http.listen}"

    async def start(self) -> InProcess:
        from gatectl.central.service import run_central

        ready = asyncio.Event()

        def started(central) -> None:
            self.central = central

        self.task = asyncio.create_task(run_central(self.config, self.stop, ready=ready, started=started,
                                                    central_kw={"gap_interval": 0.2}))
        await asyncio.wait({self.task, asyncio.ensure_future(ready.wait())}, return_when=asyncio.FIRST_COMPLETED)
        if self.task.done():
            self.task.result()
        await wait_until(lambda: self.central is not None and self.central.mqtt_connected, 15)
        return self

    async def close(self) -> None:
        self.stop.set()
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)

    async def get(self, path: str, role: str | None = "viewer") -> tuple[int, object]:
        async with aiohttp.ClientSession() as s, s.get(self.base + path, headers=auth(role) if role else {}) as r:
            ctype = r.headers.get("Content-Type", "")
            return r.status, (await r.json()) if "json" in ctype else await r.read()

    async def post(self, path: str, body: object, role: str | None) -> tuple[int, dict]:
        async with aiohttp.ClientSession() as s, s.post(self.base + path, json=body,
                                                        headers=auth(role) if role else {}) as r:
            return r.status, await r.json()


@pytest.fixture
async def central_in_process():
    made: list[InProcess] = []

    async def make(path: Path) -> InProcess:
        c = InProcess(path)
        made.append(c)
        return await c.start()

    try:
        yield make
    finally:
        for c in made:
            await c.close()
