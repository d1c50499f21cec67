"""Bench 3: journal growth, the journal's cost of one passage in an empty journal and in
one that holds a million passages.

What one passage writes is recorded from the real daemon first: a ``Site`` in this
process drives released lorries through a simulated lane, and every call its lane
runtime and outbox sender make on the journal (``append`` with its events, authorisation
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
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import Report, bench_args, log_to, median, ratio_row, scratch, until
from gatectl import events as ev
from gatectl.ids import time_ordered_id
from gatectl.journal import APPLICATION_ID, SCHEMA, SCHEMA_VERSION, Entry, Journal, OutboxItem, passage_row
from gatectl.lane.passage import COLUMNS, fold

LANES = ("B1-IN", "B2-IN", "B3-OUT", "B4-OUT")

#: ("append", lane, [(type, ts, fields)], (kind, auth_id, passage_id, ts) | None, [OutboxItem])
#: | ("next", target, limit) | ("delivered",)
Op = tuple


def event_type(e: ev.Event) -> str:
    return e.type if isinstance(e, ev.Unknown) else e.TYPE


@dataclass(frozen=True, slots=True)
class Auth:
    """An authorisation to consume (what the lane core's ``CommitAuthorisation`` carries)."""

    kind: str
    auth_id: str
    passage_id: str
    ts: datetime


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
        append, nxt, delivered = j.append, j.outbox_next, j.outbox_delivered

        def rec_append(lane_id, entries, *, authorisation=None, outbox=()):
            entries, outbox = list(entries), list(outbox)
            if recording:
                auth = None if authorisation is None else (
                    authorisation.kind, authorisation.auth_id, authorisation.passage_id, authorisation.ts)
                ops.append(("append", lane_id, [(event_type(e.event), e.ts, e.event.data) for e in entries], auth,
                            outbox))
            return append(lane_id, entries, authorisation=authorisation, outbox=outbox)

        def rec_next(target, limit=50):
            items = nxt(target, limit)
            if recording:
                ops.append(("next", target, limit))
            return items

        def rec_delivered(item_id, at):
            if recording:
                ops.append(("delivered",))
            return delivered(item_id, at)

        j.append, j.outbox_next, j.outbox_delivered = rec_append, rec_next, rec_delivered  # type: ignore[method-assign]
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
    appends = [op for op in ops if op[0] == "append" and (op[2] or op[3] or op[4])]
    shape = {
        "appends": len(appends),
        "events": sum(len(op[2]) + (op[3] is not None) for op in appends),
        "event_types": [t for op in appends for t, _, _ in op[2]],
        "outbox_items": sum(len(op[4]) for op in appends),
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
                if k in ("passage_id", "request_id", "instruction_id", "id") and isinstance(v, str):
                    found.add(v)
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    for op in ops:
        if op[0] == "append":
            for _, _, data in op[2]:
                walk(data)
            if op[3] is not None:
                found.update(op[3][1:3])
            for item in op[4]:
                walk(item.payload)
    return found


class Replayer:
    """The recorded calls again, with fresh ids and time stamps moved to now."""

    def __init__(self, ops: list[Op]) -> None:
        self.ops = ops
        self.ids = _ids(ops)
        self.t0 = next(op[2][0][1] for op in ops if op[0] == "append" and op[2])
        self.shift = timedelta(0)

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

    def fresh(self) -> dict[str, str]:
        # Ids as the daemon makes them (gatectl.ids: time-ordered); instruction ids are the
        # authority's own.
        return {old: (f"CMD-{uuid.uuid4()}" if old.startswith("CMD-") else time_ordered_id()) for old in self.ids}

    def passage(self, j: Journal, lane: str) -> None:
        m = self.fresh()
        self.shift = datetime.now(self.t0.tzinfo) - self.t0
        pending: list[dict] = []
        for op in self.ops:
            if op[0] == "append":
                _, _lane, entries, auth, outbox = op
                j.append(
                    lane,
                    [Entry.of(t, ts + self.shift, self._sub(data, m)) for t, ts, data in entries],
                    authorisation=Auth(*self._sub(auth, m)) if auth is not None else None,
                    outbox=[OutboxItem(i.target, i.kind, self._sub(i.payload, m), i.created_at + self.shift)
                            for i in outbox],
                ).result()
            elif op[0] == "next":
                pending = j.outbox_next(op[1], op[2])
            elif op[0] == "delivered" and pending:
                item = pending.pop(0)
                j.outbox_delivered(item["id"], datetime.now(self.t0.tzinfo)).result()


# ------------------------------------------------------------------ the big journal


def build_big(path: Path, ops: list[Op], passages: int, site_id: str = "demo-site") -> dict[str, Any]:
    """``passages`` passages shaped like the recorded one, by direct SQL, on four lanes:
    its events with their own ids, seqs and times, its ``passages`` row as the journal's
    fold makes it, its authorisation and its delivered outbox row."""
    started = time.monotonic()
    db = sqlite3.connect(str(path), isolation_level=None)
    db.execute("PRAGMA journal_mode=OFF")
    db.execute("PRAGMA synchronous=OFF")
    db.execute("PRAGMA cache_size=-2000000")  # 2 GB: the indexes stay in memory
    db.executescript(SCHEMA)
    Journal(path, site_id).close()  # the journal's own migrations: every column it keeps
    db.execute("PRAGMA journal_mode=OFF")
    rep = Replayer(ops)
    templates: list[tuple[str, timedelta, dict]] = []  # (type, offset from the passage's first event, fields)
    auth_tpl = None
    for op in ops:
        if op[0] == "append":
            for t, ts, data in op[2]:
                templates.append((t, ts - rep.t0, data))
            if op[3] is not None:
                kind, auth_id, pid, ts = op[3]
                auth_tpl = op[3]
                templates.append(("authorisation.committed", ts - rep.t0,
                                  {"passage_id": pid, "authorisation": {"kind": kind, "id": auth_id}}))
    assert auth_tpl is not None, "the recorded passage committed no authorisation"
    outbox_payloads = [(i.target, i.kind, i.payload) for op in ops if op[0] == "append" for i in op[4]]
    # The passage row of the template, as the journal's fold makes it: its ids and times are
    # then substituted like the events'.
    record = None
    for n, (t, dt, data) in enumerate(templates):
        st = ev.Stamped(f"e{n}", n + 1, site_id, LANES[0], (rep.t0 + dt).isoformat(), ev.decode_event(t, data))
        record = fold(record, st) if record is None or record.open else record
    assert record is not None
    row_tpl = passage_row(record)
    times = {(rep.t0 + dt).isoformat(): dt for _, dt, _ in templates}

    rng = random.Random(1)
    seq = dict.fromkeys(LANES, 0)
    tz = rep.t0.tzinfo
    start = datetime.now(tz) - timedelta(seconds=30 * passages + 86400)
    events: list[tuple] = []
    rows: list[tuple] = []
    auths: list[tuple] = []
    outbox: list[tuple] = []
    n_events = 0
    last_lift: dict[str, tuple[str, str]] = {}

    def uid(at: datetime) -> str:
        # As gatectl.ids.time_ordered_id at the moment ``at``: what the daemon journals.
        ms = int(at.timestamp() * 1000) & 0xFFFF_FFFF_FFFF
        r = rng.getrandbits(74)
        return str(uuid.UUID(int=ms << 80 | 0x7 << 76 | (r >> 62) << 64 | 0b10 << 62 | r & (1 << 62) - 1))

    def flush() -> None:
        db.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)", events)
        db.executemany(f"INSERT INTO passages ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})", rows)
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
        first_seq = seq[lane] + 1
        for type_, dt, data in templates:
            seq[lane] += 1
            ts = (t0 + dt).isoformat()
            body = {"event_id": uid(t0 + dt), "seq": seq[lane], "site_id": site_id, "lane_id": lane, "type": type_,
                    "ts": ts, **rep._sub(data, m)}
            events.append((lane, seq[lane], body["event_id"], type_, ts, json.dumps(body, ensure_ascii=False)))
        n_events += len(templates)
        opened_seq = first_seq + next(i for i, (t, _, _) in enumerate(templates) if t == "passage.opened")
        row = []
        for column, value in zip(COLUMNS, row_tpl):
            if column == "lane_id":
                value = lane
            elif column == "opened_seq":
                value = opened_seq
            elif isinstance(value, str) and value in times:
                value = (t0 + times[value]).isoformat()
            elif isinstance(value, str):
                value = m.get(value, value)
            row.append(value)
        rows.append(tuple(row))
        kind, auth_id, pid, ts = auth_tpl
        auths.append((kind, m.get(auth_id, auth_id), lane, m[pid], (t0 + (ts - rep.t0)).isoformat()))
        last_lift[lane] = (kind, m.get(auth_id, auth_id))
        for target, kind_, payload in outbox_payloads:
            outbox.append((target, lane, kind_, json.dumps(rep._sub(payload, m), ensure_ascii=False),
                           t0.isoformat(), (t0 + timedelta(seconds=20)).isoformat()))
        if len(events) >= 50_000:
            flush()
    flush()
    for lane, (kind, auth_id) in last_lift.items():
        db.execute("INSERT OR REPLACE INTO lanes (lane_id, last_lift_kind, last_lift_id) VALUES (?, ?, ?)",
                   (lane, kind, auth_id))
    db.execute("COMMIT")
    db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
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
        f"one passage = {shape['appends']} appends, {shape['events']} events, "
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
