"""Bench 6: outbox drain, 10 k events journaled while the MQTT broker is away, then it returns.

gatectl: a ``Site`` in this process with an ``MqttLink`` wired in as the daemon wires it
(``site.subscribe(link.on_events)``, ``site.add_task(link.run)``, default backoff),
against a one-lane ``SimulatedSite``, and no broker. 10,000 lane events are journaled
through ``Journal.append`` in batches of 100, as lanes append them; the journal tells the
site's subscribers after each commit. After an outage (5 s; and 75 s in the full run, long enough for
the link's backoff to reach its cap) a Mosquitto (``/usr/sbin/mosquitto``,
no persistence) starts on the configured port; the clock runs from its first accepted
connection until ``link.depth()`` is 0 (every event acknowledged by the broker). The
time until the link reconnected (its backoff) is reported apart from the publishing.

baseline: a minimal aiomqtt script publishing the same 10,000 journal bodies to the same
topics, QoS 1, up to 100 in flight, timed from the broker's start likewise (it connects
at once: it has no backoff to sit out).

Runs alternate; medians. Needs ``gatectl/mqtt.py`` (``MqttLink``) and Mosquitto; without
them the bench reports itself pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from datetime import datetime
from pathlib import Path

from bench.common import Child, Report, Row, bench_args, log_to, median, ratio_row, scratch, until
from simulators.site import LaneSpec, SimulatedSite, free_tcp_port

EVENTS = 10_000
BATCH = 100
#: Outages (from the daemon's start to the broker's return): a short one, and one long
#: enough for the link's backoff to reach its cap, as it has after the ~20 hours it takes
#: a lane PC to journal 10,000 events (full run only).
SHORT_S, LONG_S = 5.0, 75.0
LANE = LaneSpec("B1-IN", "保税货物进区1号", "bonded", "in", "K001")
MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)

#: Lane events of the sizes a passage journals (the data part; the journal adds ids and seq).
SHAPES = [
    ("loop.changed", {"loop": "arrival_loop", "occupied": True}),
    ("passage.opened", {"card": None}),
    ("weight.changed", {"kg": 31250.0, "stable": False}),
    ("card.read", {"card": "3A00F1229B"}),
    ("weight.stable", {"gross_weight_kg": 31250.0}),
    ("release.requested", {"request_id": "0b8e6d1e-1b1c-4f4e-9a53-6c5f2f0a9b11", "card": "3A00F1229B",
                           "gross_weight_kg": 31250.0}),
    ("release.decided", {"source": "authority", "request_id": "0b8e6d1e-1b1c-4f4e-9a53-6c5f2f0a9b11",
                         "decision": "release", "instruction_id": "CMD-000001",
                         "form_id": "HF530120261127000101", "hint": "核放单已核放，请通行",
                         "declared_weight_kg": 31250.0}),
    ("barrier.lifted", {"authorisation": {"kind": "release_instruction", "id": "CMD-000001"}, "reason": "lift"}),
    ("loop.changed", {"loop": "safety_loop", "occupied": True}),
    ("passage.closed", {"outcome": "passed", "card": "3A00F1229B", "gross_weight_kg": 31250.0,
                        "decision": "release", "authorisation": {"kind": "release_instruction", "id": "CMD-000001"}}),
]


class Broker:
    """One Mosquitto on 127.0.0.1:port, anonymous, no persistence; stopped by its pid."""

    def __init__(self, workdir: Path, port: int) -> None:
        self.workdir, self.port = workdir, port
        self.child: Child | None = None

    async def start(self) -> float:
        """Start it; returns the monotonic time it first accepted a connection."""
        conf = self.workdir / "mosquitto.conf"
        lines = (["user root"] if os.geteuid() == 0 else []) + [
            f"listener {self.port} 127.0.0.1", "persistence false", "allow_anonymous true"]
        conf.write_text("\n".join(lines) + "\n")
        assert MOSQUITTO is not None
        self.child = Child([MOSQUITTO, "-c", str(conf)], self.workdir / "mosquitto.log")
        loop = asyncio.get_running_loop()
        end = loop.time() + 10
        while True:
            if not self.child.alive():
                raise RuntimeError("mosquitto exited:\n" + self.child.tail())
            try:
                _, w = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                if loop.time() > end:
                    raise RuntimeError("mosquitto did not listen:\n" + self.child.tail()) from None
                await asyncio.sleep(0.005)
                continue
            t = time.monotonic()
            w.close()
            with contextlib.suppress(Exception):
                await w.wait_closed()
            return t

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop(5)


async def backlog(site, lane_id: str) -> None:
    """Journal ``EVENTS`` lane events in batches, as lanes append them; the journal tells
    the site's subscribers (the link) after each commit."""
    from gatectl.journal import Entry

    tz = site.tz
    for start in range(0, EVENTS, BATCH):
        entries = []
        for i in range(start, min(start + BATCH, EVENTS)):
            type_, data = SHAPES[i % len(SHAPES)]
            entries.append(Entry.of(type_, datetime.now(tz), {"passage_id": f"bench-{i // len(SHAPES)}", **data}))
        await asyncio.wrap_future(site.journal.append(lane_id, entries))


async def daemon_drain(workdir: Path, outage_s: float) -> dict:
    from gatectl.config import load_config
    from gatectl.mqtt import MqttLink
    from gatectl.service import Site

    workdir.mkdir(parents=True, exist_ok=True)
    sim = SimulatedSite(workdir / "sim", [LANE], travel_s=0.2, speed=10.0, weigh_interval_s=0.1)
    await sim.start()
    broker = Broker(workdir, free_tcp_port())
    try:
        config = sim.write_config(workdir / "site.yaml", journal_path=str(workdir / "gatectl.db"),
                                  api_listen=f"127.0.0.1:{free_tcp_port()}", mqtt=f"127.0.0.1:{broker.port}")
        site = Site(load_config(config))
        link = MqttLink(site)
        site.subscribe(link.on_events)
        site.add_task(link.run, "mqtt")
        stop = asyncio.Event()
        task = asyncio.create_task(site.run(stop))
        try:
            began = time.monotonic()
            await until(lambda: site.running or task.done(), 30, what="site running")
            if task.done():
                task.result()
            await backlog(site, LANE.id)
            depth = link.depth()
            await asyncio.sleep(max(0.0, outage_s - (time.monotonic() - began)))
            t0 = await broker.start()
            connected = None

            def drained() -> bool:
                nonlocal connected
                if connected is None and link.connected:
                    connected = time.monotonic()
                return link.depth() == 0

            await until(drained, 120, step=0.005, what="backlog drained")
            t1 = time.monotonic()
        finally:
            stop.set()
            await asyncio.gather(task, return_exceptions=True)
    finally:
        broker.stop()
        await sim.stop()
    return {"backlog": depth, "total_s": t1 - t0, "reconnect_s": (connected or t1) - t0,
            "publish_s": t1 - (connected or t1), "journal": str(workdir / "gatectl.db")}


async def baseline_drain(workdir: Path, journal: str) -> dict:
    """The same bodies, published by a minimal aiomqtt script."""
    import sqlite3

    import aiomqtt

    db = sqlite3.connect(journal)
    rows = db.execute("SELECT lane_id, type, body FROM events WHERE lane_id = ? ORDER BY seq", (LANE.id,)).fetchall()
    db.close()
    rows = [r for r in rows if r[2].find('"bench-') >= 0][:EVENTS]
    prefix = "gatectl/demo-site"
    broker = Broker(workdir, free_tcp_port())
    try:
        t0 = await broker.start()
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="bench-baseline", clean_session=False,
                                  max_inflight_messages=100) as client:
            client.pending_calls_threshold = 10 * EVENTS
            t_conn = time.monotonic()
            for start in range(0, len(rows), 500):
                await asyncio.gather(*(client.publish(f"{prefix}/lanes/{lane}/events", body.encode(), qos=1)
                                       for lane, _type, body in rows[start:start + 500]))
            t1 = time.monotonic()
    finally:
        broker.stop()
    return {"events": len(rows), "total_s": t1 - t0, "reconnect_s": t_conn - t0, "publish_s": t1 - t_conn}


async def run(quick: bool, workdir: Path) -> Report:
    rep = Report("outbox", "6. outbox drain (10 k events after a broker outage)")
    try:
        import gatectl.mqtt as mqtt

        missing = None if hasattr(mqtt, "MqttLink") else "gatectl.mqtt has no MqttLink yet"
    except ImportError as exc:
        missing = f"gatectl/mqtt.py not importable yet ({exc})"
    if MOSQUITTO is None:
        missing = "mosquitto is not installed"
    if missing:
        rep.pending = missing
        rep.rows.append(Row("6 outbox", "drain 10 k events after the broker returns", "s", None, None, "<= 10 s", None,
                            note=f"pending: {missing}"))
        return rep
    log_to(workdir / "daemon.log")
    plan = [(SHORT_S, 1 if quick else 3)] + ([] if quick else [(LONG_S, 1)])
    details = {}
    for outage, repeats in plan:
        got: dict[str, list[dict]] = {"gatectl": [], "baseline": []}
        for r in range(repeats):
            d = await daemon_drain(workdir / f"o{outage:g}-{r}", outage)
            got["gatectl"].append(d)
            got["baseline"].append(await baseline_drain(workdir / f"o{outage:g}-{r}", d["journal"]))
        med = {side: {k: median(x[k] for x in runs) for k in ("total_s", "reconnect_s", "publish_s")}
               for side, runs in got.items()}
        total = med["gatectl"]["total_s"]
        rep.rows.append(Row("6 outbox", f"broker back after {outage:g} s outage -> 10 k events acked", "s", total,
                            med["baseline"]["total_s"], "<= 10 s", total <= 10.0,
                            note=f"of which waiting out the reconnect backoff {med['gatectl']['reconnect_s']:.1f} s"))
        if outage == SHORT_S:
            rep.rows.append(ratio_row("6 outbox", "publishing 10 k events once connected", "s",
                                      med["gatectl"]["publish_s"], med["baseline"]["publish_s"], None,
                                      note="no target"))
        details[f"outage_{outage:g}s"] = {"runs": got, "medians": med, "repeats": repeats}
    rep.details = details
    rep.notes.append("outage timed from the daemon's start (the link fails to connect from then on); the link "
                     "keeps its default backoff (0.5 s doubling to 3 s, jittered x0.5-1); the baseline "
                     "connects at once")
    return rep


def main() -> None:
    args = bench_args(__doc__.splitlines()[0]).parse_args()
    with scratch(args.workdir, "outbox") as wd:
        rep = asyncio.run(run(args.quick, wd))
    rep.write(args.json)


if __name__ == "__main__":
    main()
