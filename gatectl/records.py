"""Records kept beside the lanes: alarms, incidents, fault tickets, duty records and the
daily equipment ledger (R8, R9, R13, R15, R16).

Every change is a journaled event; the ``rec_*`` tables (in the journal's own SQLite
file) are a projection of the journal, kept in step by ``Records.on_events`` and caught
up from the journal after a gap or a restart, with a per-lane cursor persisted with each
projected record. The tables can always be rebuilt from the events.

Events journaled here (besides the ``event_id, seq, site_id, lane_id, type, ts``
envelope; ``lane_id`` is the lane the record belongs to, ``_site`` for site-wide ones):

- ``alarm.acknowledged`` {alarm_event_id, alarm, by, note} on the alarm's lane
- ``incident.opened`` {incident_id, kind, reason, alarm_event_id} (hand-opened: also ``by``);
  the core journals ``incident.opened`` {incident_id, kind: barrier_fault, reason} itself:
  it is linked to its ``barrier_fault`` alarm here, never doubled
- ``incident.updated`` {incident_id, account: {by, what, plate, photos, notified}}
- ``incident.closed`` {incident_id, by, summary}
- ``ticket.opened`` {ticket_id, device, lane_id, reason, source: fault|report} (report: also ``by``)
- ``ticket.advanced`` {ticket_id, from, to, by, note, ...}: ``notified`` adds
  ``parties`` [customs|park|om] and ``at``; ``fixed`` adds ``cause``, ``solution``,
  ``category`` (hardware|software|other)
- ``shift.handover`` {outgoing, incoming, notes, open_alarms, open_incidents, open_tickets} on ``_site``
- ``shift.check`` {phase: start|end, guard, remarks, devices: {"lane/device": health}} on ``_site``
- ``video.note`` {guard, note} on ``_site``
- ``equipment.daily`` {date, lane_id, device, availability, faults, faulty_s,
  frames_dropped, checks} on the device's lane

The command-line tools (``gatectl.records_cli``) never append events: the daemon keeps
each lane's ``seq`` in memory. They leave orders in the journal's ``inbox``; the daemon's
one inbox poller (``gatectl.orders``) hands them to ``Records.order`` as the API would.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time as _time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING, Annotated, Any

import structlog
from aiohttp import web
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from gatectl import events as ev
from gatectl.api import ApiRefused, Query, QueryBool, allow, caller, clamped, error, json_body, model_body, query
from gatectl.labels import ALARMS as ALARM_ZH
from gatectl.labels import CATEGORIES, INCIDENT_KINDS, PARTIES
from gatectl.labels import TICKET_STATES as TICKET_STATE_ZH
from gatectl.events import Stamped
from gatectl.journal import JournalError, WriteTx
from gatectl.limits import FreeText, Identifier, LaneId, Plate, single_line
from gatectl.orders import OrderRefused, actor_of
from gatectl.refusals import decode_row, report_damaged_row

if TYPE_CHECKING:  # pragma: no cover
    from gatectl.config import LaneConfig, SiteConfig
    from gatectl.service import Site

log = structlog.get_logger("gatectl.records")

SITE_LANE = "_site"  # gatectl.service.SITE_LANE, without importing the service here
ENVELOPE = ("event_id", "seq", "site_id", "lane_id", "type", "ts")

#: How often ``run`` looks at the inbox, the clock and the devices.
POLL_S = 1.0
#: How often frame-drop counters are sampled into the day's total.
SAMPLE_S = 30.0
#: A fault open when the daemon stopped is closed at the restart unless the device is
#: still faulty once the lane has looked (at the latest after this long).
RESTART_GRACE_S = 60.0
#: Days the equipment ledger catches up at most per pass (the rest on the next passes),
#: so a long catch-up never holds the event loop for long.
LEDGER_DAYS_PER_PASS = 3
#: How far back a first run writes equipment ledger days.
LEDGER_MAX_BACKFILL_DAYS = 366

#: Alarms that open an incident record (R8, R9). barrier_fault: the core opens it.
INCIDENT_ALARMS = ("forced_passage", "tailgating", "barrier_fault")

TICKET_STATES = tuple(TICKET_STATE_ZH)
#: The 故障处理单 flow (regulation section 4): the only moves a ticket can make.
#: fixed -> diagnosing: the fix did not hold; the time to fix then runs to the next fix.
TICKET_TRANSITIONS: dict[str, tuple[str, ...]] = {
    "reported": ("notified",),
    "notified": ("diagnosing",),
    "diagnosing": ("fixed",),
    "fixed": ("closed", "diagnosing"),
    "closed": (),
}
#: Holds a guard may put down to a device or the network (anything else is the
#: declared data or the lane's rules, R16, and opens no ticket).
FAULT_HOLDS = ("device_fault", "journal_error", "lift_interrupted", "no_stable_weight", "no_authority")

RECORD_TYPES = frozenset({
    "alarm.raised", "alarm.acknowledged",
    "incident.opened", "incident.updated", "incident.closed",
    "fault.opened", "fault.closed",
    "ticket.opened", "ticket.advanced",
    "shift.handover", "shift.check", "video.note",
    "equipment.daily",
    "drill.ended",
})
DUTY_TYPES = ("shift.handover", "shift.check", "video.note")

SCHEMA = """
CREATE TABLE IF NOT EXISTS rec_cursor (lane_id TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS rec_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rec_alarms (
    event_id        TEXT PRIMARY KEY,
    lane_id         TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    alarm           TEXT NOT NULL,
    ts              TEXT NOT NULL,
    details         TEXT NOT NULL,
    acknowledged_at TEXT,
    acknowledged_by TEXT,
    ack_note        TEXT
);
CREATE INDEX IF NOT EXISTS rec_alarms_open ON rec_alarms (acknowledged_at, ts);
CREATE INDEX IF NOT EXISTS rec_alarms_kind ON rec_alarms (alarm, lane_id, seq);
CREATE TABLE IF NOT EXISTS rec_incidents (
    incident_id    TEXT PRIMARY KEY,
    lane_id        TEXT NOT NULL,
    kind           TEXT NOT NULL,
    reason         TEXT,
    alarm_event_id TEXT,
    source         TEXT NOT NULL,          -- core | alarm | guard
    opened_at      TEXT NOT NULL,
    opened_by      TEXT,
    accounts       TEXT NOT NULL DEFAULT '[]',
    closed_at      TEXT,
    closed_by      TEXT,
    summary        TEXT
);
CREATE INDEX IF NOT EXISTS rec_incidents_alarm ON rec_incidents (alarm_event_id);
CREATE TABLE IF NOT EXISTS rec_tickets (
    ticket_id    TEXT PRIMARY KEY,
    lane_id      TEXT NOT NULL,
    device       TEXT NOT NULL,
    device_key   TEXT NOT NULL,
    reason       TEXT,
    source       TEXT NOT NULL,            -- fault | report
    reported_by  TEXT,
    state        TEXT NOT NULL,
    opened_at    TEXT NOT NULL,
    opened_epoch REAL NOT NULL,
    notified     TEXT,
    cause        TEXT,
    solution     TEXT,
    category     TEXT,
    fixed_at     TEXT,
    fixed_epoch  REAL,
    closed_at    TEXT,
    history      TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS rec_tickets_device ON rec_tickets (device_key, state);
CREATE TABLE IF NOT EXISTS rec_fault_spans (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    lane_id         TEXT NOT NULL,
    device          TEXT NOT NULL,
    device_key      TEXT NOT NULL,
    reason          TEXT,
    opened_event_id TEXT NOT NULL UNIQUE,
    opened_epoch    REAL NOT NULL,
    closed_epoch    REAL,
    closed_how      TEXT,                  -- fault.closed | restart
    ticket_id       TEXT,
    drill           INTEGER NOT NULL DEFAULT 0  -- opened during a drill: a ticket only if it outlasts it
);
CREATE INDEX IF NOT EXISTS rec_spans_device ON rec_fault_spans (lane_id, device, opened_epoch);
CREATE INDEX IF NOT EXISTS rec_spans_ticket ON rec_fault_spans (ticket_id);
CREATE TABLE IF NOT EXISTS rec_duty (
    event_id TEXT PRIMARY KEY,
    type     TEXT NOT NULL,
    seq      INTEGER NOT NULL,
    ts       TEXT NOT NULL,
    epoch    REAL NOT NULL,
    body     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS rec_duty_type ON rec_duty (type, epoch);
CREATE TABLE IF NOT EXISTS rec_equipment (
    date           TEXT NOT NULL,
    lane_id        TEXT NOT NULL,
    device         TEXT NOT NULL,
    availability   REAL NOT NULL,
    faults         INTEGER NOT NULL,
    faulty_s       REAL NOT NULL,
    frames_dropped INTEGER NOT NULL,
    checks         INTEGER NOT NULL,
    event_id       TEXT NOT NULL,
    PRIMARY KEY (date, lane_id, device)
);
-- Frames dropped per device and day, sampled from the running daemon's driver counters.
CREATE TABLE IF NOT EXISTS rec_dropped (
    date    TEXT NOT NULL,
    lane_id TEXT NOT NULL,
    device  TEXT NOT NULL,
    dropped INTEGER NOT NULL,
    PRIMARY KEY (date, lane_id, device)
);
"""


class RecordError(Exception):
    """An order refused: nothing was journaled. ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, code: str, message: str, message_zh: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.message_zh = message_zh

    def to_dict(self) -> dict[str, Any]:
        return {"status": "refused", "code": self.code, "message": self.message, "message_zh": self.message_zh,
                "http_status": self.status}


def _epoch(ts: str) -> float:
    return datetime.fromisoformat(ts).timestamp()


def _details(ev: dict[str, Any], *drop: str) -> dict[str, Any]:
    return {k: v for k, v in ev.items() if k not in ENVELOPE and k not in drop}


def _text(payload: dict[str, Any], key: str, *, required: bool = True, max_len: int = 4000,
          label_zh: str = "") -> str | None:
    value = payload.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise RecordError(422, "missing", f"{key!r} is required", f"缺少{label_zh or key}")
        return None
    if not isinstance(value, str):
        raise RecordError(422, "malformed", f"{key!r} must be text", f"{label_zh or key}必须是文本")
    value = value.strip()
    if len(value) > max_len:
        raise RecordError(422, "malformed", f"{key!r} is longer than {max_len} characters", f"{label_zh or key}过长")
    return value


def _texts(payload: dict[str, Any], key: str, label_zh: str = "") -> list[str]:
    value = payload.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        value = [v for v in (s.strip() for s in value.split(",")) if v]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise RecordError(422, "malformed", f"{key!r} must be a list of texts", f"{label_zh or key}必须是文本列表")
    return [v.strip() for v in value]


def lane_devices(lane: "LaneConfig") -> list[str]:
    """The devices of a configured lane as its snapshot and fault events name them."""
    devices = ["card_reader"]
    if lane.weighbridge is not None:
        devices.append("weighbridge")
    devices += sorted({p.module for _, p in lane.points.items()})
    devices.append("barrier")
    return devices


def day_bounds(day: date, tz) -> tuple[datetime, datetime]:
    """Midnight to midnight of ``day`` in the site's time zone."""
    start = datetime.combine(day, time(0), tzinfo=tz)
    return start, datetime.combine(day + timedelta(days=1), time(0), tzinfo=tz)


class RecordStore:
    """The record tables on one SQLite connection: schema, projection, queries, and the
    checks every order passes before it is journaled (shared by the daemon and the CLI)."""

    def __init__(self, db: sqlite3.Connection, config: "SiteConfig") -> None:
        self.db = db
        self.config = config
        self.tz = config.site.tz
        self.cursor: dict[str, int] = {}
        self._ready = False
        self._shared = set(config.io_modules) | {"journal"}

    # ------------------------------------------------------------------ plumbing

    def ensure_schema(self) -> None:
        if self._ready:
            return
        # Statement by statement: executescript would commit the journal job it runs in.
        for statement in SCHEMA.split(";"):
            if statement.strip():
                self.db.execute(statement)
        spans = {r[1] for r in self.db.execute("PRAGMA table_info(rec_fault_spans)")}
        if "drill" not in spans:  # tables made before drills
            self.db.execute("ALTER TABLE rec_fault_spans ADD COLUMN drill INTEGER NOT NULL DEFAULT 0")
        self.cursor = dict(self.db.execute("SELECT lane_id, seq FROM rec_cursor").fetchall())
        self._ready = True

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """A transaction, or the one in progress (a journal job's)."""
        db = self.db
        if db.in_transaction:
            yield db
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def rows(self, sql: str, args: Iterable[Any] = ()) -> list[dict[str, Any]]:
        cur = self.db.execute(sql, tuple(args))
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]

    def device_key(self, lane_id: str | None, device: str) -> str:
        """One physical device: IO modules and the journal are shared by the lanes."""
        if device in self._shared or not lane_id or lane_id == SITE_LANE:
            return device
        return f"{lane_id}/{device}"

    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM rec_meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO rec_meta (key, value) VALUES (?, ?)", (key, value))

    # ---------------------------------------------------------------- projection

    def ingest(self, events: Iterable[dict[str, Any]]) -> bool:
        """Project journaled events (idempotent: those at or below the lane's cursor are
        skipped; a gap is filled from the journal). True if a record table changed."""
        changed = False
        batch: list[dict[str, Any]] = []
        try:
            for ev in events:
                lane, seq = ev.get("lane_id"), ev.get("seq")
                if not isinstance(lane, str) or not isinstance(seq, int):
                    continue
                cur = self.cursor.get(lane, 0)
                if seq <= cur:
                    continue
                if seq > cur + 1:
                    changed |= self._commit(batch)
                    batch = []
                    changed |= self.catch_up(lane)
                    continue
                self.cursor[lane] = seq
                if ev.get("type") in RECORD_TYPES:
                    batch.append(ev)
            changed |= self._commit(batch)
        except sqlite3.Error:
            # Forget what we believed projected; the next event of each lane finds the gap.
            # (In place: the daemon's Records shares this dict with every store it makes.)
            saved = dict(self.db.execute("SELECT lane_id, seq FROM rec_cursor").fetchall())
            self.cursor.clear()
            self.cursor.update(saved)
            raise
        return changed

    def _commit(self, batch: list[dict[str, Any]]) -> bool:
        if not batch:
            return False
        with self.tx() as db:
            for ev in batch:
                self._project_one(ev)
            for lane in {ev["lane_id"] for ev in batch}:
                db.execute("INSERT OR REPLACE INTO rec_cursor (lane_id, seq) VALUES (?, ?)", (lane, self.cursor[lane]))
        return True

    def catch_up(self, lane: str | None = None) -> bool:
        """Project what the journal holds beyond the cursor (one lane, or every lane)."""
        if lane is None:
            lanes = [r[0] for r in self.db.execute("SELECT DISTINCT lane_id FROM events").fetchall()]
            changed = False
            for one in lanes:
                changed |= self.catch_up(one)
            return changed
        cur = self.cursor.get(lane, 0)
        top = self.db.execute("SELECT MAX(seq) FROM events WHERE lane_id = ?", (lane,)).fetchone()[0]
        if top is None or top <= cur:
            return False
        marks = ",".join("?" * len(RECORD_TYPES))
        bodies = self.db.execute(
            f"SELECT seq, CAST(body AS BLOB) FROM events WHERE lane_id = ? AND seq > ? AND seq <= ?"
            f" AND type IN ({marks}) ORDER BY seq",
            (lane, cur, top, *sorted(RECORD_TYPES)),
        ).fetchall()
        with self.tx() as db:
            for seq, body in bodies:
                try:
                    event = decode_row(bytes(body) if body is not None else b"")
                except ValueError as exc:
                    # Reported once with file, lane and seq; the records after it still count.
                    report_damaged_row(self._path(), lane, seq, str(exc), where="records")
                    continue
                self._project_one(event)
            db.execute("INSERT OR REPLACE INTO rec_cursor (lane_id, seq) VALUES (?, ?)", (lane, top))
        self.cursor[lane] = top
        if bodies:
            log.info("records caught up from the journal", lane=lane, records=len(bodies), seq=top)
        return bool(bodies)

    def _path(self) -> str:
        row = self.db.execute("PRAGMA database_list").fetchone()
        return str(row[2]) if row and row[2] else "(journal)"

    def save_cursors(self) -> None:
        """Persist how far every lane was read (events that changed no record included)."""
        with self.tx() as db:
            db.executemany("INSERT OR REPLACE INTO rec_cursor (lane_id, seq) VALUES (?, ?)", list(self.cursor.items()))

    def _project_one(self, ev: dict[str, Any]) -> None:
        try:
            self._project(ev)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            # A malformed record must not stall the projection of everything after it.
            log.error("record event not projected", event_id=ev.get("event_id"), type=ev.get("type"), error=repr(exc))

    def _project(self, ev: dict[str, Any]) -> None:
        t = ev["type"]
        db = self.db
        lane, ts = ev["lane_id"], ev["ts"]
        if t == "alarm.raised":
            db.execute(
                "INSERT OR IGNORE INTO rec_alarms (event_id, lane_id, seq, alarm, ts, details) VALUES (?, ?, ?, ?, ?, ?)",
                (ev["event_id"], lane, ev["seq"], str(ev.get("alarm")), ts,
                 json.dumps(_details(ev, "alarm"), ensure_ascii=False)),
            )
        elif t == "alarm.acknowledged":
            db.execute(
                "UPDATE rec_alarms SET acknowledged_at = ?, acknowledged_by = ?, ack_note = ?"
                " WHERE event_id = ? AND acknowledged_at IS NULL",
                (ts, ev.get("by"), ev.get("note"), ev.get("alarm_event_id")),
            )
        elif t == "incident.opened":
            self._project_incident(ev)
        elif t == "incident.updated":
            row = db.execute("SELECT accounts FROM rec_incidents WHERE incident_id = ?", (ev.get("incident_id"),)).fetchone()
            if row is not None and ev["event_id"] not in row[0]:
                accounts = json.loads(row[0])
                accounts.append({"ts": ts, "event_id": ev["event_id"], **(ev.get("account") or {})})
                db.execute("UPDATE rec_incidents SET accounts = ? WHERE incident_id = ?",
                           (json.dumps(accounts, ensure_ascii=False), ev["incident_id"]))
        elif t == "incident.closed":
            db.execute(
                "UPDATE rec_incidents SET closed_at = ?, closed_by = ?, summary = ? WHERE incident_id = ? AND closed_at IS NULL",
                (ts, ev.get("by"), ev.get("summary"), ev.get("incident_id")),
            )
        elif t == "fault.opened":
            device = str(ev.get("device"))
            still = db.execute(
                "SELECT id FROM rec_fault_spans WHERE lane_id = ? AND device = ? AND closed_epoch IS NULL", (lane, device)
            ).fetchone()
            if still is None:  # a fault re-reported after a restart continues its span
                key = self.device_key(lane, device)
                db.execute(
                    "INSERT OR IGNORE INTO rec_fault_spans (lane_id, device, device_key, reason, opened_event_id,"
                    " opened_epoch, ticket_id, drill) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (lane, device, key, ev.get("reason"), ev["event_id"], _epoch(ts), self._open_ticket_for(key),
                     int(bool(ev.get("drill")))),
                )
        elif t == "fault.closed":
            db.execute(
                "UPDATE rec_fault_spans SET closed_epoch = ?, closed_how = 'fault.closed'"
                " WHERE lane_id = ? AND device = ? AND closed_epoch IS NULL",
                (_epoch(ts), lane, str(ev.get("device"))),
            )
        elif t == "drill.ended":
            # A fault that outlasts the drill is a real one: from now on it gets its ticket.
            db.execute("UPDATE rec_fault_spans SET drill = 0 WHERE lane_id = ? AND drill = 1 AND closed_epoch IS NULL",
                       (lane,))
        elif t == "ticket.opened":
            tid = ev.get("ticket_id")
            ticket_lane = lane
            key = self.device_key(ticket_lane, str(ev.get("device")))
            history = [{"to": "reported", "ts": ts, "by": ev.get("by"), "event_id": ev["event_id"]}]
            db.execute(
                "INSERT OR IGNORE INTO rec_tickets (ticket_id, lane_id, device, device_key, reason, source, reported_by,"
                " state, opened_at, opened_epoch, history) VALUES (?, ?, ?, ?, ?, ?, ?, 'reported', ?, ?, ?)",
                (tid, ticket_lane, str(ev.get("device")), key, ev.get("reason"), ev.get("source") or "fault",
                 ev.get("by"), ts, _epoch(ts), json.dumps(history, ensure_ascii=False)),
            )
            db.execute("UPDATE rec_fault_spans SET ticket_id = ? WHERE device_key = ? AND ticket_id IS NULL", (tid, key))
        elif t == "ticket.advanced":
            self._project_advance(ev)
        elif t in DUTY_TYPES:
            db.execute(
                "INSERT OR IGNORE INTO rec_duty (event_id, type, seq, ts, epoch, body) VALUES (?, ?, ?, ?, ?, ?)",
                (ev["event_id"], t, ev["seq"], ts, _epoch(ts), json.dumps(ev, ensure_ascii=False)),
            )
        elif t == "equipment.daily":
            db.execute(
                "INSERT OR REPLACE INTO rec_equipment (date, lane_id, device, availability, faults, faulty_s,"
                " frames_dropped, checks, event_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (ev["date"], lane, ev["device"], ev["availability"], ev["faults"], ev["faulty_s"],
                 ev["frames_dropped"], ev["checks"], ev["event_id"]),
            )
            through = self.meta("ledger_through")
            if through is None or ev["date"] > through:
                self.set_meta("ledger_through", ev["date"])

    def _project_incident(self, ev: dict[str, Any]) -> None:
        lane = ev["lane_id"]
        if "alarm_event_id" in ev:
            alarm_id, source = ev["alarm_event_id"], ("alarm" if ev["alarm_event_id"] else "guard")
        else:
            # The core's own incident for a barrier fault: link it to the alarm just before it.
            source, alarm_id = "core", None
            if ev.get("kind") == "barrier_fault":
                row = self.db.execute(
                    "SELECT a.event_id FROM rec_alarms a WHERE a.lane_id = ? AND a.alarm = 'barrier_fault' AND a.seq < ?"
                    " AND NOT EXISTS (SELECT 1 FROM rec_incidents i WHERE i.alarm_event_id = a.event_id)"
                    " ORDER BY a.seq DESC LIMIT 1",
                    (lane, ev["seq"]),
                ).fetchone()
                alarm_id = row[0] if row else None
        self.db.execute(
            "INSERT OR IGNORE INTO rec_incidents (incident_id, lane_id, kind, reason, alarm_event_id, source, opened_at,"
            " opened_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (ev.get("incident_id"), lane, str(ev.get("kind")), ev.get("reason"), alarm_id, source, ev["ts"], ev.get("by")),
        )

    def _project_advance(self, ev: dict[str, Any]) -> None:
        tid = ev.get("ticket_id")
        row = self.db.execute("SELECT state, history FROM rec_tickets WHERE ticket_id = ?", (tid,)).fetchone()
        if row is None or row[0] != ev.get("from"):
            log.warning("ticket step does not follow its ticket; not projected", ticket_id=tid, event_id=ev["event_id"])
            return
        to, ts = ev.get("to"), ev["ts"]
        history = json.loads(row[1])
        history.append({"ts": ts, "event_id": ev["event_id"], **_details(ev, "ticket_id")})
        sets: dict[str, Any] = {"state": to, "history": json.dumps(history, ensure_ascii=False)}
        if to == "notified":
            sets["notified"] = json.dumps({p: ev.get("at") or ts for p in ev.get("parties") or []}, ensure_ascii=False)
        elif to == "fixed":
            sets.update(cause=ev.get("cause"), solution=ev.get("solution"), category=ev.get("category"),
                        fixed_at=ts, fixed_epoch=_epoch(ts))
        elif to == "diagnosing" and row[0] == "fixed":
            sets.update(fixed_at=None, fixed_epoch=None)
        elif to == "closed":
            sets["closed_at"] = ts
        cols = ", ".join(f"{k} = ?" for k in sets)
        self.db.execute(f"UPDATE rec_tickets SET {cols} WHERE ticket_id = ?", (*sets.values(), tid))

    def _open_ticket_for(self, device_key: str) -> str | None:
        row = self.db.execute(
            "SELECT ticket_id FROM rec_tickets WHERE device_key = ? AND state != 'closed' ORDER BY opened_epoch LIMIT 1",
            (device_key,),
        ).fetchone()
        return row[0] if row else None

    # ------------------------------------------------------- what is still to do

    def alarms_needing_incident(self) -> list[dict[str, Any]]:
        """Incident alarms (R8, R9) with no incident yet. A barrier_fault waits for the
        core's own incident, which follows its alarm at once; only if the lane went on
        without one is it opened here."""
        out = []
        for a in self.rows(
            "SELECT a.event_id, a.lane_id, a.seq, a.alarm, a.details FROM rec_alarms a"
            " WHERE a.alarm IN ('forced_passage', 'tailgating', 'barrier_fault')"
            " AND json_extract(a.details, '$.drill') IS NOT 1"  # a drill's alarm is no real incident
            " AND NOT EXISTS (SELECT 1 FROM rec_incidents i WHERE i.alarm_event_id = a.event_id) ORDER BY a.ts"
        ):
            if a["alarm"] == "barrier_fault" and self.cursor.get(a["lane_id"], 0) <= a["seq"]:
                continue
            out.append(a)
        return out

    def spans_needing_ticket(self) -> list[dict[str, Any]]:
        """The first fault of every device that has faults but no ticket open for them."""
        seen: dict[str, dict[str, Any]] = {}
        for s in self.rows("SELECT * FROM rec_fault_spans WHERE ticket_id IS NULL AND drill = 0"
                           " ORDER BY opened_epoch, id"):
            seen.setdefault(s["device_key"], s)
        return list(seen.values())

    def attach_spans(self, device_key: str, ticket_id: str) -> None:
        with self.tx() as db:
            db.execute("UPDATE rec_fault_spans SET ticket_id = ? WHERE device_key = ? AND ticket_id IS NULL",
                       (ticket_id, device_key))

    # -------------------------------------------------------------- queries

    def alarm(self, event_id: str) -> dict[str, Any] | None:
        rows = self.rows("SELECT * FROM rec_alarms WHERE event_id = ?", (event_id,))
        return self._alarm_view(rows[0]) if rows else None

    def alarms(self, open_only: bool = False, lane: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM rec_alarms", []
        where = []
        if open_only:
            where.append("acknowledged_at IS NULL")
        if lane:
            where.append("lane_id = ?")
            args.append(lane)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY ts DESC, seq DESC LIMIT ?"
        args.append(limit)
        return [self._alarm_view(r) for r in self.rows(sql, args)]

    def _alarm_view(self, r: dict[str, Any]) -> dict[str, Any]:
        r = dict(r)
        r["details"] = json.loads(r["details"])
        r["alarm_zh"] = ALARM_ZH.get(r["alarm"], r["alarm"])
        r["open"] = r["acknowledged_at"] is None
        r["drill"] = bool(r["details"].get("drill"))  # raised during a drill: shown as one, no incident
        inc = self.db.execute("SELECT incident_id FROM rec_incidents WHERE alarm_event_id = ?", (r["event_id"],)).fetchone()
        r["incident_id"] = inc[0] if inc else None
        return r

    def incident(self, incident_id: str) -> dict[str, Any] | None:
        rows = self.rows("SELECT * FROM rec_incidents WHERE incident_id = ?", (incident_id,))
        return self._incident_view(rows[0]) if rows else None

    def incidents(self, open_only: bool = False, limit: int = 200) -> list[dict[str, Any]]:
        sql = "SELECT * FROM rec_incidents" + (" WHERE closed_at IS NULL" if open_only else "")
        return [self._incident_view(r) for r in self.rows(sql + " ORDER BY opened_at DESC, incident_id DESC LIMIT ?", (limit,))]

    @staticmethod
    def _incident_view(r: dict[str, Any]) -> dict[str, Any]:
        r = dict(r)
        r["accounts"] = json.loads(r["accounts"])
        r["kind_zh"] = INCIDENT_KINDS.get(r["kind"], r["kind"])
        r["open"] = r["closed_at"] is None
        return r

    def ticket(self, ticket_id: str) -> dict[str, Any] | None:
        rows = self.rows("SELECT * FROM rec_tickets WHERE ticket_id = ?", (ticket_id,))
        return self._ticket_view(rows[0]) if rows else None

    def tickets(self, open_only: bool = False, device: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        sql, args, where = "SELECT * FROM rec_tickets", [], []
        if open_only:
            where.append("state != 'closed'")
        if device:
            where.append("(device_key = ? OR device = ?)")
            args += [device, device]
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY opened_epoch DESC, ticket_id DESC LIMIT ?"
        args.append(limit)
        return [self._ticket_view(r) for r in self.rows(sql, args)]

    def _ticket_view(self, r: dict[str, Any]) -> dict[str, Any]:
        r = dict(r)
        r["history"] = json.loads(r["history"])
        r["notified"] = json.loads(r["notified"]) if r["notified"] else None
        r["state_zh"] = TICKET_STATE_ZH.get(r["state"], r["state"])
        r["next"] = list(TICKET_TRANSITIONS.get(r["state"], ()))
        r["time_to_fix_s"] = None if r["fixed_epoch"] is None else round(r["fixed_epoch"] - r["opened_epoch"], 3)
        r["faults"] = self.db.execute("SELECT COUNT(*) FROM rec_fault_spans WHERE ticket_id = ?", (r["ticket_id"],)).fetchone()[0]
        return r

    def open_items(self) -> dict[str, list[str]]:
        """What a handover carries over: unacknowledged alarms, open incidents and tickets.
        A drill's alarms are not carried over: nothing real is left open by them."""
        return {
            "open_alarms": [r[0] for r in self.db.execute(
                "SELECT event_id FROM rec_alarms WHERE acknowledged_at IS NULL"
                " AND json_extract(details, '$.drill') IS NOT 1 ORDER BY ts, seq")],
            "open_incidents": [r[0] for r in self.db.execute(
                "SELECT incident_id FROM rec_incidents WHERE closed_at IS NULL ORDER BY opened_at")],
            "open_tickets": [r[0] for r in self.db.execute(
                "SELECT ticket_id FROM rec_tickets WHERE state != 'closed' ORDER BY opened_epoch")],
        }

    def duty(self, types: Iterable[str] = DUTY_TYPES, limit: int = 100) -> list[dict[str, Any]]:
        types = list(types)
        marks = ",".join("?" * len(types))
        return [json.loads(r[0]) for r in self.db.execute(
            f"SELECT body FROM rec_duty WHERE type IN ({marks}) ORDER BY epoch DESC, seq DESC LIMIT ?", (*types, limit))]

    def resolve(self, what: str, ident: str) -> str:
        """An alarm event id or incident id from a unique prefix (at least 6 characters)."""
        table, col = {"alarm": ("rec_alarms", "event_id"), "incident": ("rec_incidents", "incident_id"),
                      "ticket": ("rec_tickets", "ticket_id")}[what]
        if self.db.execute(f"SELECT 1 FROM {table} WHERE {col} = ?", (ident,)).fetchone():
            return ident
        if len(ident) >= 6:
            like = ident.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            found = [r[0] for r in self.db.execute(f"SELECT {col} FROM {table} WHERE {col} LIKE ? ESCAPE '\\' LIMIT 2",
                                                   (like,))]
            if len(found) == 1:
                return found[0]
        return ident

    # ------------------------------------------------------------- figures (R15)

    def figures(self, start: date, end: date) -> dict[str, Any]:
        """Ticket figures per device for the yearly O&M review: tickets opened from
        ``start`` to ``end`` (site days, inclusive), how many were fixed, mean and max
        time to fix (opened -> fixed, seconds), by category; and tickets open now."""
        s, _ = day_bounds(start, self.tz)
        _, e = day_bounds(end, self.tz)
        per: dict[str, dict[str, Any]] = {}

        def row(key: str, device: str, lane: str) -> dict[str, Any]:
            return per.setdefault(key, {"device": key, "device_name": device, "lane_id": lane, "tickets": 0,
                                        "fixed": 0, "mean_fix_s": None, "max_fix_s": None, "open_now": 0,
                                        "categories": {c: 0 for c in CATEGORIES}, "_fix": []})

        for t in self.rows("SELECT * FROM rec_tickets WHERE opened_epoch >= ? AND opened_epoch < ?",
                           (s.timestamp(), e.timestamp())):
            r = row(t["device_key"], t["device"], t["lane_id"])
            r["tickets"] += 1
            if t["fixed_epoch"] is not None:
                r["_fix"].append(t["fixed_epoch"] - t["opened_epoch"])
                if t["category"] in r["categories"]:
                    r["categories"][t["category"]] += 1
        for t in self.rows("SELECT device_key, device, lane_id FROM rec_tickets WHERE state != 'closed'"):
            row(t["device_key"], t["device"], t["lane_id"])["open_now"] += 1
        all_fix: list[float] = []
        for r in per.values():
            fix = r.pop("_fix")
            all_fix += fix
            r["fixed"] = len(fix)
            if fix:
                r["mean_fix_s"] = round(sum(fix) / len(fix), 3)
                r["max_fix_s"] = round(max(fix), 3)
        devices = sorted(per.values(), key=lambda r: r["device"])
        total = {
            "tickets": sum(r["tickets"] for r in devices),
            "fixed": len(all_fix),
            "mean_fix_s": round(sum(all_fix) / len(all_fix), 3) if all_fix else None,
            "max_fix_s": round(max(all_fix), 3) if all_fix else None,
            "open_now": sum(r["open_now"] for r in devices),
        }
        return {"from": start.isoformat(), "to": end.isoformat(), "devices": devices, "total": total}

    # ---------------------------------------------------- daily equipment ledger

    def equipment(self, day: date) -> list[dict[str, Any]]:
        return self.rows("SELECT * FROM rec_equipment WHERE date = ? ORDER BY lane_id, device", (day.isoformat(),))

    def compute_equipment(self, day: date, now: datetime | None = None) -> list[dict[str, Any]]:
        """One row per device of every lane for ``day`` (site time): availability (share
        of the day not faulty), faults opened that day, seconds faulty, frames dropped, and
        shift checks done that day. A day not over yet counts up to ``now``."""
        start, end = day_bounds(day, self.tz)
        s, e = start.timestamp(), end.timestamp()
        stop = min(e, now.timestamp()) if now is not None else e
        length = max(stop - s, 0.0)
        checks = self.db.execute(
            "SELECT COUNT(*) FROM rec_duty WHERE type = 'shift.check' AND epoch >= ? AND epoch < ?", (s, e)
        ).fetchone()[0]
        devices: dict[tuple[str, str], None] = {}
        for lane in self.config.lanes:
            for dev in lane_devices(lane):
                devices[(lane.id, dev)] = None
        for lane_id, dev in self.db.execute(
            "SELECT DISTINCT lane_id, device FROM rec_fault_spans WHERE opened_epoch < ? AND"
            " (closed_epoch IS NULL OR closed_epoch > ?)", (e, s)
        ):
            devices[(lane_id, dev)] = None
        for lane_id, dev in self.db.execute("SELECT lane_id, device FROM rec_dropped WHERE date = ?", (day.isoformat(),)):
            devices[(lane_id, dev)] = None
        out = []
        for lane_id, dev in sorted(devices):
            spans = self.db.execute(
                "SELECT opened_epoch, closed_epoch FROM rec_fault_spans WHERE lane_id = ? AND device = ?"
                " AND opened_epoch < ? AND (closed_epoch IS NULL OR closed_epoch > ?) ORDER BY opened_epoch",
                (lane_id, dev, e, s),
            ).fetchall()
            faults = sum(1 for o, _ in spans if s <= o < e)
            faulty, reach = 0.0, s
            for o, c in spans:  # merged, clipped to [s, stop)
                lo, hi = max(o, reach, s), min(c if c is not None else stop, stop)
                if hi > lo:
                    faulty += hi - lo
                    reach = hi
            dropped = self.db.execute(
                "SELECT dropped FROM rec_dropped WHERE date = ? AND lane_id = ? AND device = ?",
                (day.isoformat(), lane_id, dev),
            ).fetchone()
            out.append({
                "date": day.isoformat(), "lane_id": lane_id, "device": dev,
                "availability": round(1.0 - faulty / length, 6) if length > 0 else 1.0,
                "faults": faults, "faulty_s": round(faulty, 3),
                "frames_dropped": dropped[0] if dropped else 0, "checks": checks,
            })
        return out

    def add_dropped(self, day: date, deltas: dict[tuple[str, str], int]) -> None:
        if not deltas:
            return
        with self.tx() as db:
            for (lane_id, dev), n in deltas.items():
                db.execute(
                    "INSERT INTO rec_dropped (date, lane_id, device, dropped) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (date, lane_id, device) DO UPDATE SET dropped = dropped + excluded.dropped",
                    (day.isoformat(), lane_id, dev, n),
                )

    def first_event_day(self) -> date | None:
        row = self.db.execute("SELECT MIN(ts) FROM events").fetchone()
        return datetime.fromisoformat(row[0]).astimezone(self.tz).date() if row and row[0] else None

    # ------------------------------------------------------------ order checks

    def next_id(self, prefix: str, now: datetime) -> str:
        table, col = {"INC": ("rec_incidents", "incident_id"), "FT": ("rec_tickets", "ticket_id")}[prefix]
        stem = f"{prefix}-{now.astimezone(self.tz):%Y%m%d}-"
        n = self.db.execute(f"SELECT COUNT(*) FROM {table} WHERE {col} LIKE ?", (stem + "%",)).fetchone()[0] + 1
        while self.db.execute(f"SELECT 1 FROM {table} WHERE {col} = ?", (f"{stem}{n:03d}",)).fetchone():
            n += 1
        return f"{stem}{n:03d}"

    def _lane(self, payload: dict[str, Any], key: str = "lane_id") -> str | None:
        lane = _text(payload, key, required=False, max_len=64, label_zh="通道")
        if lane is not None and lane != SITE_LANE and lane not in {l.id for l in self.config.lanes}:
            raise RecordError(404, "unknown_lane", f"unknown lane {lane!r}", f"没有通道 {lane}")
        return lane

    def plan(self, kind: str, payload: dict[str, Any], now: datetime) -> tuple[str, str, dict[str, Any]]:
        """Check an order against the records; return the event to journal as (lane, type,
        data). Raises RecordError, having changed nothing."""
        if not isinstance(payload, dict):
            raise RecordError(422, "malformed", "the order must be a JSON object", "请求必须是 JSON 对象")
        planner = getattr(self, "_plan_" + kind.replace(".", "_"), None)
        if planner is None:
            raise RecordError(400, "unknown_order", f"unknown order {kind!r}", f"未知操作 {kind}")
        return planner(payload, now)

    def _plan_alarm_ack(self, p: dict[str, Any], now: datetime):
        event_id = _text(p, "event_id", max_len=64, label_zh="告警编号")
        alarm = self.alarm(event_id)
        if alarm is None:
            raise RecordError(404, "unknown_alarm", f"no alarm {event_id!r}", f"没有告警 {event_id}")
        if alarm["acknowledged_at"] is not None:
            raise RecordError(409, "already_acknowledged",
                              f"alarm {event_id} was acknowledged at {alarm['acknowledged_at']} by {alarm['acknowledged_by']}",
                              f"该告警已由{alarm['acknowledged_by']}确认")
        by = _text(p, "by", max_len=100, label_zh="确认人")
        note = _text(p, "note", label_zh="处置说明")
        return alarm["lane_id"], "alarm.acknowledged", {"alarm_event_id": event_id, "alarm": alarm["alarm"],
                                                        "by": by, "note": note}

    def _plan_incident_open(self, p: dict[str, Any], now: datetime):
        lane = self._lane(p) or SITE_LANE
        kind = _text(p, "kind", max_len=40, label_zh="事件类型")
        if kind not in INCIDENT_KINDS:
            raise RecordError(422, "malformed", f"kind must be one of {', '.join(INCIDENT_KINDS)}",
                              "事件类型须为：" + "、".join(f"{k}（{v}）" for k, v in INCIDENT_KINDS.items()))
        reason = _text(p, "reason", label_zh="事由")
        by = _text(p, "by", max_len=100, label_zh="记录人")
        return lane, "incident.opened", {"incident_id": self.next_id("INC", now), "kind": kind, "reason": reason,
                                         "alarm_event_id": None, "by": by}

    def _open_incident(self, p: dict[str, Any]) -> dict[str, Any]:
        incident_id = _text(p, "incident_id", max_len=64, label_zh="事件编号")
        inc = self.incident(incident_id)
        if inc is None:
            raise RecordError(404, "unknown_incident", f"no incident {incident_id!r}", f"没有事件 {incident_id}")
        if inc["closed_at"] is not None:
            raise RecordError(409, "incident_closed", f"incident {incident_id} was closed at {inc['closed_at']}",
                              "该事件已关闭")
        return inc

    def _plan_incident_account(self, p: dict[str, Any], now: datetime):
        inc = self._open_incident(p)
        account = {
            "by": _text(p, "by", max_len=100, label_zh="记录人"),
            "what": _text(p, "what", label_zh="经过"),
            "plate": _text(p, "plate", required=False, max_len=20, label_zh="车牌"),
            "photos": _texts(p, "photos", "照片"),
            "notified": _texts(p, "notified", "已通知"),
        }
        return inc["lane_id"], "incident.updated", {"incident_id": inc["incident_id"], "account": account}

    def _plan_incident_close(self, p: dict[str, Any], now: datetime):
        inc = self._open_incident(p)
        by = _text(p, "by", max_len=100, label_zh="关闭人")
        summary = _text(p, "summary", label_zh="处理结果")
        if not inc["accounts"]:
            raise RecordError(409, "no_account", "write the guard's account of the incident before closing it",
                              "请先填写事故记录（经过、车牌、照片、通知对象）再关闭")
        return inc["lane_id"], "incident.closed", {"incident_id": inc["incident_id"], "by": by, "summary": summary}

    def _plan_ticket_open(self, p: dict[str, Any], now: datetime):
        lane = self._lane(p)
        device = _text(p, "device", max_len=64, label_zh="设备")
        reason = _text(p, "reason", label_zh="故障情况")
        by = _text(p, "by", max_len=100, label_zh="上报人")
        passage_id = _text(p, "passage_id", required=False, max_len=64)
        if passage_id is not None:
            held = self.db.execute("SELECT outcome, reason, hold_reason FROM passages WHERE passage_id = ?",
                                   (passage_id,)).fetchone()
            if held is None:
                raise RecordError(404, "unknown_passage", f"no passage {passage_id!r}", f"没有通行记录 {passage_id}")
            outcome, why, hold = held
            if outcome == "held" and hold is not None:
                why = hold  # closed for a restart (another lorry's card): held for what it was held for
            if not (why in FAULT_HOLDS or (why or "").startswith("authority_")):
                raise RecordError(
                    422, "not_a_fault",
                    f"passage {passage_id} closed {outcome or 'open'} for {why or 'no fault'}: a hold for the declared data"
                    " or the lane's rules is not a device fault and opens no ticket (R16)",
                    "该车辆因申报数据或通道规则未予放行，不属于设备故障，不开故障处理单",
                )
        key = self.device_key(lane, device)
        existing = self._open_ticket_for(key)
        if existing is not None:
            raise RecordError(409, "ticket_open", f"{key} already has open ticket {existing}",
                              f"该设备已有未关闭的故障处理单 {existing}")
        # lane_id is the event's own (the lane it is journaled on, _site for none).
        data = {"ticket_id": self.next_id("FT", now), "device": device, "reason": reason, "source": "report", "by": by}
        if passage_id is not None:
            data["passage_id"] = passage_id
        return lane or SITE_LANE, "ticket.opened", data

    def _plan_ticket_advance(self, p: dict[str, Any], now: datetime):
        ticket_id = _text(p, "ticket_id", max_len=64, label_zh="故障处理单编号")
        t = self.ticket(ticket_id)
        if t is None:
            raise RecordError(404, "unknown_ticket", f"no ticket {ticket_id!r}", f"没有故障处理单 {ticket_id}")
        to = _text(p, "to", max_len=20, label_zh="目标状态")
        if to not in TICKET_STATES:
            raise RecordError(422, "malformed", f"to must be one of {', '.join(TICKET_STATES)}",
                              "目标状态须为：" + "、".join(f"{k}（{v}）" for k, v in TICKET_STATE_ZH.items()))
        allowed = TICKET_TRANSITIONS[t["state"]]
        if to not in allowed:
            nxt = ", ".join(allowed) or "nothing (closed)"
            nxt_zh = "、".join(TICKET_STATE_ZH[a] for a in allowed) or "无（已关闭）"
            raise RecordError(409, "illegal_transition",
                              f"ticket {ticket_id} cannot go from {t['state']} to {to}; from {t['state']} only to: {nxt}",
                              f"故障处理单不能从“{TICKET_STATE_ZH[t['state']]}”改为“{TICKET_STATE_ZH[to]}”；只能改为：{nxt_zh}")
        data: dict[str, Any] = {"ticket_id": ticket_id, "from": t["state"], "to": to,
                                "by": _text(p, "by", max_len=100, label_zh="经办人"),
                                "note": _text(p, "note", required=False, label_zh="备注") or ""}
        if to == "notified":
            parties = _texts(p, "parties", "通报对象")
            bad = [x for x in parties if x not in PARTIES]
            if not parties or bad:
                raise RecordError(422, "malformed", "parties: who was told, some of customs, park, om",
                                  "通报对象须为 customs（海关）、park（园区管理方）、om（运维单位）中的一个或多个")
            at = _text(p, "at", required=False, max_len=40)
            if at is not None:
                try:
                    when = datetime.fromisoformat(at)
                except ValueError as exc:
                    raise RecordError(422, "malformed", f"at must be an ISO time: {exc}", "通报时间格式错误") from exc
                at = (when if when.tzinfo else when.replace(tzinfo=self.tz)).isoformat()
            data.update(parties=list(dict.fromkeys(parties)), at=at or now.isoformat())
        elif to == "fixed":
            category = _text(p, "category", max_len=20, label_zh="故障类别")
            if category not in CATEGORIES:
                raise RecordError(422, "malformed", "category must be hardware, software or other",
                                  "故障类别须为 hardware（硬件）、software（软件）或 other（其他原因）")
            data.update(cause=_text(p, "cause", label_zh="故障原因"), solution=_text(p, "solution", label_zh="解决方案"),
                        category=category)
        return t["lane_id"] if t["lane_id"] else SITE_LANE, "ticket.advanced", data

    def _plan_shift_handover(self, p: dict[str, Any], now: datetime):
        outgoing = _text(p, "outgoing", max_len=100, label_zh="交班人")
        incoming = _text(p, "incoming", max_len=100, label_zh="接班人")
        if outgoing == incoming:
            raise RecordError(422, "malformed", "outgoing and incoming guard must be different people",
                              "交班人与接班人不能是同一人")
        notes = p.get("notes", "")
        if not isinstance(notes, str):
            raise RecordError(422, "malformed", "'notes' must be text", "交接说明必须是文本")
        return SITE_LANE, "shift.handover", {"outgoing": outgoing, "incoming": incoming, "notes": notes.strip(),
                                             **self.open_items()}

    def _plan_shift_check(self, p: dict[str, Any], now: datetime):
        phase = _text(p, "phase", max_len=10, label_zh="检查时段")
        if phase not in ("start", "end"):
            raise RecordError(422, "malformed", "phase must be start or end", "检查时段须为 start（上岗）或 end（下岗）")
        guard = _text(p, "guard", max_len=100, label_zh="检查人")
        remarks = p.get("remarks", "")
        if not isinstance(remarks, str):
            raise RecordError(422, "malformed", "'remarks' must be text", "检查说明必须是文本")
        return SITE_LANE, "shift.check", {"phase": phase, "guard": guard, "remarks": remarks.strip(), "devices": {}}

    def _plan_video_note(self, p: dict[str, Any], now: datetime):
        return SITE_LANE, "video.note", {"guard": _text(p, "guard", max_len=100, label_zh="值班人"),
                                         "note": _text(p, "note", label_zh="视频监控记录")}


#: Orders: the API, the CLI's inbox and ``Records.perform`` all take these.
ORDERS = ("alarm.ack", "incident.open", "incident.account", "incident.close", "ticket.open", "ticket.advance",
          "shift.handover", "shift.check", "video.note")


class Records:
    """Alarms, incidents, fault tickets, duty records and the daily equipment ledger of
    one running site. ``Records(site)`` prepares the tables, catches up with the journal,
    and from then on projects every commit in the journal's writer thread (a projector:
    the record tables never lag the journal a reader can see). Orders are journal jobs:
    checked against the records and journaled in one transaction. Wiring::

        records = Records(site)
        site.add_task(records.run, "records")
        runner = await start_api(site, records.setup_routes)
    """

    def __init__(self, site: "Site") -> None:
        self.site = site
        self.config = site.config
        self.cursor: dict[str, int] = {}
        self._saved_cursor: dict[str, int] = {}
        self._last_raw: dict[tuple[str, str], int] = {}
        self._sample_day: date | None = None
        self._sampled_at = 0.0
        self._saved_at = 0.0
        self._suspect: dict[int, tuple[str, str]] = {}
        self._started_at: datetime | None = None
        self._started_mono = 0.0
        self._lost = False
        site.journal.run(self._prepare).result()
        site.journal.add_projector(self._project)
        for kind in ORDERS:
            site.orders.register(kind, lambda payload, kind=kind: self.order(kind, payload))
        self.start()

    def _store(self, db: sqlite3.Connection) -> RecordStore:
        """The record tables on ``db``, following the journal from this process's cursor."""
        store = RecordStore(db, self.config)
        store.cursor = self.cursor
        store._ready = True
        return store

    @property
    def store(self) -> RecordStore:
        """The record tables on this thread's read connection (queries only)."""
        return self._store(self.site.journal.reader())

    async def read(self, fn: Callable[[RecordStore], Any]) -> Any:
        """``fn(store)`` on a reader thread, off the event loop."""
        return await self.site.journal.read(lambda db: fn(RecordStore(db, self.config)))

    def _prepare(self, tx: WriteTx) -> None:
        store = RecordStore(tx.db, self.config)
        store.ensure_schema()
        self.cursor = store.cursor

    # ------------------------------------------------------------ the projection

    def _project(self, tx: WriteTx, written: list[Stamped]) -> None:
        """In the journal's writer thread, after a commit: project what was journaled and
        open what it calls for (incidents for incident alarms, a ticket per faulty device).
        If that fails, the transaction is rolled back: the next projection starts again
        from the cursor the tables hold and reads the gap from the journal."""
        store = self._store(tx.db)
        if self._lost:
            saved = dict(tx.db.execute("SELECT lane_id, seq FROM rec_cursor").fetchall())
            self.cursor.clear()
            self.cursor.update(saved)
            self._lost = False
        try:
            if store.ingest([ev.encode(s) for s in written]):
                self._reconcile(tx, store)
        except Exception:
            self._lost = True
            raise

    def _reconcile(self, tx: WriteTx, store: RecordStore) -> None:
        now = self.site.now()
        lanes = set(self.site.lanes)
        for a in store.alarms_needing_incident():
            lane = a["lane_id"] if a["lane_id"] in lanes else SITE_LANE
            tx.append(lane, ev.IncidentOpened(
                incident_id=store.next_id("INC", now), kind=a["alarm"],
                reason=json.loads(a["details"]).get("reason") or a["alarm"], alarm_event_id=a["event_id"]), now)
            store.ingest([ev.encode(tx.written[-1])])
        for sp in store.spans_needing_ticket():
            existing = store._open_ticket_for(sp["device_key"])
            if existing is None:
                existing = store.next_id("FT", now)
                lane = sp["lane_id"] if sp["lane_id"] in lanes else SITE_LANE
                tx.append(lane, ev.TicketOpened(ticket_id=existing, device=sp["device"],
                                                reason=sp["reason"] or "fault", source="fault"), now)
                store.ingest([ev.encode(tx.written[-1])])
            store.attach_spans(sp["device_key"], existing)

    def start(self) -> None:
        """As the daemon starts (before the lanes journal anything): catch up with the
        journal and mark the faults the last run left open. Idempotent."""
        def job(tx: WriteTx) -> dict[int, tuple[str, str]]:
            store = self._store(tx.db)
            store.catch_up()
            self._reconcile(tx, store)
            return {r[0]: (r[1], r[2]) for r in tx.db.execute(
                "SELECT id, lane_id, device FROM rec_fault_spans WHERE closed_epoch IS NULL")}

        self._suspect = self.site.journal.run(job).result()
        self._started_at = self.site.now()
        self._started_mono = _time.monotonic()

    # ---------------------------------------------------------------- orders

    def _order_job(self, kind: str, payload: dict[str, Any], now: datetime,
                   devices: dict[str, str] | None) -> Callable[[WriteTx], dict[str, Any]]:
        def job(tx: WriteTx) -> dict[str, Any]:
            store = self._store(tx.db)
            lane, type_, data = store.plan(kind, payload, now)
            if type_ == "shift.check":
                data["devices"] = devices or {}
            if lane != SITE_LANE and lane not in self.site.lanes:
                lane = SITE_LANE  # a lane since removed from the config
            written = tx.append(lane, ev.decode_event(type_, data), now)
            if store.ingest([ev.encode(written)]):
                self._reconcile(tx, store)
            body = ev.encode(written)
            result: dict[str, Any] = {"status": "ok", "event": body}
            if kind == "alarm.ack":
                result["alarm"] = store.alarm(data["alarm_event_id"])
                # What the guard's screen reads from the answer.
                result.update(event_id=data["alarm_event_id"], acknowledged_at=body["ts"], by=data["by"])
            elif kind.startswith("incident."):
                result["incident"] = store.incident(data["incident_id"])
            elif kind.startswith("ticket."):
                result["ticket"] = store.ticket(data["ticket_id"])
            return result

        return job

    def _check_kind(self, kind: str) -> None:
        if kind not in ORDERS:
            raise RecordError(400, "unknown_order", f"unknown order {kind!r}", f"未知操作 {kind}")

    def perform(self, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Carry out one order and wait for it: check it, journal its event, answer
        ``{"status": "ok", "event": ..., <record>: ...}``. Raises RecordError (nothing
        changed) or JournalError (nothing recorded)."""
        self._check_kind(kind)
        devices = self.device_health() if kind == "shift.check" else None
        return self.site.journal.run(self._order_job(kind, payload, self.site.now(), devices)).result()

    async def order(self, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        """``perform`` for the event loop (API, inbox): the answer, a refusal included."""
        try:
            self._check_kind(kind)
            devices = self.device_health() if kind == "shift.check" else None
            job = self._order_job(kind, payload, self.site.now(), devices)
            return await asyncio.wrap_future(self.site.journal.run(job))
        except RecordError as exc:
            return exc.to_dict()

    def device_health(self) -> dict[str, str]:
        """Every device of every lane as the running daemon sees it: {"lane/device": health}."""
        out: dict[str, str] = {}
        for lane in self.site.lanes.values():
            snap = lane.snapshot()
            faults = snap["faults"]
            devices = snap["devices"]
            running = snap["state"] != "starting"
            for dev in lane_devices(lane.config):
                info = devices.get(dev) or {}
                health = info.get("health") or ("ok" if dev == "barrier" and running else "unknown")
                if dev in faults:
                    health = "faulty"
                out[f"{lane.id}/{dev}"] = health
            for dev in faults:
                out.setdefault(f"{lane.id}/{dev}", "faulty")
        return out

    # ------------------------------------------------------------ background

    async def run(self) -> None:
        """Background jobs until cancelled: frame-drop sampling, faults left open by the
        last stop, and the daily equipment ledger at midnight site time (missed days
        caught up). On a worker thread: they wait for the journal, the event loop not."""
        while True:
            try:
                await asyncio.to_thread(self.tick)
            except Exception as exc:  # noqa: BLE001 - never stop the daemon over a record
                log.error("records job failed", error=repr(exc))
            await asyncio.sleep(POLL_S)

    def tick(self) -> None:
        """One pass of the background jobs (``run`` calls it every second)."""
        now = self.site.now()
        self._settle_restart_faults()
        self.sample(now)
        self._write_ledger(now)
        if _time.monotonic() - self._saved_at > SAMPLE_S and self.cursor != self._saved_cursor:
            self._saved_at = _time.monotonic()
            saved = dict(self.cursor)
            self.site.journal.run(lambda tx: self._store(tx.db).save_cursors(), durable=False).result()
            self._saved_cursor = saved

    def _settle_restart_faults(self) -> None:
        """A fault open when the daemon last stopped lasted at least until the restart; it
        goes on if the lane finds the device faulty again, else it ends at the restart."""
        if not self._suspect or self._started_at is None:
            return
        late = _time.monotonic() - self._started_mono > RESTART_GRACE_S
        ended: list[int] = []
        for span_id, (lane_id, device) in list(self._suspect.items()):
            lane = self.site.lanes.get(lane_id)
            if lane is None:
                ended.append(span_id)
                continue
            snap = lane.snapshot()
            running = snap["state"] != "starting"
            if not running and not late:
                continue
            if device in snap["faults"]:
                del self._suspect[span_id]  # still faulty: the span goes on
                continue
            devices = snap["devices"]
            healthy = devices[device].get("health") == "ok" if device in devices else running
            if late or healthy:
                ended.append(span_id)
        if ended:
            at = self._started_at.timestamp()
            self.site.journal.run(lambda tx: tx.db.executemany(
                "UPDATE rec_fault_spans SET closed_epoch = ?, closed_how = 'restart' WHERE id = ? AND closed_epoch IS NULL",
                [(at, i) for i in ended])).result()
            for i in ended:
                self._suspect.pop(i, None)

    @staticmethod
    def _dropped_counter(counters: dict[str, Any]) -> int:
        if isinstance(counters.get("dropped"), dict):  # serial devices: frames dropped by reason
            return int(sum(counters["dropped"].values()))
        return int(counters.get("timeouts", 0)) + int(counters.get("exceptions", 0))  # IO modules: failed polls

    def sample(self, now: datetime, force: bool = False) -> None:
        """Add the frames dropped since the last sample to the day's total (the driver
        counters live in memory and start again from 0 with the process)."""
        today = now.astimezone(self.config.site.tz).date()
        due = force or self._sample_day != today or _time.monotonic() - self._sampled_at >= SAMPLE_S
        if not due:
            return
        day = self._sample_day or today  # at midnight the last stretch belongs to the day just ended
        deltas: dict[tuple[str, str], int] = {}
        for lane in self.site.lanes.values():
            for dev, counters in lane.snapshot()["devices"].items():
                raw = self._dropped_counter(counters)
                last = self._last_raw.get((lane.id, dev), 0)
                delta = raw - last if raw >= last else raw
                self._last_raw[(lane.id, dev)] = raw
                if delta > 0:
                    deltas[(lane.id, dev)] = delta
        if deltas:
            self.site.journal.run(lambda tx: self._store(tx.db).add_dropped(day, deltas), durable=False).result()
        self._sample_day = today
        self._sampled_at = _time.monotonic()

    def _write_ledger(self, now: datetime) -> None:
        """Journal the equipment ledger of every day that ended and has none yet."""
        today = now.astimezone(self.config.site.tz).date()
        store = self.store
        through = store.meta("ledger_through")
        if through is not None:
            first = date.fromisoformat(through) + timedelta(days=1)
        else:
            first = store.first_event_day() or today
            first = max(first, today - timedelta(days=LEDGER_MAX_BACKFILL_DAYS))
        day, done = first, 0
        while day < today and done < LEDGER_DAYS_PER_PASS:
            self.write_equipment_day(day)
            day += timedelta(days=1)
            done += 1

    def write_equipment_day(self, day: date) -> list[dict[str, Any]]:
        """Journal ``equipment.daily`` for every device row of ``day`` not journaled yet."""
        now = self.site.now()

        def job(tx: WriteTx) -> list[dict[str, Any]]:
            store = self._store(tx.db)
            have = {(r["lane_id"], r["device"]) for r in store.equipment(day)}
            for row in store.compute_equipment(day):
                if (row["lane_id"], row["device"]) in have:
                    continue
                lane = row["lane_id"] if row["lane_id"] in self.site.lanes else SITE_LANE
                tx.append(lane, ev.EquipmentDaily(**{k: v for k, v in row.items() if k != "lane_id"}), now)
            store.ingest([ev.encode(st) for st in tx.written])
            through = store.meta("ledger_through")
            if through is None or day.isoformat() > through:
                store.set_meta("ledger_through", day.isoformat())
            return store.equipment(day)

        rows = self.site.journal.run(job).result()
        log.info("equipment ledger written", date=day.isoformat())
        return rows

    # ------------------------------------------------------------------ API

    def setup_routes(self, app: web.Application) -> None:
        """Add the records API under /api/v1 (pass to ``make_app`` / ``start_api``)."""
        app[RECORDS_KEY] = self
        r = app.router
        r.add_get("/api/v1/alarms", api_alarms)
        r.add_get("/api/v1/alarms/{event_id}", api_alarm)
        r.add_post("/api/v1/alarms/{event_id}/ack", api_order("alarm.ack", event_id="event_id"))
        r.add_get("/api/v1/incidents", api_incidents)
        r.add_post("/api/v1/incidents", api_order("incident.open"))
        r.add_get("/api/v1/incidents/{incident_id}", api_incident)
        r.add_post("/api/v1/incidents/{incident_id}/account", api_order("incident.account", incident_id="incident_id"))
        r.add_post("/api/v1/incidents/{incident_id}/close", api_order("incident.close", incident_id="incident_id"))
        r.add_get("/api/v1/tickets/figures", api_figures)
        r.add_get("/api/v1/tickets", api_tickets)
        r.add_post("/api/v1/tickets", api_order("ticket.open"))
        r.add_get("/api/v1/tickets/{ticket_id}", api_ticket)
        r.add_post("/api/v1/tickets/{ticket_id}/advance", api_order("ticket.advance", ticket_id="ticket_id"))
        r.add_get("/api/v1/shifts", api_shifts)
        r.add_get("/api/v1/shifts/open-items", api_open_items)
        r.add_post("/api/v1/shifts/handover", api_order("shift.handover"))
        r.add_post("/api/v1/shifts/checks", api_order("shift.check"))
        r.add_post("/api/v1/shifts/video-notes", api_order("video.note"))
        r.add_get("/api/v1/ledger/equipment", api_equipment)


RECORDS_KEY = web.AppKey("records", Records)


# ---------------------------------------------------------------------- handlers
#
# Each POST body is checked by its model below (types, lengths, unknown fields refused)
# before the order's own checks (``RecordStore.plan``: what is required, what the records
# allow). With a user's token the actor field is the user's name (``actor_of``).

RecordText = FreeText
RecordName = single_line(100, what="a name")
ShortWord = single_line(40, what="a word")
TextList = Annotated[list[single_line(500, what="an item")], Field(max_length=50)]


class _RecordBody(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class AlarmAckBody(_RecordBody):
    by: RecordName | None = None
    note: RecordText | None = None


class IncidentOpenBody(_RecordBody):
    lane_id: LaneId | None = None
    kind: ShortWord | None = None
    reason: RecordText | None = None
    by: RecordName | None = None


class IncidentAccountBody(_RecordBody):
    by: RecordName | None = None
    what: RecordText | None = None
    plate: Plate | None = None
    photos: RecordText | TextList | None = None
    notified: RecordText | TextList | None = None


class IncidentCloseBody(_RecordBody):
    by: RecordName | None = None
    summary: RecordText | None = None


class TicketOpenBody(_RecordBody):
    lane_id: LaneId | None = None
    device: ShortWord | None = None
    reason: RecordText | None = None
    by: RecordName | None = None
    passage_id: Identifier | None = None


class TicketAdvanceBody(_RecordBody):
    to: ShortWord | None = None
    by: RecordName | None = None
    note: RecordText | None = None
    parties: RecordText | TextList | None = None
    at: ShortWord | None = None
    cause: RecordText | None = None
    solution: RecordText | None = None
    category: ShortWord | None = None


class HandoverBody(_RecordBody):
    outgoing: RecordName | None = None
    incoming: RecordName | None = None
    notes: RecordText | None = None


class ShiftCheckBody(_RecordBody):
    phase: ShortWord | None = None
    guard: RecordName | None = None
    remarks: RecordText | None = None


class VideoNoteBody(_RecordBody):
    guard: RecordName | None = None
    note: RecordText | None = None


#: Per order: its body, the roles that may make it (the full-access token may make
#: every one) and the field that names its actor (CONTRACT 8).
ORDER_RULES: dict[str, tuple[type[_RecordBody], tuple[str, ...], str]] = {
    "alarm.ack": (AlarmAckBody, ("guard",), "by"),
    "incident.open": (IncidentOpenBody, ("guard", "park"), "by"),
    "incident.account": (IncidentAccountBody, ("guard", "park"), "by"),
    "incident.close": (IncidentCloseBody, ("guard", "park"), "by"),
    "ticket.open": (TicketOpenBody, ("guard", "park", "maintenance"), "by"),
    "ticket.advance": (TicketAdvanceBody, ("guard", "park", "maintenance"), "by"),
    "shift.handover": (HandoverBody, ("guard",), "outgoing"),
    "shift.check": (ShiftCheckBody, ("guard",), "guard"),
    "video.note": (VideoNoteBody, ("guard",), "guard"),
}


def _records(request: web.Request) -> Records:
    return request.app[RECORDS_KEY]


def api_order(kind: str, **from_path: str):
    model, roles, actor_key = ORDER_RULES[kind]

    @allow(*roles)
    async def handler(request: web.Request) -> web.Response:
        raw = await json_body(request)
        # Blank texts count as not given: the order's own check names what is missing.
        body = model_body({k: v for k, v in raw.items() if not (isinstance(v, str) and not v.strip())}, model)
        payload = body.model_dump(exclude_none=True)
        try:
            payload = actor_of(payload, actor_key, caller(request).actor)
        except OrderRefused as exc:
            raise ApiRefused(exc.status, exc.reason, exc.message) from None
        for key, part in from_path.items():
            payload[key] = request.match_info[part]
        try:
            result = await _records(request).order(kind, payload)
        except JournalError as exc:
            return error(503, f"not recorded: {exc}", code="journal_error", message_zh="日志写入失败，未记录")
        if result.get("status") == "refused":
            return error(result.pop("http_status", 422), result.get("message", ""), **{
                k: v for k, v in result.items() if k not in ("status", "message")})
        return web.json_response(result, status=201 if kind.endswith(".open") else 200)

    return handler


class ListQuery(Query):
    limit: clamped(1, 5000) = 1000


class AlarmsQuery(ListQuery):
    open: QueryBool = False
    lane: LaneId | None = None


class IncidentsQuery(ListQuery):
    open: QueryBool = False


class TicketsQuery(ListQuery):
    open: QueryBool = False
    device: ShortWord | None = None


def _day(value: Any) -> date:
    if not isinstance(value, str) or len(value) != 10:
        raise ValueError("must be a date YYYY-MM-DD")
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise ValueError("must be a date YYYY-MM-DD") from None
    if not 2000 <= day.year <= 2199:
        raise ValueError("must be a date from 2000 to 2199")
    return day


Day = Annotated[date, BeforeValidator(_day)]


class FiguresQuery(Query):
    start: Day | None = Field(None, alias="from")
    end: Day | None = Field(None, alias="to")


class EquipmentQuery(Query):
    date: Day | None = None


class NoRecordQuery(Query):
    pass


async def api_alarms(request: web.Request) -> web.Response:
    """GET /api/v1/alarms?open=1&lane=L&limit=N: every alarm kind in one list, newest first."""
    q = query(request, AlarmsQuery)
    return web.json_response({"alarms": await _records(request).read(lambda st: st.alarms(q.open, q.lane, q.limit))})


async def api_alarm(request: web.Request) -> web.Response:
    query(request, NoRecordQuery)
    alarm = await _records(request).read(lambda st: st.alarm(request.match_info["event_id"]))
    return web.json_response(alarm) if alarm else error(404, "no such alarm", code="unknown_alarm")


async def api_incidents(request: web.Request) -> web.Response:
    q = query(request, IncidentsQuery)
    return web.json_response({"incidents": await _records(request).read(lambda st: st.incidents(q.open, q.limit))})


async def api_incident(request: web.Request) -> web.Response:
    query(request, NoRecordQuery)
    inc = await _records(request).read(lambda st: st.incident(request.match_info["incident_id"]))
    return web.json_response(inc) if inc else error(404, "no such incident", code="unknown_incident")


async def api_tickets(request: web.Request) -> web.Response:
    q = query(request, TicketsQuery)
    return web.json_response({"tickets": await _records(request).read(lambda st: st.tickets(q.open, q.device,
                                                                                          q.limit))})


async def api_ticket(request: web.Request) -> web.Response:
    query(request, NoRecordQuery)
    t = await _records(request).read(lambda st: st.ticket(request.match_info["ticket_id"]))
    return web.json_response(t) if t else error(404, "no such ticket", code="unknown_ticket")


def _period(rec: Records, start: date | None, end: date | None) -> tuple[date, date]:
    today = rec.site.now().astimezone(rec.config.site.tz).date()
    s = start or date(today.year, 1, 1)
    e = end or date(s.year, 12, 31)
    if e < s:
        raise ApiRefused(400, "bad_query", "query: to is before from")
    return s, e


async def api_figures(request: web.Request) -> web.Response:
    """GET /api/v1/tickets/figures?from=YYYY-MM-DD&to=YYYY-MM-DD (default: this year)."""
    rec = _records(request)
    q = query(request, FiguresQuery)
    s, e = _period(rec, q.start, q.end)
    return web.json_response(await rec.read(lambda st: st.figures(s, e)))


async def api_shifts(request: web.Request) -> web.Response:
    q = query(request, ListQuery)
    return web.json_response({"records": await _records(request).read(lambda st: st.duty(limit=q.limit))})


async def api_open_items(request: web.Request) -> web.Response:
    query(request, NoRecordQuery)
    return web.json_response(await _records(request).read(lambda st: st.open_items()))


async def api_equipment(request: web.Request) -> web.Response:
    """GET /api/v1/ledger/equipment?date=YYYY-MM-DD (default yesterday): the stored rows,
    or, for a day not written yet, the rows so far (``final`` false)."""
    rec = _records(request)
    q = query(request, EquipmentQuery)
    now = rec.site.now()
    today = now.astimezone(rec.config.site.tz).date()
    day = q.date or today - timedelta(days=1)
    rows = await rec.read(lambda st: st.equipment(day))
    if rows:
        return web.json_response({"date": day.isoformat(), "final": True, "rows": rows})
    if day > today:
        return error(400, "that day has not begun")
    return web.json_response({"date": day.isoformat(), "final": False,
                              "rows": await rec.read(lambda st: st.compute_equipment(day, now))})
