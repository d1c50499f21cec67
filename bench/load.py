"""Load to measure the lanes under: a journal with history, API readers, an MQTT flood.

Each load that talks to the daemon runs in a process of its own (``python -m bench.load
readers|flood ...``), so its own work never shares the daemon's interpreter or the
bench's event loop; the bench starts it once the daemon answers and stops it (SIGTERM)
before the daemon, and the child writes what it did as JSON.

- :func:`prefill`: a journal holding ``events`` events of one lane, passage after
  passage in the order a daemon journals them (19 events each: loops, limits, card,
  weight, request, decision, authorisation, lift, lowering), written through
  ``gatectl.journal.Journal`` so its projections are the daemon's own. Built once and
  copied before each daemon batch.
- ``readers``: ``clients`` asyncio clients, each reading ``/api/v1/events?limit=10000``
  and ``/api/v1/lanes`` in turn, as fast as the daemon answers.
- ``flood``: a publisher flooding the daemon's ``cmd/spot-checks`` topic with junk
  (not JSON, wrong shapes, unknown lanes, oversized) and well-formed orders without a
  customs signature, ``rate`` messages a second, QoS 1. The daemon refuses every one
  (spot checks must be signed) and counts them, journaling one summary per interval.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import signal
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from bench.common import Child

TZ = ZoneInfo("Asia/Shanghai")
#: One passage as the daemon journals it: (seconds after the passage began, type, fields).
PASSAGE: list[tuple[float, str, dict[str, Any]]] = [
    (0.00, "barrier.position", {"limit": "barrier_up", "on": False}),
    (0.01, "loop.changed", {"loop": "arrival_loop", "occupied": True}),
    (0.20, "barrier.position", {"limit": "barrier_down", "on": True}),
    (0.20, "passage.opened", {"card": None}),
    (1.20, "card.read", {}),
    (1.30, "weight.stable", {}),
    (1.30, "release.requested", {}),
    (1.31, "release.decided", {"source": "authority", "decision": "release", "hint": "核放单已核放，请通行"}),
    (1.31, "authorisation.committed", {}),
    (1.31, "barrier.lifted", {"reason": "lift"}),
    (1.33, "barrier.position", {"limit": "barrier_down", "on": False}),
    (2.00, "loop.changed", {"loop": "safety_loop", "occupied": True}),
    (2.00, "barrier.position", {"limit": "barrier_up", "on": True}),
    (2.70, "loop.changed", {"loop": "arrival_loop", "occupied": False}),
    (3.40, "loop.changed", {"loop": "exit_loop", "occupied": True}),
    (4.10, "loop.changed", {"loop": "safety_loop", "occupied": False}),
    (4.80, "loop.changed", {"loop": "exit_loop", "occupied": False}),
    (4.80, "passage.closed", {"outcome": "passed", "decision": "release"}),
    (4.80, "barrier.lowered", {}),
]


def prefill(path: Path, lane_id: str, events: int, site_id: str = "demo-site",
            spacing_s: float = 60.0) -> dict[str, Any]:
    """A journal at ``path`` holding about ``events`` events of ``lane_id`` (whole
    passages ``spacing_s`` apart, ending now, the last one closed), written through the
    daemon's own journal."""
    from gatectl.ids import time_ordered_id
    from gatectl.journal import Entry, Journal

    started = time.monotonic()
    passages = max(1, events // len(PASSAGE))
    rng = random.Random(12)
    j = Journal(path, site_id)
    begin = datetime.now(TZ) - timedelta(seconds=spacing_s * (passages + 1))
    per_tx = 200  # passages per transaction

    def job(first: int, count: int):
        def write(tx) -> None:
            for n in range(first, first + count):
                t0 = begin + timedelta(seconds=spacing_s * n)
                pid, rid = time_ordered_id(), time_ordered_id()
                card = f"{rng.getrandbits(40):010X}"
                kg = float(rng.randrange(8000, 49000, 10))
                cmd = f"CMD-{n:08d}"
                auth = {"kind": "release_instruction", "id": cmd}
                for dt, type_, fields in PASSAGE:
                    data = dict(fields)
                    if type_ not in ("barrier.position", "loop.changed") or 0.2 <= dt <= 4.8:
                        data["passage_id"] = pid
                    if type_ == "card.read":
                        data["card"] = card
                    elif type_ == "weight.stable":
                        data["gross_weight_kg"] = kg
                    elif type_ == "release.requested":
                        data.update(request_id=rid, card=card, gross_weight_kg=kg)
                    elif type_ == "release.decided":
                        data.update(request_id=rid, instruction_id=cmd, form_id=f"HF{n:018d}", declared_weight_kg=kg)
                    elif type_ == "authorisation.committed":
                        data["authorisation"] = auth
                    elif type_ in ("barrier.lifted", "barrier.lowered"):
                        data["authorisation"] = auth
                    elif type_ == "passage.closed":
                        data.update(card=card, gross_weight_kg=kg, authorisation=auth)
                    e = Entry.of(type_, t0 + timedelta(seconds=dt), data)
                    tx.append(lane_id, e.event, e.ts)
                tx.db.execute("INSERT INTO authorisations VALUES (?, ?, ?, ?, ?)",
                              ("release_instruction", cmd, lane_id, pid, (t0 + timedelta(seconds=1.31)).isoformat()))
        return write

    def published(tx) -> None:
        # The history reached the park's broker long ago: an MQTT link starts from its end.
        from gatectl.mqtt import SCHEMA as MQTT_SCHEMA

        tx.db.execute(MQTT_SCHEMA)
        tx.db.execute("INSERT OR REPLACE INTO mqtt_cursor VALUES (?, ?, ?)",
                      (lane_id, j.last_seq(lane_id), datetime.now(TZ).isoformat()))

    try:
        for first in range(0, passages, per_tx):
            j.run(job(first, min(per_tx, passages - first)), durable=False).result()
        j.run(published).result()
    finally:
        j.close()
    return {"passages": passages, "events": passages * len(PASSAGE), "build_s": time.monotonic() - started,
            "bytes": path.stat().st_size}


def copy_journal(template: Path, target: Path) -> None:
    """Put a fresh copy of ``template`` where the daemon's journal is (its WAL is gone:
    ``Journal.close`` checkpointed it)."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(template, target)


# ------------------------------------------------------------------ load processes


class LoadProcess:
    """``python -m bench.load <kind>`` in its own process; ``stop()`` returns its report."""

    def __init__(self, kind: str, args: dict[str, Any], workdir: Path, nice: int | None = None) -> None:
        self.out = workdir / f"{kind}-{time.monotonic_ns()}.json"
        self.child = Child([sys.executable, "-m", "bench.load", kind, json.dumps({**args, "out": str(self.out)})],
                           workdir / f"{kind}.log", nice=nice)

    async def stop(self) -> dict[str, Any]:
        await asyncio.to_thread(self.child.stop)
        try:
            return json.loads(self.out.read_text())
        except (OSError, ValueError):
            return {"error": f"no report; log:\n{self.child.tail()}"}


def readers(clients: int = 4) -> Any:
    """A ``Load`` for ``bench.decision``: ``clients`` API readers in a process of their own."""
    async def start(api: str, workdir: Path):
        p = LoadProcess("readers", {"api": api, "clients": clients}, workdir)
        await asyncio.sleep(1.0)  # the readers are connected and reading before vehicles come
        return p.stop
    return start


async def _readers(a: dict[str, Any], stop: asyncio.Event) -> dict[str, Any]:
    import aiohttp

    counts = {"events": 0, "lanes": 0, "bytes": 0, "errors": 0}
    slowest = {"events": 0.0, "lanes": 0.0}

    async def client(s: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            for what, url in (("events", "/api/v1/events?limit=10000"), ("lanes", "/api/v1/lanes")):
                t = time.monotonic()
                try:
                    async with s.get(a["api"] + url) as r:
                        body = await r.read()
                        if r.status != 200:
                            counts["errors"] += 1
                            continue
                except (aiohttp.ClientError, OSError):
                    counts["errors"] += 1
                    await asyncio.sleep(0.1)
                    continue
                counts[what] += 1
                counts["bytes"] += len(body)
                slowest[what] = max(slowest[what], time.monotonic() - t)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
        tasks = [asyncio.create_task(client(s)) for _ in range(a["clients"])]
        await stop.wait()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {**counts, "slowest_s": slowest}


def lag_probe(nice: int | None, sample_s: float) -> Any:
    """A ``Load`` that loads nothing: a bare asyncio loop in a process of its own, at
    ``nice``, measuring how late it wakes from a ``sample_s`` sleep, as the daemon measures
    its control loop. Run beside the daemon under the same load, it is what the machine
    itself gives any loop at that priority: the floor of the daemon's figure."""
    async def start(api: str, workdir: Path):
        p = LoadProcess("lagprobe", {"sample_s": sample_s}, workdir, nice=nice)
        await asyncio.sleep(0.5)
        return p.stop
    return start


async def _lagprobe(a: dict[str, Any], stop: asyncio.Event) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    lags: list[float] = []
    while not stop.is_set():
        start = loop.time()
        await asyncio.sleep(a["sample_s"])
        lags.append(max(0.0, loop.time() - start - a["sample_s"]))
    return {"lag_s": lags}


def flood_messages(lane_ids: list[str], rng: random.Random) -> list[bytes]:
    """A cycle of spot-check orders: a third well-formed (hold none, a share of 0, clear)
    but unsigned, the rest junk of every kind. All are refused and counted; none reaches
    the lane, so the released lorries of the bench still pass."""
    lane = rng.choice(lane_ids)
    return [
        json.dumps({"lane_id": lane, "hold_next": 0}).encode(),
        b"\x00\xff not json at all",
        json.dumps({"lane_id": lane, "hold_next": "many"}).encode(),
        json.dumps({"lane_id": "NO-SUCH-LANE", "fraction": 0.5}).encode(),
        json.dumps([1, 2, 3]).encode(),
        json.dumps({"lane_id": lane, "fraction": 7.5}).encode(),
        json.dumps({"lane_id": lane, "fraction": 0.0}).encode(),
        b"{" * 3000,
        json.dumps({"lane_id": lane, "clear": True}).encode(),
        json.dumps({"lane_id": lane, "note": "x" * 60_000}).encode(),
    ]


def flood(broker: tuple[str, int], topic: str, lane_ids: list[str], rate: float = 500.0) -> Any:
    """A ``Load``: a publisher flooding ``topic`` in a process of its own."""
    async def start(api: str, workdir: Path):
        p = LoadProcess("flood", {"host": broker[0], "port": broker[1], "topic": topic, "lanes": lane_ids,
                                  "rate": rate}, workdir)
        await asyncio.sleep(0.5)
        return p.stop
    return start


async def _flood(a: dict[str, Any], stop: asyncio.Event) -> dict[str, Any]:
    import aiomqtt

    rng = random.Random(3)
    sent = 0
    period = 1.0 / a["rate"]
    async with aiomqtt.Client(a["host"], a["port"], identifier=f"bench-flood-{time.monotonic_ns()}") as client:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while not stop.is_set():
            for body in flood_messages(a["lanes"], rng):
                await client.publish(a["topic"], body, qos=1)
                sent += 1
                next_at += period
                delay = next_at - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                if stop.is_set():
                    break
    return {"published": sent}


def main() -> None:
    p = argparse.ArgumentParser(description="load processes for the benches")
    p.add_argument("kind", choices=["readers", "flood", "lagprobe"])
    p.add_argument("args")
    ns = p.parse_args()
    a = json.loads(ns.args)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        started = time.monotonic()
        report = await {"readers": _readers, "flood": _flood, "lagprobe": _lagprobe}[ns.kind](a, stop)
        report["seconds"] = time.monotonic() - started
        Path(a["out"]).write_text(json.dumps(report))

    asyncio.run(run())


if __name__ == "__main__":
    main()
