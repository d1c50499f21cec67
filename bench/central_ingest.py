"""Bench 7: the zone central's ingest into PostgreSQL, against a raw script.

Setting: one Mosquitto (``/usr/sbin/mosquitto``, no persistence, queues big enough for
the backlogs), one PostgreSQL (``TempPostgres``: Debian's binaries, fsync on, defaults
otherwise), the central as a ``gatectl central`` process. The load is realistic lane
event streams: 200 lanes (20 lane PCs of 10 lanes), each journaling passages (loop
changes, opened, card, weight, request, decision, authorisation, lift, closed), every
event with its uuid, per-lane seq and ``ts`` stamped when it is published.

1. **Capacity** (events/s): a backlog of N events is published to the broker while the
   consumer is away (its persistent session queues them); the clock runs from the
   consumer's start until the N-th row is in PostgreSQL. The same for the baseline, a raw
   script doing the same I/O with the same driver and nothing else: aiomqtt, the same
   subscription, ``json.loads``, psycopg ``COPY`` of 2 000 events per transaction into a
   table of the same columns, no dedup, no completeness, no projection, no alarms.
   Target: >= 5 000 events/s and >= 0.5x the raw script.
2. **Sustained** 5 000 events/s for a while, published at that rate: lag from the
   event's ``ts`` (journaled on the lane) to its row's ``stored_at`` (written centrally,
   ``clock_timestamp()``): p50, p99 (target <= 1 s), and the central's RSS.
3. **Backfill**: a lane PC's journal (a real journal-shaped SQLite file of M events over
   10 lanes) served by the lane's real ``gatectl.replay.Replayer`` and retained states
   with ``last_seq``, none of it ever published live: the central finds the gaps and
   replays them, 10 000 events per request. Timed from the central's start to the last
   row; M = 1 000 000 in the full run, 100 000 with ``--quick``.

``python -m bench.central_ingest [--quick] [--json FILE]``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import aiomqtt
import psycopg

from bench.common import Report, Row, bench_args, pct, proc_rss_mb, scratch
from gatectl.central.pgtemp import TempPostgres, free_port

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
SITES, LANES_PER_SITE = 20, 10
TZ = timezone.utc


def passage_events(n: int):
    """Data parts of one passage's events (the shapes a bonded lane journals)."""
    pid = str(uuid.uuid4())
    card = f"{n % 9000 + 1000:04d}E2850E"
    auth = {"kind": "release_instruction", "id": f"CMD-{n:08d}"}
    return [
        ("loop.changed", {"loop": "arrival_loop", "occupied": True}),
        ("passage.opened", {"passage_id": pid}),
        ("card.read", {"passage_id": pid, "card": card}),
        ("weight.stable", {"passage_id": pid, "gross_weight_kg": 31250.0}),
        ("release.requested", {"passage_id": pid, "request_id": str(uuid.uuid4()), "card": card,
                               "gross_weight_kg": 31250.0}),
        ("release.decided", {"passage_id": pid, "source": "authority", "decision": "release",
                             "instruction_id": auth["id"], "form_id": "HF530120261127000101",
                             "hint": "核放单已核放，请通行", "declared_weight_kg": 31250.0}),
        ("authorisation.committed", {"passage_id": pid, "authorisation": auth}),
        ("barrier.lifted", {"passage_id": pid, "authorisation": auth, "reason": "lift"}),
        ("loop.changed", {"loop": "safety_loop", "occupied": True}),
        ("loop.changed", {"loop": "safety_loop", "occupied": False}),
        ("passage.closed", {"passage_id": pid, "outcome": "passed", "reason": None}),
    ]


class Lanes:
    """200 lanes' event streams: ``next()`` gives (topic, body) round robin over lanes."""

    def __init__(self) -> None:
        self.lanes = [(f"pc-{s:02d}", f"L{n:02d}") for s in range(SITES) for n in range(LANES_PER_SITE)]
        self.seq = {k: 0 for k in self.lanes}
        self.todo = {k: [] for k in self.lanes}
        self.i = 0
        self.passages = 0

    def next(self) -> tuple[str, bytes]:
        key = self.lanes[self.i % len(self.lanes)]
        self.i += 1
        if not self.todo[key]:
            self.passages += 1
            self.todo[key] = passage_events(self.passages)
        type_, data = self.todo[key].pop(0)
        self.seq[key] += 1
        site, lane = key
        body = {"event_id": str(uuid.uuid4()), "seq": self.seq[key], "site_id": site, "lane_id": lane,
                "type": type_, "ts": datetime.now(TZ).isoformat(), **data}
        return f"gatectl/{site}/lanes/{lane}/events", json.dumps(body, ensure_ascii=False).encode()


def start_broker(work: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    conf = work / "mosquitto.conf"
    conf.write_text(("user root\n" if os.geteuid() == 0 else "") + f"listener {port} 127.0.0.1\n"
                    "allow_anonymous true\npersistence false\nmax_queued_messages 0\nmax_queued_bytes 0\n"
                    "max_inflight_messages 100\n")
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    return proc, port


async def publish(port: int, items, rate: float | None = None, inflight: int = 200) -> int:
    """Publish every (topic, body) QoS 1, at ``rate`` per second or as fast as acknowledged."""
    sent = 0
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"bench-pub-{uuid.uuid4().hex[:6]}",
                              max_inflight_messages=inflight) as client:
        client.pending_calls_threshold = inflight * 2
        pending: set[asyncio.Task] = set()
        t0 = time.monotonic()
        for topic, body in items:
            if rate:
                due = t0 + sent / rate
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            pending.add(asyncio.ensure_future(client.publish(topic, body, qos=1)))
            sent += 1
            if len(pending) >= inflight:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        if pending:
            await asyncio.wait(pending)
    return sent


async def subscribe_once(port: int, client_id: str, filters: list[str]) -> None:
    """Register a persistent session, so the broker queues for it while it is away."""
    async with aiomqtt.Client("127.0.0.1", port, identifier=client_id, clean_session=False) as c:
        for f in filters:
            await c.subscribe(f, qos=1)


def zone_yaml(work: Path, url: str, port: int, http: int) -> Path:
    path = work / "zone.yaml"
    path.write_text(f"zone: {{id: bench, name: 压测园区}}\ndatabase: {{url: '{url}'}}\n"
                    f"mqtt: {{host: 127.0.0.1, port: {port}, client_id: central-bench, prefixes: ['gatectl/+']}}\n"
                    f"http: {{listen: '127.0.0.1:{http}'}}\ningest: {{gap_grace_s: 2, replay_timeout_s: 20}}\n")
    return path


def count(url: str, table: str = "events") -> int:
    with psycopg.connect(url) as c:
        return c.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


async def until_count(url: str, n: int, table: str, timeout: float, proc: subprocess.Popen | None = None,
                      rss: list | None = None) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if rss is not None and proc is not None:
            rss.append(proc_rss_mb(proc.pid)[0])
        try:
            if count(url, table) >= n:
                return time.monotonic() - t0
        except psycopg.Error:
            pass
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{table}: fewer than {n} rows after {timeout} s")


RAW = r'''
import asyncio, json, sys, psycopg, aiomqtt
port, url = int(sys.argv[1]), sys.argv[2]
async def main():
    conn = psycopg.connect(url, autocommit=True)
    conn.execute("CREATE TABLE IF NOT EXISTS raw_events (event_id uuid PRIMARY KEY, ts timestamptz, site_id text,"
                 " lane_id text, seq bigint, type text, body jsonb)")
    q = asyncio.Queue(20000)
    async def store():
        while True:
            batch = [await q.get()]
            while len(batch) < 2000 and not q.empty():
                batch.append(q.get_nowait())
            def write():
                with conn.transaction(), conn.cursor() as cur:
                    with cur.copy("COPY raw_events FROM STDIN") as cp:
                        for row in batch:
                            cp.write_row(row)
            await asyncio.get_running_loop().run_in_executor(None, write)
    asyncio.create_task(store())
    async with aiomqtt.Client("127.0.0.1", port, identifier="raw-bench", clean_session=False) as c:
        await c.subscribe("gatectl/+/lanes/+/events", qos=1)
        async for m in c.messages:
            text = m.payload.decode()
            b = json.loads(text)
            await q.put((b["event_id"], b["ts"], b["site_id"], b["lane_id"], b["seq"], b["type"], text))
asyncio.run(main())
'''


async def capacity(work: Path, pg: TempPostgres, port: int, n: int) -> dict:
    """Backlog of ``n`` queued for each consumer; time each draining it."""
    lanes = Lanes()
    items = [lanes.next() for _ in range(n)]
    out = {}
    for name in ("raw", "gatectl"):
        url = pg.url.rsplit("/", 1)[0] + f"/cap_{name}"
        with psycopg.connect(pg.url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as c:
            c.execute(f"CREATE DATABASE cap_{name}")
        if name == "raw":
            cmd = [sys.executable, "-c", RAW, str(port), url]
            client_id, table = "raw-bench", "raw_events"
        else:
            cmd = [sys.executable, "-m", "gatectl", "central", "--config", str(zone_yaml(work, url, port, free_port()))]
            client_id, table = "central-bench", "events"
        await subscribe_once(port, client_id, ["gatectl/+/lanes/+/events"])
        await publish(port, items)
        log = open(work / f"{name}.log", "ab")
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
        rss: list[float] = []
        try:
            seconds = await until_count(url, n, table, 900, proc, rss)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        out[name] = {"events": n, "seconds": seconds, "per_s": n / seconds, "rss_mb_max": max(rss or [0])}
    return out


async def sustained(work: Path, pg: TempPostgres, port: int, rate: float, seconds: float) -> dict:
    url = pg.url.rsplit("/", 1)[0] + "/sustained"
    with psycopg.connect(pg.url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as c:
        c.execute("CREATE DATABASE sustained")
    log = open(work / "sustained.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "gatectl", "central", "--config",
                             str(zone_yaml(work, url, port, free_port()))], stdout=log, stderr=log,
                            start_new_session=True)
    await asyncio.sleep(3.0)
    lanes = Lanes()
    n = int(rate * seconds)
    rss: list[float] = []
    sampler = asyncio.create_task(_sample(proc, rss))
    t0 = time.monotonic()
    await publish(port, (lanes.next() for _ in range(n)), rate=rate)
    sent_s = time.monotonic() - t0
    await until_count(url, n, "events", 120)
    sampler.cancel()
    with psycopg.connect(url) as c:
        lags = [r[0] for r in c.execute("SELECT extract(epoch FROM stored_at - ts) FROM events")]
        contiguous = c.execute("SELECT sum(contiguous_seq), sum(max_seq) FROM lanes").fetchone()
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    lags = [float(x) for x in lags]
    return {"events": n, "rate": n / sent_s, "lag_p50_s": pct(lags, 50), "lag_p99_s": pct(lags, 99),
            "lag_max_s": max(lags), "rss_mb_max": max(rss or [0]), "contiguous": [int(x) for x in contiguous]}


async def _sample(proc: subprocess.Popen, into: list[float]) -> None:
    while True:
        try:
            into.append(proc_rss_mb(proc.pid)[0])
        except OSError:
            return
        await asyncio.sleep(0.5)


async def backfill(work: Path, pg: TempPostgres, port: int, m: int) -> dict:
    """A lane PC journal of ``m`` events (10 lanes), never published live, replayed on demand."""
    journal = work / "lanepc.db"
    db = sqlite3.connect(journal)
    db.execute("CREATE TABLE events (lane_id TEXT NOT NULL, seq INTEGER NOT NULL, event_id TEXT NOT NULL UNIQUE,"
               " type TEXT NOT NULL, ts TEXT NOT NULL, body TEXT NOT NULL, PRIMARY KEY (lane_id, seq)) WITHOUT ROWID")
    lanes = [f"L{n:02d}" for n in range(10)]
    per_lane = m // len(lanes)
    seqs = dict.fromkeys(lanes, 0)
    rows = []
    k = 0
    for lane in lanes:
        todo: list = []
        for _ in range(per_lane):
            if not todo:
                k += 1
                todo = passage_events(k)
            type_, data = todo.pop(0)
            seqs[lane] += 1
            body = {"event_id": str(uuid.uuid4()), "seq": seqs[lane], "site_id": "old-pc", "lane_id": lane,
                    "type": type_, "ts": datetime.now(TZ).isoformat(), **data}
            rows.append((lane, seqs[lane], body["event_id"], type_, body["ts"], json.dumps(body, ensure_ascii=False)))
            if len(rows) >= 50_000:
                db.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)", rows)
                rows = []
    db.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)", rows)
    db.commit()
    db.close()
    total = per_lane * len(lanes)
    lane_pc = subprocess.Popen([sys.executable, "-c", LANE_PC, str(port), str(journal), json.dumps(seqs)],
                               stdout=open(work / "lanepc.log", "ab"), stderr=subprocess.STDOUT,
                               start_new_session=True)
    await asyncio.sleep(1.0)
    url = pg.url.rsplit("/", 1)[0] + "/backfill"
    with psycopg.connect(pg.url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as c:
        c.execute("CREATE DATABASE backfill")
    log = open(work / "backfill.log", "ab")
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "gatectl", "central", "--config",
                             str(zone_yaml(work, url, port, free_port()))], stdout=log, stderr=log,
                            start_new_session=True)
    rss: list[float] = []
    try:
        await until_count(url, total, "events", 3600, proc, rss)
        seconds = time.monotonic() - t0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        lane_pc.send_signal(signal.SIGTERM)
        lane_pc.wait(10)
    return {"events": total, "seconds": seconds, "per_s": total / seconds, "rss_mb_max": max(rss or [0])}


#: A lane PC as far as the central can tell: retained status and lane states with
#: ``last_seq``, and ``cmd/replay`` answered by the lane's own Replayer over its journal.
LANE_PC = r'''
import asyncio, json, sys, aiomqtt
from gatectl.replay import Replayer
port, journal, seqs = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
prefix = "gatectl/old-pc"
async def main():
    r = Replayer(journal, list(seqs), lambda lane: f"{prefix}/lanes/{lane}/events")
    async with aiomqtt.Client("127.0.0.1", port, identifier="old-pc", max_inflight_messages=100) as c:
        c.pending_calls_threshold = 2000
        await c.subscribe(f"{prefix}/cmd/replay", qos=1)
        await c.publish(f"{prefix}/status", b"online", qos=1, retain=True)
        for lane, last in seqs.items():
            state = {"lane_id": lane, "site_id": "old-pc", "state": "idle", "last_seq": last}
            await c.publish(f"{prefix}/lanes/{lane}/state", json.dumps(state).encode(), qos=1, retain=True)
        task = asyncio.create_task(r.run(lambda t, b: c.publish(t, b, qos=1)))
        async for m in c.messages:
            r.submit(m.payload)
asyncio.run(main())
'''


async def main_async(args) -> Report:
    report = Report("central", "7. zone central ingest (bench/central_ingest.py)")
    if MOSQUITTO is None:
        report.pending = "mosquitto is not installed"
        return report
    quick = args.quick
    with scratch(args.workdir, "central") as work:
        broker, port = start_broker(work)
        pg = TempPostgres(fsync=True)
        pg.start()
        try:
            n = 100_000 if quick else 300_000
            cap = await capacity(work, pg, port, n)
            sus = await sustained(work, pg, port, 5000.0, 20.0 if quick else 60.0)
            bf = await backfill(work, pg, port, 100_000 if quick else 1_000_000)
        finally:
            pg.cleanup()
            broker.kill()
    g, raw = cap["gatectl"], cap["raw"]
    ratio = g["per_s"] / raw["per_s"]
    report.rows += [
        Row("7 central", f"ingest capacity, backlog of {n:,} events (200 lanes)", "events/s", g["per_s"],
            raw["per_s"], ">= 5000/s and >= 0.5x raw", g["per_s"] >= 5000 and ratio >= 0.5,
            f"ratio {ratio:.2f}; raw = aiomqtt + json + COPY, nothing else"),
        Row("7 central", f"lag journaled -> committed at {sus['rate']:.0f} events/s, p99", "s", sus["lag_p99_s"],
            None, "<= 1 s", sus["lag_p99_s"] <= 1.0, f"p50 {sus['lag_p50_s']:.3f} s, max {sus['lag_max_s']:.3f} s"),
        Row("7 central", f"backfill of {bf['events']:,} events by cmd/replay", "s", bf["seconds"], None, "timed",
            None, f"{bf['per_s']:.0f} events/s"),
        Row("7 central", "central RSS, max over the runs", "MB",
            max(g["rss_mb_max"], sus["rss_mb_max"], bf["rss_mb_max"]), None, "bounded", None,
            f"capacity {g['rss_mb_max']:.0f}, sustained {sus['rss_mb_max']:.0f}, backfill {bf['rss_mb_max']:.0f}"),
    ]
    report.details = {"capacity": cap, "sustained": sus, "backfill": bf}
    return report


def main() -> None:
    args = bench_args(__doc__.splitlines()[0]).parse_args()
    report = asyncio.run(main_async(args))
    report.write(args.json)
    if not args.json:
        return
    for r in report.rows:
        print(f"{r.metric}: {r.gatectl:.3f} {r.unit} (baseline {r.baseline}) {r.note}")


if __name__ == "__main__":
    main()
