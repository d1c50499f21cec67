"""Bench 1: decision latency, the authority's answer leaving it -> the open coil switched on.

The simulators run in this process: ``SimulatedSite`` with one bonded lane (IO module with
a barrier, card reader and weighbridge on ptys, the http-json authority), its vehicles
driven the way drivers do. Against them, in batches that alternate:

- the daemon: ``gatectl run --config`` in its own process, as an operator starts it;
  released vehicles drive through the lane one after another;
- the baseline: a minimal hand-written asyncio script in its own process doing the same
  I/O on the same simulators: POST the pass request with aiohttp, commit the
  authorisation row to SQLite (WAL, ``synchronous=FULL``, one transaction), write the
  open coil with pymodbus (then pulse it off, and lower the boom for the next one).

Both are timed at the same two points, both on ``time.monotonic()`` in this process: the
authority simulator notes when the answer was handed to the socket
(:class:`bench.common.TimedAuthority`), the IO module simulator when it switched the coil
on (``coil_writes``). The first passage of every batch (a fresh process, fresh
connections) is left out on both sides. Percentiles are over all samples of a side.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from bench.common import (
    Child,
    Report,
    TimedAuthority,
    bench_args,
    daemon,
    decision_latencies,
    median,
    pct,
    ratio_row,
    scratch,
    until,
    wait_http_ok,
)
from simulators.site import FLEET, SCRIPT, LaneSpec, SimulatedSite, free_tcp_port

LANE = LaneSpec("B1-IN", "保税货物进区1号", "bonded", "in", "K001")
RELEASED = [v for v in FLEET if SCRIPT[v.card] == "release"]
TZ = ZoneInfo("Asia/Shanghai")
PULSE_S = 0.3  # the config's barrier.pulse_ms


def make_sim(workdir: Path, specs: list[LaneSpec], **kw) -> SimulatedSite:
    """A ``SimulatedSite`` whose authority notes when each answer left it."""
    sim = SimulatedSite(workdir, specs, **kw)
    sim.authority = TimedAuthority("127.0.0.1", 0)
    return sim


def write_config(sim: SimulatedSite, workdir: Path) -> tuple[Path, str]:
    """The site config for ``gatectl run`` (journal in ``workdir``) and the API's base URL."""
    listen = f"127.0.0.1:{free_tcp_port()}"
    path = sim.write_config(workdir / "site.yaml", journal_path=str(workdir / "gatectl.db"), api_listen=listen)
    return path, f"http://{listen}"


async def start_daemon(config: Path, api: str, log: Path) -> Child:
    d = daemon(config, log)
    try:
        await wait_http_ok(api + "/api/v1/health", d)
    except BaseException:
        d.stop()
        raise
    return d


async def daemon_batch(sim: SimulatedSite, config: Path, api: str, n: int, log: Path) -> list[float]:
    """``n`` released vehicles through a freshly started daemon; latencies of all but the first."""
    lane = sim.lanes[0]
    d = await start_daemon(config, api, log)
    try:
        t0 = time.monotonic()
        for i in range(n):
            outcome = await lane.drive(RELEASED[i % len(RELEASED)])
            if outcome != "passed":
                raise RuntimeError(f"a released vehicle {outcome}:\n{d.tail()}")
        await until(lambda: lane.barrier.position == "down", 10, what="barrier down")
        t1 = time.monotonic()
    finally:
        d.stop()
    return decision_latencies(sim.authority.sent, sim.io.coil_writes, {lane.id: lane.open_coil}, t0, t1, skip_first=1)


async def baseline_batch(sim: SimulatedSite, db_path: Path, n: int, log: Path) -> list[float]:
    """The hand-written script, in its own process, ``n`` times; latencies of all but the first."""
    lane = sim.lanes[0]
    args = {
        "url": sim.authority.url + "gate/v1/pass-requests", "host": sim.io.host, "port": sim.io.port,
        "unit": sim.io.unit, "open_coil": lane.open_coil, "close_coil": lane.close_coil, "lane_id": lane.id,
        "n": n, "db": str(db_path), "travel_s": sim.travel_s,
    }
    t0 = time.monotonic()
    child = Child([sys.executable, "-m", "bench.decision", "--baseline-child", json.dumps(args)], log)
    try:
        await until(lambda: not child.alive(), 30 + n * 5, step=0.05, what="baseline script done")
        if child.proc.returncode != 0:
            raise RuntimeError(f"baseline script failed:\n{child.tail()}")
    finally:
        child.stop()
    t1 = time.monotonic()
    return decision_latencies(sim.authority.sent, sim.io.coil_writes, {lane.id: lane.open_coil}, t0, t1, skip_first=1)


async def baseline_script(a: dict) -> None:
    """The minimal hand-written asyncio script (runs in the baseline's own process)."""
    import aiohttp
    from pymodbus.client import AsyncModbusTcpClient

    headers = {"Content-Type": "application/json; charset=utf-8", "Accept": "application/json"}
    db = sqlite3.connect(a["db"], isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(
        "CREATE TABLE IF NOT EXISTS authorisations (kind TEXT NOT NULL, auth_id TEXT NOT NULL,"
        " lane_id TEXT NOT NULL, passage_id TEXT, committed_at TEXT NOT NULL, PRIMARY KEY (kind, auth_id))"
    )
    client = AsyncModbusTcpClient(a["host"], port=a["port"], reconnect_delay=0, retries=0, timeout=2.0)
    if not await client.connect():
        raise SystemExit("cannot reach the IO module")
    unit = a["unit"]

    async def pulse(coil: int) -> None:
        await client.write_coil(coil, True, device_id=unit)
        await asyncio.sleep(PULSE_S)
        await client.write_coil(coil, False, device_id=unit)

    try:
        async with aiohttp.ClientSession() as http:
            for i in range(a["n"]):
                v = RELEASED[i % len(RELEASED)]
                body = {
                    "request_id": str(uuid.uuid4()), "site_id": "demo-site", "lane_id": a["lane_id"],
                    "channel_no": LANE.channel_no, "direction": "I", "lane_kind": LANE.kind, "card_no": v.card,
                    "plate": None, "gross_weight_kg": float(v.gross_kg), "captured_at": datetime.now(TZ).isoformat(),
                }
                async with http.post(a["url"], data=json.dumps(body).encode(), headers=headers) as r:
                    answer = json.loads(await r.read())
                if answer["decision"] != "release":
                    raise SystemExit(f"expected a release, got {answer}")
                db.execute("BEGIN IMMEDIATE")
                db.execute(
                    "INSERT INTO authorisations VALUES (?, ?, ?, ?, ?)",
                    ("release_instruction", answer["instruction_id"], a["lane_id"], None, datetime.now(TZ).isoformat()),
                )
                db.execute("COMMIT")
                await pulse(a["open_coil"])  # the latency ends as this reaches the module
                await asyncio.sleep(a["travel_s"] * 1.5)
                await pulse(a["close_coil"])
                await asyncio.sleep(a["travel_s"] * 1.5 + 0.5)
    finally:
        client.close()
        db.close()


async def run(quick: bool, workdir: Path) -> Report:
    rounds, per_batch = (3, 11) if quick else (10, 21)  # the first of each batch is left out
    sim = make_sim(workdir / "sim", [LANE], travel_s=0.2, poll_ms=50, speed=10.0, weigh_interval_s=0.05)
    await sim.start()
    try:
        config, api = write_config(sim, workdir)
        got: dict[str, list[float]] = {"gatectl": [], "baseline": []}
        batch_p50: dict[str, list[float]] = {"gatectl": [], "baseline": []}
        for r in range(rounds):
            # Alternate which side goes first, so neither always follows the other.
            for side in ("gatectl", "baseline") if r % 2 == 0 else ("baseline", "gatectl"):
                if side == "gatectl":
                    lat = await daemon_batch(sim, config, api, per_batch, workdir / "daemon.log")
                else:
                    lat = await baseline_batch(sim, workdir / "baseline.db", per_batch, workdir / "baseline.log")
                got[side] += lat
                batch_p50[side].append(round(median(lat) * 1000, 3))
    finally:
        await sim.stop()
    ours, base = got["gatectl"], got["baseline"]
    rep = Report("decision", "1. decision latency (answer sent -> open coil on)")
    rep.rows.append(ratio_row("1 decision", "p50 latency", "ms", pct(ours, 50) * 1000, pct(base, 50) * 1000, 1.3))
    rep.rows.append(ratio_row("1 decision", "p99 latency", "ms", pct(ours, 99) * 1000, pct(base, 99) * 1000, 2.0))
    rep.details = {
        "samples": {"gatectl": len(ours), "baseline": len(base)},
        "rounds": rounds,
        "batch_p50_ms": batch_p50,
        "p90_ms": {"gatectl": pct(ours, 90) * 1000, "baseline": pct(base, 90) * 1000},
        "max_ms": {"gatectl": max(ours) * 1000, "baseline": max(base) * 1000},
    }
    rep.notes.append(
        f"{len(ours)} daemon / {len(base)} baseline passages, {rounds} alternating rounds; daemon and baseline "
        "each in their own process, the simulators in the bench process"
    )
    return rep


def main() -> None:
    p = bench_args(__doc__.splitlines()[0])
    p.add_argument("--baseline-child", help=argparse_hidden())
    args = p.parse_args()
    if args.baseline_child:
        asyncio.run(baseline_script(json.loads(args.baseline_child)))
        return
    with scratch(args.workdir, "decision") as wd:
        rep = asyncio.run(run(args.quick, wd))
    rep.write(args.json)


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
