"""Bench 1: decision latency, the authority's answer leaving it -> the open coil switched on.

Measured the way an outsider measures it, on the wire (``bench/wire.py``):

- the release authority is a plain HTTP/1.0 server (``Content-Length`` set, connection
  closed after the answer); the answer's time is taken right after the body is written;
- the IO module is a raw Modbus TCP server (functions 2 and 5) with a barrier that
  moves, timing each coil write when its PDU arrives;
- the lane has an stx-hex-xor card reader and an xk3190 indicator streaming
  continuously (every 50 ms) on ptys; IO polled every 50 ms;
- the daemon is ``gatectl run --config`` in its own process, stderr to a file.

Against it, in batches that alternate, the **baseline**: the simplest honest script doing
the same I/O in its own process: a new connection per request, the answer read to the
close, one SQLite row committed (WAL, ``synchronous=FULL``), the open coil written with
pymodbus (then pulsed off, and the boom lowered for the next one).

A third side, without a target, is the same script with its commit handed to a thread of
its own and awaited (``WRITER_THREAD``): the least the design the daemon follows (the
journal written off the event loop) costs, before any of the lane's work. Its rows say
how much of the daemon's ratio is that design and how much is the daemon.

Both sides are timed at the same two points, both on ``time.monotonic()`` in this
process. The first passage of every batch (a fresh process, fresh connections) is left
out on both sides. Percentiles are over all samples of a side. The daemon's own figure
(``gatectl_decision_latency_seconds``, the answer in at the runtime -> the coil write
acknowledged) is read from ``/metrics`` at the end of each batch, for comparison.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import queue
import re
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from bench.common import (
    LANE_NICE,
    Child,
    Report,
    bench_args,
    cpu_ticks,
    daemon,
    decision_latencies,
    median,
    pct,
    ratio_row,
    sched_shares,
    scratch,
    steal_share,
    thread_sched,
    until,
    wait_http_ok,
)
from bench.wire import WireSite
from simulators.site import FLEET, SCRIPT, LaneSpec, free_tcp_port

LANE = LaneSpec("B1-IN", "保税货物进区1号", "bonded", "in", "K001")
RELEASED = [v for v in FLEET if SCRIPT[v.card] == "release"]
TZ = ZoneInfo("Asia/Shanghai")
PULSE_S = 0.3  # the config's barrier.pulse_ms
TOKEN = "demo-token"  # the simulated site's API token

#: Started once the daemon answers, stopped before it is: load to measure under.
Load = Callable[[str, Path], Awaitable[Callable[[], Awaitable[dict]]]]


def make_sim(workdir: Path, specs: list[LaneSpec], **kw) -> WireSite:
    """The simulated site with the wire-timed IO module and authority."""
    return WireSite(workdir, specs, **kw)


def write_config(sim: WireSite, workdir: Path, **extras) -> tuple[Path, str]:
    """The site config for ``gatectl run`` (journal in ``workdir``) and the API's base URL."""
    listen = f"127.0.0.1:{free_tcp_port()}"
    path = sim.write_config(workdir / "site.yaml", journal_path=str(workdir / "gatectl.db"), api_listen=listen,
                            **extras)
    return path, f"http://{listen}"


async def start_daemon(config: Path, api: str, log: Path) -> Child:
    d = daemon(config, log)
    try:
        await wait_http_ok(api + "/api/v1/health", d)
    except BaseException:
        d.stop()
        raise
    return d


async def scrape(api: str) -> str:
    import aiohttp

    async with aiohttp.ClientSession() as s, s.get(api + "/metrics") as r:
        return await r.text()


def histogram(text: str, name: str, labels: dict[str, str]) -> dict[float, float]:
    """Cumulative bucket counts (upper bound -> count) of a histogram, summed over every
    series with ``labels`` (one series, or e.g. the decision latency's one per lane)."""
    out: dict[float, float] = {}
    for line in text.splitlines():
        if not line.startswith(name + "_bucket{"):
            continue
        inner, value = line[len(name) + 8:].rsplit("}", 1)
        pairs = dict(re.findall(r'(\w+)="([^"]*)"', inner))
        if all(pairs.get(k) == v for k, v in labels.items()):
            le = float("inf") if pairs["le"] == "+Inf" else float(pairs["le"])
            out[le] = out.get(le, 0.0) + float(value.split()[0])
    return out


def series(text: str, name: str, labels: dict[str, str]) -> float:
    """The value of one labelled sample (0 if absent)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and line.split(" ")[0] != name:
            continue
        head, _, value = line.rpartition(" ")
        pairs = dict(re.findall(r'(\w+)="([^"]*)"', head))
        if head.split("{")[0] == name and all(pairs.get(k) == v for k, v in labels.items()):
            total += float(value)
    return total


def diff_buckets(after: dict[float, float], before: dict[float, float]) -> dict[float, float]:
    return {le: n - before.get(le, 0.0) for le, n in after.items()}


def sum_buckets(parts: list[dict[float, float]]) -> dict[float, float]:
    out: dict[float, float] = {}
    for part in parts:
        for le, n in part.items():
            out[le] = out.get(le, 0.0) + n
    return out


def bucket_quantile(buckets: dict[float, float], q: float) -> float:
    """Prometheus' ``histogram_quantile``: linear within the bucket that holds ``q``."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] == 0:
        return float("nan")
    rank = q * buckets[bounds[-1]]
    prev_bound, prev_count = 0.0, 0.0
    for b in bounds:
        c = buckets[b]
        if c >= rank:
            if b == float("inf"):
                return prev_bound
            return prev_bound + (b - prev_bound) * ((rank - prev_count) / (c - prev_count) if c > prev_count else 0)
        prev_bound, prev_count = b, c
    return bounds[-1]


async def daemon_batch(sim: WireSite, config: Path, api: str, n: int, log: Path,
                       load: Load | None = None) -> tuple[list[float], dict]:
    """``n`` released vehicles through a freshly started daemon (under ``load`` if given);
    latencies of all but the first, and what the daemon itself measured."""
    lane = sim.lanes[0]
    d = await start_daemon(config, api, log)
    stop_load = None
    try:
        if load is not None:
            stop_load = await load(api, log.parent)
        before = await scrape(api)
        t0, k0, th0 = time.monotonic(), cpu_ticks(), thread_sched(d.pid)
        for i in range(n):
            outcome = await lane.drive(RELEASED[i % len(RELEASED)])
            if outcome != "passed":
                raise RuntimeError(f"a released vehicle {outcome}:\n{d.tail()}")
        await until(lambda: lane.barrier.position == "down", 10, what="barrier down")
        t1, k1, th1 = time.monotonic(), cpu_ticks(), thread_sched(d.pid)
        text = await scrape(api)
        extra = await stop_load() if stop_load is not None else {}
        stop_load = None
    finally:
        if stop_load is not None:
            with contextlib.suppress(Exception):
                await stop_load()
        d.stop()
    own = {
        "sum_s": series(text, "gatectl_decision_latency_seconds_sum", {"source": "authority"}),
        "count": series(text, "gatectl_decision_latency_seconds_count", {"source": "authority"}),
        # Each loop's lag over the batch (the window's buckets: after minus before).
        "lag": {loop: diff_buckets(histogram(text, "gatectl_loop_lag_seconds", {"loop": loop}),
                                   histogram(before, "gatectl_loop_lag_seconds", {"loop": loop}))
                for loop in ("control", "service")},
        "load": extra,
        "machine": machine_window(k0, k1, th0, th1, t1 - t0),
    }
    lat = decision_latencies(sim.authority.sent, sim.io.coil_writes, {lane.id: lane.open_coil}, t0, t1, skip_first=1)
    return lat, own


def machine_window(k0: list[int], k1: list[int], th0: dict[str, tuple[float, float]],
                   th1: dict[str, tuple[float, float]], seconds: float) -> dict[str, float]:
    """What the machine let the daemon do over a batch: the hypervisor's steal, and the
    daemon's threads' seconds on a processor and runnable but waiting for one (per second
    of the batch). A lag or latency figure taken while the daemon waited for processors
    as long as it ran measures the machine, not the daemon."""
    shares = sched_shares(th0, th1, max(seconds, 1e-9))
    return {"steal_share": steal_share(k0, k1), "daemon_run_per_s": shares["cpu"],
            "daemon_runq_wait_per_s": shares["runqueue_wait"], "seconds": seconds}


def machine_summary(own: list[dict]) -> str:
    """One line on the machine over a side's daemon batches (``machine_window``)."""
    ms = [o["machine"] for o in own if "machine" in o]
    if not ms:
        return "machine: not recorded"
    steal = [m["steal_share"] for m in ms if m["steal_share"] == m["steal_share"]]
    return (f"machine over the daemon's batches: steal {min(steal, default=float('nan')):.0%}-"
            f"{max(steal, default=float('nan')):.0%} of the processors; the daemon's threads ran "
            f"{median([m['daemon_run_per_s'] for m in ms]):.2f} s and waited for a processor "
            f"{median([m['daemon_runq_wait_per_s'] for m in ms]):.2f} s per second (medians)")


async def baseline_batch(sim: WireSite, db_path: Path, n: int, log: Path, *,
                         writer_thread: bool = False) -> list[float]:
    """The hand-written script, in its own process, ``n`` times; latencies of all but the
    first. ``writer_thread``: its commit is handed to a thread of its own and awaited."""
    lane = sim.lanes[0]
    args = {
        "host": sim.authority.host, "http_port": sim.authority.port, "io_host": sim.io.host, "io_port": sim.io.port,
        "unit": sim.io.unit, "open_coil": lane.open_coil, "close_coil": lane.close_coil, "lane_id": lane.id,
        "n": n, "db": str(db_path), "travel_s": sim.travel_s, "writer_thread": writer_thread,
    }
    t0 = time.monotonic()
    child = Child([sys.executable, "-m", "bench.decision", "--baseline-child", json.dumps(args)], log, nice=LANE_NICE)
    try:
        await until(lambda: not child.alive(), 30 + n * 5, step=0.05, what="baseline script done")
        if child.proc.returncode != 0:
            raise RuntimeError(f"baseline script failed:\n{child.tail()}")
    finally:
        child.stop()
    t1 = time.monotonic()
    return decision_latencies(sim.authority.sent, sim.io.coil_writes, {lane.id: lane.open_coil}, t0, t1, skip_first=1)


async def baseline_script(a: dict) -> None:
    """The simplest honest script doing the daemon's I/O (runs in the baseline's own process)."""
    from pymodbus.client import AsyncModbusTcpClient

    # The commit in a thread of its own (``writer_thread``) uses the connection there only.
    db = sqlite3.connect(a["db"], isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(
        "CREATE TABLE IF NOT EXISTS authorisations (kind TEXT NOT NULL, auth_id TEXT NOT NULL,"
        " lane_id TEXT NOT NULL, passage_id TEXT, committed_at TEXT NOT NULL, PRIMARY KEY (kind, auth_id))"
    )
    client = AsyncModbusTcpClient(a["io_host"], port=a["io_port"], reconnect_delay=0, retries=0, timeout=2.0)
    if not await client.connect():
        raise SystemExit("cannot reach the IO module")
    unit = a["unit"]

    async def ask(body: dict) -> dict:
        # A new connection per request, the answer read to the close.
        reader, writer = await asyncio.open_connection(a["host"], a["http_port"])
        payload = json.dumps(body).encode()
        writer.write(b"POST /gate/v1/pass-requests HTTP/1.0\r\nHost: authority\r\n"
                     b"Content-Type: application/json; charset=utf-8\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(payload) + payload)
        raw = await reader.read()
        writer.close()
        head, _, answer = raw.partition(b"\r\n\r\n")
        if not head.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200")):
            raise SystemExit(f"authority answered {head[:40]!r}")
        return json.loads(answer)

    async def pulse(coil: int) -> None:
        await client.write_coil(coil, True, device_id=unit)
        await asyncio.sleep(PULSE_S)
        await client.write_coil(coil, False, device_id=unit)

    def commit(row: tuple) -> None:
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO authorisations VALUES (?, ?, ?, ?, ?)", row)
        db.execute("COMMIT")

    def write_rows(todo: queue.SimpleQueue) -> None:
        # The least a commit off the event loop costs: a thread woken for it, and the
        # loop woken for its answer. No group, no projection, no events.
        while (job := todo.get()) is not None:
            row, done = job
            try:
                commit(row)
            except Exception as exc:  # noqa: BLE001 - the script stops with it
                done.set_exception(exc)
            else:
                done.set_result(None)

    writer: queue.SimpleQueue | None = None
    if a.get("writer_thread"):
        writer = queue.SimpleQueue()
        threading.Thread(target=write_rows, args=(writer,), name="writer", daemon=True).start()
    try:
        for i in range(a["n"]):
            v = RELEASED[i % len(RELEASED)]
            answer = await ask({
                "request_id": str(uuid.uuid4()), "site_id": "demo-site", "lane_id": a["lane_id"],
                "channel_no": LANE.channel_no, "direction": "I", "lane_kind": LANE.kind, "card_no": v.card,
                "plate": None, "gross_weight_kg": float(v.gross_kg), "captured_at": datetime.now(TZ).isoformat(),
            })
            if answer["decision"] != "release":
                raise SystemExit(f"expected a release, got {answer}")
            row = ("release_instruction", answer["instruction_id"], a["lane_id"], None, datetime.now(TZ).isoformat())
            if writer is None:
                commit(row)
            else:
                done: concurrent.futures.Future = concurrent.futures.Future()
                writer.put((row, done))
                await asyncio.wrap_future(done)
            await pulse(a["open_coil"])  # the latency ends as this reaches the module
            await asyncio.sleep(a["travel_s"] * 1.5)
            await pulse(a["close_coil"])
            await asyncio.sleep(a["travel_s"] * 1.5 + 0.5)
    finally:
        if writer is not None:
            writer.put(None)
        client.close()
        db.close()


def sizes(quick: bool) -> tuple[int, int]:
    """(rounds, vehicles per batch); the first of each batch is left out."""
    return (3, 11) if quick else (10, 21)


BASELINE = "baseline"
#: The baseline with its commit handed to a thread and awaited: the least the journal's
#: design (a writer thread of its own, issue #12) costs a decision, before any lane work.
WRITER_THREAD = "baseline, commit in a thread"


async def measure(quick: bool, workdir: Path, sides: dict[str, Load | str | None],
                  prepare: Callable[[Path], None] | None = None, config_extras: dict | None = None,
                  config_tail: str = "") -> dict:
    """Alternating batches of each side: ``None`` the daemon as it is, a ``Load`` the
    daemon under that load, ``BASELINE`` the hand-written script. ``prepare(journal)``
    runs before every daemon batch (a pre-filled journal, say); ``config_extras`` go to
    ``SimulatedSite.write_config`` and ``config_tail`` (YAML) at the end of the file."""
    rounds, per_batch = sizes(quick)
    sim = make_sim(workdir / "sim", [LANE], travel_s=0.2, poll_ms=50, speed=10.0, weigh_interval_s=0.05)
    await sim.start()
    names = list(sides)
    got: dict[str, list[float]] = {n: [] for n in names}
    batch_p50: dict[str, list[float]] = {n: [] for n in names}
    own: dict[str, list[dict]] = {n: [] for n in names}
    try:
        config, api = write_config(sim, workdir, **(config_extras or {}))
        if config_tail:
            with config.open("a", encoding="utf-8") as f:
                f.write(config_tail)
        for r in range(rounds):
            # Rotate which side goes first, so none always follows another.
            for name in names[r % len(names):] + names[:r % len(names)]:
                side = sides[name]
                if side in (BASELINE, WRITER_THREAD):
                    lat = await baseline_batch(sim, workdir / "baseline.db", per_batch, workdir / "baseline.log",
                                               writer_thread=side == WRITER_THREAD)
                else:
                    if prepare is not None:
                        prepare(workdir / "gatectl.db")
                    lat, mine = await daemon_batch(sim, config, api, per_batch, workdir / f"daemon-{name}.log",
                                                   side)  # type: ignore[arg-type]
                    own[name].append(mine)
                got[name] += lat
                batch_p50[name].append(round(median(lat) * 1000, 3))
    finally:
        await sim.stop()
    return {"got": got, "batch_p50": batch_p50, "own": own, "rounds": rounds, "per_batch": per_batch}


def own_mean_ms(own: list[dict]) -> float:
    """The daemon's own mean decision latency over batches (its histogram's sum / count)."""
    return sum(o["sum_s"] for o in own) / max(1, sum(o["count"] for o in own)) * 1000


async def run(quick: bool, workdir: Path) -> Report:
    m = await measure(quick, workdir, {"gatectl": None, "baseline": BASELINE, "writer_thread": WRITER_THREAD})
    ours, base, floor = m["got"]["gatectl"], m["got"]["baseline"], m["got"]["writer_thread"]
    own_mean = own_mean_ms(m["own"]["gatectl"]) / 1000
    rep = Report("decision", "1. decision latency (answer written -> open coil PDU in)")
    rep.rows.append(ratio_row("1 decision", "p50 latency", "ms", pct(ours, 50) * 1000, pct(base, 50) * 1000, 1.3))
    rep.rows.append(ratio_row("1 decision", "p99 latency", "ms", pct(ours, 99) * 1000, pct(base, 99) * 1000, 2.0))
    # No target: what the design asked for (the commit off the loop) costs by itself, and
    # what the daemon adds to that.
    rep.rows.append(ratio_row("1 decision", "p50, baseline committing in a thread vs baseline", "ms",
                              pct(floor, 50) * 1000, pct(base, 50) * 1000, None))
    rep.rows.append(ratio_row("1 decision", "p50, gatectl vs baseline committing in a thread", "ms",
                              pct(ours, 50) * 1000, pct(floor, 50) * 1000, None))
    sides = {"gatectl": ours, "baseline": base, "writer_thread": floor}
    rep.details = {
        "samples": {k: len(v) for k, v in sides.items()},
        "rounds": m["rounds"],
        "batch_p50_ms": m["batch_p50"],
        "p90_ms": {k: pct(v, 90) * 1000 for k, v in sides.items()},
        "max_ms": {k: max(v) * 1000 for k, v in sides.items()},
        "mean_ms": {k: sum(v) / len(v) * 1000 for k, v in sides.items()},
        "daemon_own_mean_ms": own_mean * 1000,
        **{f"{k}_ms": sorted(round(x * 1000, 3) for x in v) for k, v in sides.items()},
    }
    rep.notes.append(
        f"{len(ours)} daemon / {len(base)} baseline / {len(floor)} baseline-with-a-writer-thread passages, "
        f"{m['rounds']} alternating rounds; daemon and baselines each in their own process, the wire-timed "
        "simulators in the bench process; the daemon's own "
        f"gatectl_decision_latency_seconds mean {own_mean * 1000:.3f} ms (answer in -> coil write acknowledged) "
        f"against {sum(ours) / len(ours) * 1000:.3f} ms on the wire"
    )
    rep.details["machine"] = [o["machine"] for o in m["own"]["gatectl"]]
    rep.notes.append(machine_summary(m["own"]["gatectl"]))
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
