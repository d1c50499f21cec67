"""Bench 7: the zone central's ingest into PostgreSQL, against a raw script.

Setting: one Mosquitto (``/usr/sbin/mosquitto``, no persistence, queues big enough for
the backlogs), one PostgreSQL (``TempPostgres``: Debian's binaries, fsync on, defaults
otherwise), the central as a ``gatectl central`` process. The load is realistic lane
event streams: 200 lanes (20 lane PCs of 10 lanes), each journaling passages (loop
changes, opened, card, weight, request, decision, authorisation, lift, closed), every
event with its uuid, per-lane seq and ``ts`` stamped when it is published.

1. **Capacity** (events/s): a backlog of N events is published to the broker while the
   consumer is away (its persistent session queues them); the consumer is started and
   the rate is taken from its first committed row to its N-th (start-up, imports and
   connecting, left out on both sides), with the consumer's CPU time per event over the
   same window. The baseline is a raw script doing the same I/O with the same driver and
   nothing else: aiomqtt, the same subscription, ``json.loads``, psycopg ``COPY`` of up to
   2 000 events per transaction into a table of the same columns with a primary key on
   the event id, no dedup, completeness, projection or alarms. Raw and central alternate,
   ``rounds`` times each (the machine is shared: the spread is reported).
   Target: >= 5 000 events/s and >= 0.5x the raw script.
2. **Sustained** 5 000 events/s for a while, published at that rate by 200 lanes'
   streams: lag from the event's ``ts`` (stamped by the generator as the lane journals it,
   just before publishing) to the commit of the transaction that stored its row
   (PostgreSQL's ``track_commit_timestamp``: ``pg_xact_commit_timestamp(xmin)``), p50 and
   p99 (target <= 1 s), for the central and for the raw script in the same run; the
   central's RSS.
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
import statistics
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
    request_id = str(uuid.uuid4())
    return [
        ("loop.changed", {"loop": "arrival_loop", "occupied": True}),
        ("passage.opened", {"passage_id": pid}),
        ("card.read", {"passage_id": pid, "card": card}),
        ("weight.stable", {"passage_id": pid, "gross_weight_kg": 31250.0}),
        ("release.requested", {"passage_id": pid, "request_id": request_id, "card": card,
                               "gross_weight_kg": 31250.0}),
        ("release.decided", {"passage_id": pid, "request_id": request_id, "source": "authority",
                             "decision": "release",
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
    """Register a fresh persistent session, so the broker queues for it while it is away
    (a clean connection first drops what an earlier run left in it)."""
    async with aiomqtt.Client("127.0.0.1", port, identifier=client_id, clean_session=True):
        pass
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
        # pg_class.reltuples would lag; an index-only count of a few 100 k rows is cheap.
        return c.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def until_count(url: str, n: int, table: str, timeout: float, proc: subprocess.Popen | None = None,
                      rss: list | None = None, window: dict | None = None) -> float:
    """Seconds until ``n`` rows; ``window`` gets the first poll that saw rows (time, rows,
    consumer CPU) and the last, for the rate and CPU per event without start-up."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if rss is not None and proc is not None:
            rss.append(proc_rss_mb(proc.pid)[0])
        try:
            rows = count(url, table)
        except psycopg.Error:
            rows = 0
        if window is not None and rows > 0:
            point = (time.monotonic(), rows, proc_cpu_s(proc.pid) if proc is not None else 0.0)
            window.setdefault("first", point)
            window["last"] = point
        if rows >= n:
            return time.monotonic() - t0
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the consumer exited ({proc.returncode}) with {rows} rows")
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{table}: fewer than {n} rows after {timeout} s")


def central_cmd(work: Path, url: str, port: int, src: str | None) -> tuple[list[str], dict]:
    """``gatectl central`` from this tree, or from ``src`` (another checkout: before/after),
    behind a wrapper that writes ``gatectl.ready`` once its health says the database and
    the broker are reachable (the subscriptions are made right after connecting)."""
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = str(Path(src).resolve())
    http = free_port()
    return [sys.executable, "-c", CENTRAL, str(zone_yaml(work, url, port, http)), str(http),
            str(work / "gatectl.ready")], env


#: ``gatectl central`` in this process (so its pid, CPU and RSS are the central's), with a
#: thread that writes the ready file once ``/api/v1/health`` answers 200.
CENTRAL = r'''
import sys, threading, time, urllib.request
config, http, ready = sys.argv[1], sys.argv[2], sys.argv[3]
def watch():
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http}/api/v1/health", timeout=2) as r:
                if r.status == 200:
                    time.sleep(0.5)  # subscriptions follow the connection
                    open(ready, "w").close()
                    return
        except OSError:
            pass
        time.sleep(0.2)
threading.Thread(target=watch, daemon=True).start()
from gatectl.cli import main
sys.argv = ["gatectl", "central", "--config", config]
sys.exit(main())
'''


def create_db(pg: TempPostgres, name: str) -> str:
    with psycopg.connect(pg.url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {name}")
        c.execute(f"CREATE DATABASE {name}")
    return pg.url.rsplit("/", 1)[0] + "/" + name


def commit_lags(url: str, table: str) -> list[float]:
    """Seconds from each row's ``ts`` (stamped by the generator) to its commit."""
    with psycopg.connect(url) as c:
        return [float(r[0]) for r in c.execute(
            f"SELECT extract(epoch FROM pg_xact_commit_timestamp(xmin) - ts) FROM {table}")]


RAW = r'''
import asyncio, json, sys, psycopg, aiomqtt
port, url, ready = int(sys.argv[1]), sys.argv[2], sys.argv[3]
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
        open(ready, "w").close()
        async for m in c.messages:
            text = m.payload.decode()
            b = json.loads(text)
            await q.put((b["event_id"], b["ts"], b["site_id"], b["lane_id"], b["seq"], b["type"], text))
asyncio.run(main())
'''


def consumer(name: str, work: Path, url: str, port: int, src: str | None) -> tuple[subprocess.Popen, str, str]:
    """Start the raw script or the central; (process, client id, table)."""
    log = open(work / f"{name}.log", "ab")
    (work / f"{name}.ready").unlink(missing_ok=True)
    if name == "raw":
        cmd, env, client_id, table = ([sys.executable, "-c", RAW, str(port), url, str(work / "raw.ready")], None,
                                      "raw-bench", "raw_events")
    else:
        cmd, env = central_cmd(work, url, port, src)
        client_id, table = "central-bench", "events"
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True, env=env, cwd=work)
    return proc, client_id, table


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


async def capacity(work: Path, pg: TempPostgres, port: int, n: int, rounds: int, src: str | None) -> dict:
    """A backlog of ``n`` queued for each consumer in turn (raw, central, raw, ...); each
    drain's rate and CPU per event from its first committed row to its last."""
    out: dict[str, list] = {"raw": [], "gatectl": []}
    for r in range(rounds):
        lanes = Lanes()
        items = [lanes.next() for _ in range(n)]  # the same streams for both, new ids each round
        for name in ("raw", "gatectl"):
            url = create_db(pg, f"cap_{name}")
            client_id = "raw-bench" if name == "raw" else "central-bench"
            await subscribe_once(port, client_id, ["gatectl/+/lanes/+/events"])
            await publish(port, items)
            proc, _, table = consumer(name, work, url, port, src)
            rss: list[float] = []
            window: dict = {}
            try:
                seconds = await until_count(url, n, table, 900, proc, rss, window)
                cpu_end = proc_cpu_s(proc.pid)
            finally:
                stop(proc)
            (t1, rows1, cpu1), (t2, rows2, _) = window["first"], window["last"]
            rate = (rows2 - rows1) / (t2 - t1) if t2 > t1 else float("nan")
            out[name].append({"round": r + 1, "events": n, "seconds": seconds, "per_s": rate,
                              "cpu_us_per_event": (cpu_end - cpu1) / max(rows2 - rows1, 1) * 1e6,
                              "rss_mb_max": max(rss or [0]), "load": os.getloadavg()[0]})
            print(f"capacity {name} round {r + 1}: {rate:.0f} events/s, "
                  f"{out[name][-1]['cpu_us_per_event']:.0f} us CPU/event, load {os.getloadavg()[0]:.1f}",
                  file=sys.stderr, flush=True)
    return out


async def sustained(work: Path, pg: TempPostgres, port: int, rate: float, seconds: float, rounds: int,
                    src: str | None) -> dict:
    """``rate`` events/s for ``seconds`` into each consumer in turn; lag ts -> commit."""
    out: dict[str, list] = {"raw": [], "gatectl": []}
    for r in range(rounds):
        for name in ("raw", "gatectl"):
            url = create_db(pg, f"sus_{name}")
            await subscribe_once(port, "raw-bench" if name == "raw" else "central-bench", ["gatectl/+/lanes/+/events"])
            proc, _, table = consumer(name, work, url, port, src)
            try:
                await until_subscribed(port, name, proc, work)
                lanes = Lanes()
                n = int(rate * seconds)
                rss: list[float] = []
                sampler = asyncio.create_task(_sample(proc, rss))
                t0 = time.monotonic()
                await publish(port, (lanes.next() for _ in range(n)), rate=rate)
                sent_s = time.monotonic() - t0
                await until_count(url, n, table, 300, proc)
                sampler.cancel()
                lags = commit_lags(url, table)
                contiguous = None
                if name == "gatectl":
                    with psycopg.connect(url) as c:
                        contiguous = [int(x) for x in c.execute(
                            "SELECT sum(contiguous_seq), sum(max_seq) FROM lanes").fetchone()]
            finally:
                stop(proc)
            out[name].append({"round": r + 1, "events": n, "rate": n / sent_s, "lag_p50_s": pct(lags, 50),
                              "lag_p99_s": pct(lags, 99), "lag_max_s": max(lags), "rss_mb_max": max(rss or [0]),
                              "contiguous": contiguous, "load": os.getloadavg()[0]})
            d = out[name][-1]
            print(f"sustained {name} round {r + 1}: {d['rate']:.0f} events/s published, lag p50 "
                  f"{d['lag_p50_s']:.3f} s p99 {d['lag_p99_s']:.3f} s, load {d['load']:.1f}",
                  file=sys.stderr, flush=True)
    return out


async def until_subscribed(port: int, name: str, proc: subprocess.Popen, work: Path, timeout: float = 120) -> None:
    """Until the consumer is connected and subscribed (start-up is not part of the lag)."""
    ready = work / f"{name}.ready"
    t0 = time.monotonic()
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() - t0 > timeout:
            raise RuntimeError(f"{name} did not subscribe (see {work / (name + '.log')})")
        await asyncio.sleep(0.1)
    ready.unlink()


async def _sample(proc: subprocess.Popen, into: list[float]) -> None:
    while True:
        try:
            into.append(proc_rss_mb(proc.pid)[0])
        except OSError:
            return
        await asyncio.sleep(0.5)


async def backfill(work: Path, pg: TempPostgres, port: int, m: int, src: str | None) -> dict:
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
    url = create_db(pg, "backfill")
    t0 = time.monotonic()
    proc, _, _ = consumer("gatectl", work, url, port, src)
    rss: list[float] = []
    try:
        await until_count(url, total, "events", 3600, proc, rss)
        seconds = time.monotonic() - t0
        with psycopg.connect(url) as c:
            contiguous, passages = c.execute(
                "SELECT (SELECT sum(contiguous_seq) FROM lanes), (SELECT count(*) FROM passages)").fetchone()
    finally:
        stop(proc)
        lane_pc.send_signal(signal.SIGTERM)
        lane_pc.wait(10)
    print(f"backfill: {total} events in {seconds:.1f} s", file=sys.stderr, flush=True)
    return {"events": total, "seconds": seconds, "per_s": total / seconds, "rss_mb_max": max(rss or [0]),
            "contiguous": int(contiguous), "passages": int(passages)}


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


def _spread(values: list[float], fmt: str = "{:.0f}") -> str:
    return " / ".join(fmt.format(v) for v in values)


async def main_async(args) -> Report:
    report = Report("central", "7. zone central ingest (bench/central_ingest.py)")
    if MOSQUITTO is None:
        report.pending = "mosquitto is not installed"
        return report
    quick = args.quick
    rounds = args.rounds or (2 if quick else 3)
    n = args.events or (100_000 if quick else 300_000)
    m = args.backfill_events or (100_000 if quick else 1_000_000)
    phases = set((args.phases or "capacity,sustained,backfill").split(","))
    cap = sus = bf = None
    with scratch(args.workdir, "central") as work:
        broker, port = start_broker(work)
        pg = TempPostgres(fsync=True, settings={"track_commit_timestamp": "on"})
        pg.start()
        try:
            if "capacity" in phases:
                cap = await capacity(work, pg, port, n, rounds, args.src)
            if "sustained" in phases:
                sus = await sustained(work, pg, port, args.rate, 20.0 if quick else 60.0, rounds, args.src)
            if "backfill" in phases:
                bf = await backfill(work, pg, port, m, args.src)
        finally:
            pg.cleanup()
            broker.kill()
    rss = []
    if cap:
        g = [r["per_s"] for r in cap["gatectl"]]
        raw = [r["per_s"] for r in cap["raw"]]
        ratios = [a / b for a, b in zip(g, raw)]
        med_g, med_raw, med_ratio = statistics.median(g), statistics.median(raw), statistics.median(ratios)
        cpu_g = [r["cpu_us_per_event"] for r in cap["gatectl"]]
        cpu_raw = [r["cpu_us_per_event"] for r in cap["raw"]]
        report.rows += [
            Row("7 central", f"ingest capacity, backlog of {n:,} events (200 lanes), median of {rounds}",
                "events/s", med_g, med_raw, ">= 5000/s and >= 0.5x raw", med_g >= 5000 and med_ratio >= 0.5,
                f"per round central {_spread(g)}, raw {_spread(raw)}, ratio {_spread(ratios, '{:.2f}')}"),
            Row("7 central", "consumer CPU per event while draining (median)", "us", statistics.median(cpu_g),
                statistics.median(cpu_raw), "", None, f"central {_spread(cpu_g)}, raw {_spread(cpu_raw)}"),
        ]
        rss.append(("capacity", max(r["rss_mb_max"] for r in cap["gatectl"])))
    if sus:
        p99 = [r["lag_p99_s"] for r in sus["gatectl"]]
        p50 = [r["lag_p50_s"] for r in sus["gatectl"]]
        raw99 = [r["lag_p99_s"] for r in sus["raw"]]
        rate = statistics.median(r["rate"] for r in sus["gatectl"])
        report.rows += [
            Row("7 central", f"lag ts -> commit at {rate:.0f} events/s, p99 (median of {rounds})", "s",
                statistics.median(p99), statistics.median(raw99), "<= 1 s", max(p99) <= 1.0,
                f"p99 per round {_spread(p99, '{:.3f}')} (raw {_spread(raw99, '{:.3f}')}); "
                f"p50 {_spread(p50, '{:.3f}')}"),
        ]
        rss.append(("sustained", max(r["rss_mb_max"] for r in sus["gatectl"])))
    if bf:
        report.rows.append(Row("7 central", f"backfill of {bf['events']:,} events by cmd/replay", "s", bf["seconds"],
                               None, "timed", None, f"{bf['per_s']:.0f} events/s"))
        rss.append(("backfill", bf["rss_mb_max"]))
    if rss:
        report.rows.append(Row("7 central", "central RSS, max over the runs", "MB", max(v for _, v in rss), None,
                               "bounded", None, ", ".join(f"{k} {v:.0f}" for k, v in rss)))
    report.details = {"capacity": cap, "sustained": sus, "backfill": bf, "src": args.src}
    return report


def main() -> None:
    p = bench_args(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, help="runs of each measurement (default 2 quick, 3 full)")
    p.add_argument("--events", type=int, help="capacity backlog (default 100 000 quick, 300 000 full)")
    p.add_argument("--backfill-events", type=int, help="backfill size (default 100 000 quick, 1 000 000 full)")
    p.add_argument("--rate", type=float, default=5000.0, help="sustained publishing rate, events/s")
    p.add_argument("--phases", help="capacity,sustained,backfill (default: all)")
    p.add_argument("--src", help="run the central from this source tree (a checkout of another commit)")
    args = p.parse_args()
    report = asyncio.run(main_async(args))
    report.write(args.json)
    if not args.json:
        return
    for r in report.rows:
        print(f"{r.metric}: {r.gatectl:.3f} {r.unit} (baseline {r.baseline}) {r.note}")


if __name__ == "__main__":
    main()
