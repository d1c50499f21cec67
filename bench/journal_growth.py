"""Bench 3: journal growth, the journal's cost of one passage in an empty journal and in
one that holds a million passages.

What one passage writes is recorded from the real daemon first: a ``Site`` in this
process drives released lorries through a simulated lane, and every call its lane
service and outbox sender make on the journal (``write`` with its events, authorisation
and outbox items; ``outbox_next``; ``outbox_delivered``) is noted for one whole passage,
from the lorry rolling onto the arrival loop to the boom down and the pass confirmation
delivered. That call sequence, with fresh passage, request and instruction ids and
current time stamps each time, is then replayed through ``gatectl.journal.Journal`` on:

- the baseline: an empty journal;
- the big one: the same schema holding N passages (1 M; 100 k with ``--quick``) on four
  lanes, built by direct SQL inserts shaped like the real tables (the recorded
  passage's events with their own ids, seqs and times, its ``passages`` projection row,
  its authorisation and its delivered outbox row), in the same directory.

Batches alternate between the two; the figure is the median over batches of wall time
(``synchronous=FULL``: an fsync per transaction, WAL checkpoints included) and of CPU
time per passage. Opening the journal and recovering a lane (what a restart does) is
timed on both as well.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sqlite3
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import Report, bench_args, log_to, median, ratio_row, scratch, until
from gatectl.ids import time_ordered_id
from gatectl.journal import SCHEMA, Journal, OutboxItem, PendingEvent

LANES = ("B1-IN", "B2-IN", "B3-OUT", "B4-OUT")

Op = tuple  # ("write", lane, [PendingEvent], authorisation | None, [OutboxItem], durable) | ("next", target) | ("delivered",)


# ------------------------------------------------------------------ recording a passage


async def record_passage(workdir: Path) -> tuple[list[Op], dict[str, Any]]:
    """The journal calls of one whole passage of the real daemon (the second one driven)."""
    from gatectl.config import load_config
    from gatectl.service import Site
    from simulators.site import FLEET, SCRIPT, LaneSpec, SimulatedSite, free_tcp_port

    log_to(workdir / "daemon.log")
    released = [v for v in FLEET if SCRIPT[v.card] == "release"]
    sim = SimulatedSite(workdir / "sim", [LaneSpec("B1-IN", "保税货物进区1号", "bonded", "in", "K001")],
                        travel_s=0.2, speed=10.0, weigh_interval_s=0.05)
    await sim.start()
    ops: list[Op] = []
    recording = False
    try:
        config = sim.write_config(workdir / "site.yaml", journal_path=str(workdir / "rec.db"),
                                  api_listen=f"127.0.0.1:{free_tcp_port()}")
        site = Site(load_config(config))
        j = site.journal
        write, nxt, delivered = j.write, j.outbox_next, j.outbox_delivered

        def rec_write(lane_id, events, authorisation=None, outbox=(), durable=True):
            events, outbox = list(events), list(outbox)
            if recording:
                ops.append(("write", lane_id, events, authorisation, outbox, durable))
            return write(lane_id, events, authorisation, outbox, durable=durable)

        def rec_next(target, limit=50):
            items = nxt(target, limit)
            if recording:
                ops.append(("next", target, limit))
            return items

        def rec_delivered(item_id, at):
            if recording:
                ops.append(("delivered",))
            return delivered(item_id, at)

        j.write, j.outbox_next, j.outbox_delivered = rec_write, rec_next, rec_delivered  # type: ignore[method-assign]
        stop = asyncio.Event()
        task = asyncio.create_task(site.run(stop))
        lane = sim.lanes[0]
        try:
            await until(lambda: site.running, 30, what="site running")
            await lane.drive(released[0])
            await until(lambda: lane.barrier.position == "down" and len(sim.authority.confirmations) == 1, 10)
            await asyncio.sleep(0.5)
            recording = True
            await lane.drive(released[1])
            await until(lambda: lane.barrier.position == "down" and len(sim.authority.confirmations) == 2, 10)
            await asyncio.sleep(0.5)
            recording = False
        finally:
            stop.set()
            await asyncio.gather(task, return_exceptions=True)
    finally:
        await sim.stop()
    writes = [op for op in ops if op[0] == "write"]
    shape = {
        "transactions": len(writes),
        "events": sum(len(op[2]) + (op[3] is not None) for op in writes),
        "event_types": [ev.type for op in writes for ev in op[2]],
        "outbox_items": sum(len(op[4]) for op in writes),
        "outbox_reads": sum(op[0] == "next" for op in ops),
        "outbox_deliveries": sum(op[0] == "delivered" for op in ops),
    }
    return ops, shape


# ------------------------------------------------------------------ replaying it


def _ids(ops: list[Op]) -> set[str]:
    """The ids that must be fresh in every replay (passage, request, instruction)."""
    found: set[str] = set()

    def walk(x: Any) -> None:
        if isinstance(x, dict):
            for k, v in x.items():
                if k in ("passage_id", "request_id", "instruction_id") and isinstance(v, str):
                    found.add(v)
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    for op in ops:
        if op[0] == "write":
            for ev in op[2]:
                walk(ev.data)
            if op[3] is not None:
                found.update(s for s in op[3][1:3] if isinstance(s, str))
            for item in op[4]:
                walk(item.payload)
    return found


class Replayer:
    """The recorded calls again, with fresh ids and time stamps moved to now."""

    def __init__(self, ops: list[Op]) -> None:
        self.ops = ops
        self.ids = _ids(ops)
        first = next(op[2][0].ts for op in ops if op[0] == "write" and op[2])
        self.t0 = first

    def _sub(self, x: Any, m: dict[str, str]) -> Any:
        if isinstance(x, str):
            return m.get(x, x)
        if isinstance(x, dict):
            return {k: self._sub(v, m) for k, v in x.items()}
        if isinstance(x, list):
            return [self._sub(v, m) for v in x]
        if isinstance(x, tuple):
            return tuple(self._sub(v, m) for v in x)
        if isinstance(x, datetime):
            return x + self.shift
        return x

    def passage(self, j: Journal, lane: str) -> None:
        # Ids as the daemon makes them (gatectl.ids: time-ordered); instruction ids are the
        # authority's own.
        m = {old: (f"CMD-{uuid.uuid4()}" if old.startswith("CMD-") else time_ordered_id()) for old in self.ids}
        self.shift = datetime.now(self.t0.tzinfo) - self.t0
        for op in self.ops:
            if op[0] == "write":
                _, _lane, events, auth, outbox, durable = op
                j.write(
                    lane,
                    [PendingEvent(ev.type, ev.ts + self.shift, self._sub(ev.data, m)) for ev in events],
                    authorisation=self._sub(auth, m) if auth is not None else None,
                    outbox=[OutboxItem(i.target, i.kind, self._sub(i.payload, m), i.created_at + self.shift)
                            for i in outbox],
                    durable=durable,
                )
            elif op[0] == "next":
                self._pending = j.outbox_next(op[1], op[2])
            elif op[0] == "delivered":
                item = self._pending.pop(0)
                j.outbox_delivered(item["id"], datetime.now(self.t0.tzinfo))


# ------------------------------------------------------------------ the big journal


def build_big(path: Path, ops: list[Op], passages: int, site_id: str = "demo-site") -> dict[str, Any]:
    """``passages`` passages shaped like the recorded one, by direct SQL, on four lanes."""
    started = time.monotonic()
    db = sqlite3.connect(str(path), isolation_level=None)
    db.execute("PRAGMA journal_mode=OFF")
    db.execute("PRAGMA synchronous=OFF")
    db.execute("PRAGMA cache_size=-2000000")  # 2 GB: the random event_id index stays in memory
    db.executescript(SCHEMA)
    rep = Replayer(ops)
    templates = []  # (type, offset from the passage's first event, data with ids as placeholders)
    for op in ops:
        if op[0] == "write":
            for ev in op[2]:
                templates.append((ev.type, ev.ts - rep.t0, ev.data))
            if op[3] is not None:
                kind, auth_id, pid, ts = op[3]
                templates.append(("authorisation.committed", ts - rep.t0,
                                  {"passage_id": pid, "authorisation": {"kind": kind, "id": auth_id}}))
    outbox_payloads = [(i.target, i.kind, i.payload) for op in ops if op[0] == "write" for i in op[4]]
    passage_tpl = next(t[2] for t in templates if t[0] == "passage.opened")
    pid_old = passage_tpl["passage_id"]
    auth_tpl = next(op[3] for op in ops if op[0] == "write" and op[3] is not None)
    decided = next((t[2] for t in templates if t[0] == "release.decided"), {})
    weight = next((t[2].get("gross_weight_kg") for t in templates if t[0] == "weight.stable"), None)
    card = next((t[2].get("card") for t in templates if t[0] == "card.read"), None)

    rng = random.Random(1)
    seq = dict.fromkeys(LANES, 0)
    tz = rep.t0.tzinfo
    start = datetime.now(tz) - timedelta(seconds=30 * passages + 86400)
    events: list[tuple] = []
    rows: list[tuple] = []
    auths: list[tuple] = []
    outbox: list[tuple] = []
    n_events = 0

    def uid(at: datetime) -> str:
        # As gatectl.ids.time_ordered_id at the moment ``at``: what the daemon journals.
        ms = int(at.timestamp() * 1000) & 0xFFFF_FFFF_FFFF
        r = rng.getrandbits(74)
        return str(uuid.UUID(int=ms << 80 | 0x7 << 76 | (r >> 62) << 64 | 0b10 << 62 | r & (1 << 62) - 1))

    def flush() -> None:
        db.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)", events)
        db.executemany("INSERT INTO passages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        db.executemany("INSERT INTO authorisations VALUES (?, ?, ?, ?, ?)", auths)
        db.executemany(
            "INSERT INTO outbox (target, lane_id, kind, payload, created_at, attempts, delivered_at)"
            " VALUES (?, ?, ?, ?, ?, 1, ?)", outbox)
        events.clear(), rows.clear(), auths.clear(), outbox.clear()

    db.execute("BEGIN")
    for n in range(passages):
        lane = LANES[n % len(LANES)]
        t0 = start + timedelta(seconds=30 * n)
        m = {old: uid(t0) for old in rep.ids}
        for old in rep.ids:
            if old.startswith("CMD-"):
                m[old] = "CMD-" + m[old]
        opened_seq = None
        closed_at = None
        outcome = None
        for type_, dt, data in templates:
            seq[lane] += 1
            ts = (t0 + dt).isoformat()
            body = {"event_id": uid(t0 + dt), "seq": seq[lane], "site_id": site_id, "lane_id": lane, "type": type_,
                    "ts": ts, **rep._sub(data, m)}
            events.append((lane, seq[lane], body["event_id"], type_, ts, json.dumps(body, ensure_ascii=False)))
            if type_ == "passage.opened":
                opened_seq = seq[lane]
            elif type_ == "passage.closed":
                closed_at, outcome = ts, data.get("outcome")
        n_events += len(templates)
        rows.append((m[pid_old], lane, opened_seq, t0.isoformat(), closed_at, card, weight,
                     m.get(decided.get("request_id"), None), decided.get("decision"),
                     m.get(decided.get("instruction_id"), None), decided.get("form_id"), decided.get("hint"),
                     auth_tpl[0], m.get(auth_tpl[1], auth_tpl[1]), outcome, None))
        auths.append((auth_tpl[0], m.get(auth_tpl[1], auth_tpl[1]), lane, m[pid_old], t0.isoformat()))
        for target, kind, payload in outbox_payloads:
            outbox.append((target, lane, kind, json.dumps(rep._sub(payload, m), ensure_ascii=False),
                           t0.isoformat(), (t0 + timedelta(seconds=20)).isoformat()))
        if len(events) >= 50_000:
            flush()
    flush()
    db.execute("COMMIT")
    db.execute("PRAGMA journal_mode=WAL")
    db.close()
    return {"passages": passages, "events": n_events, "build_s": time.monotonic() - started,
            "bytes": path.stat().st_size}


# ------------------------------------------------------------------ measuring


def batch(j: Journal, rep: Replayer, n: int) -> tuple[float, float]:
    """Wall and CPU seconds per passage for ``n`` replayed passages."""
    w0, c0 = time.perf_counter(), time.process_time()
    for i in range(n):
        rep.passage(j, LANES[i % len(LANES)])
    return (time.perf_counter() - w0) / n, (time.process_time() - c0) / n


def evict(path: Path) -> None:
    """Drop this file's pages from the OS page cache (only ours), as after a power cut."""
    for p in (path, Path(f"{path}-wal")):
        if p.exists():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def restart_cost(path: Path, cold: bool = False) -> float:
    """Seconds to open the journal and recover every lane, as a restarting daemon does
    (``cold``: with the file out of the page cache first, as after a power cut)."""
    if cold:
        evict(path)
    t = time.perf_counter()
    j = Journal(path, "demo-site")
    for lane in LANES:
        j.recover(lane)
        j.spot_checks(lane)
    j.close()
    return time.perf_counter() - t


async def run(quick: bool, workdir: Path) -> Report:
    big_n = 100_000 if quick else 1_000_000
    rounds, per_batch = (6, 20) if quick else (10, 40)
    ops, shape = await record_passage(workdir / "record")
    empty_path, big_path = workdir / "empty.db", workdir / "big.db"
    built = build_big(big_path, ops, big_n)
    # Start the baseline with the same schema, empty.
    Journal(empty_path, "demo-site").close()
    rep = Replayer(ops)
    restart = {"empty": restart_cost(empty_path), "big": restart_cost(big_path)}
    journals = {"empty": Journal(empty_path, "demo-site"), "big": Journal(big_path, "demo-site")}
    wall: dict[str, list[float]] = {"empty": [], "big": []}
    cpu: dict[str, list[float]] = {"empty": [], "big": []}
    try:
        for side in ("empty", "big"):  # warm-up: first writes, first checkpoint
            batch(journals[side], rep, 5)
        for r in range(rounds):
            for side in ("empty", "big") if r % 2 == 0 else ("big", "empty"):
                w, c = batch(journals[side], rep, per_batch)
                wall[side].append(w)
                cpu[side].append(c)
    finally:
        for j in journals.values():
            j.close()
    size = {p.name: sum(f.stat().st_size for f in p.parent.glob(p.name + "*")) for p in (empty_path, big_path)}
    restart_after = {"big": restart_cost(big_path), "big_cold": restart_cost(big_path, cold=True),
                     "empty_cold": restart_cost(empty_path, cold=True)}
    report = Report("journal", "3. journal growth (one passage's journal writes)")
    label = f"{big_n // 1000:,} k" if big_n < 1_000_000 else f"{big_n // 1_000_000} M"
    row = ratio_row("3 journal", f"wall per passage, {label} vs empty", "ms", median(wall["big"]) * 1000,
                    median(wall["empty"]) * 1000, None)
    row.target, row.met = "within 20 %", abs(row.ratio - 1) <= 0.2
    report.rows.append(row)
    row = ratio_row("3 journal", f"CPU per passage, {label} vs empty", "ms", median(cpu["big"]) * 1000,
                    median(cpu["empty"]) * 1000, None)
    row.target, row.met = "within 20 %", abs(row.ratio - 1) <= 0.2
    report.rows.append(row)
    report.rows.append(ratio_row("3 journal", f"restart: open + recover 4 lanes, {label} vs empty", "ms",
                                 restart["big"] * 1000, restart["empty"] * 1000, None,
                                 note="no target; a finding"))
    report.rows.append(ratio_row("3 journal", f"restart from cold cache, {label} vs empty", "ms",
                                 restart_after["big_cold"] * 1000, restart_after["empty_cold"] * 1000, None,
                                 note="no target; page cache of the file dropped first"))
    report.details = {
        "passage_shape": shape,
        "big_journal": {**built, "bytes_with_wal": size[big_path.name]},
        "per_batch_ms": {k: [round(x * 1000, 3) for x in v] for k, v in wall.items()},
        "cpu_per_batch_ms": {k: [round(x * 1000, 3) for x in v] for k, v in cpu.items()},
        "rounds": rounds,
        "passages_per_batch": per_batch,
        "restart_s": {**restart, **{f"{k}_after": v for k, v in restart_after.items()}},
    }
    report.notes.append(
        f"one passage = {shape['transactions']} transactions, {shape['events']} events, "
        f"{shape['outbox_items']} outbox item; big journal {built['passages']:,} passages / {built['events']:,} "
        f"events, {size[big_path.name] / 1e9:.2f} GB on disk, built in {built['build_s']:.0f} s"
    )
    return report


def main() -> None:
    args = bench_args(__doc__.splitlines()[0]).parse_args()
    with scratch(args.workdir, "journal") as wd:
        rep = asyncio.run(run(args.quick, wd))
    rep.write(args.json)


if __name__ == "__main__":
    main()
