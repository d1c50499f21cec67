"""The journal: one SQLite file per process, the lane's durable memory.

WAL with ``synchronous=FULL``: a committed transaction survives power loss. Every lane
event gets a uuid ``event_id`` and a per-lane ``seq`` that increases by one and is never
reused (CONTRACT section 5). Authorisations are recorded as consumed with a primary key
on (kind, id), so an instruction can be committed once and only once (S1, S6); the row
and its ``authorisation.committed`` event land in the same transaction.

The ``passages`` table is a projection of the events, kept in the same transaction, so
queries (ledger, API, recovery) need not replay the whole history.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Iterator

from gatectl.ids import time_ordered_id
from gatectl.lane.events import Recovered
from gatectl.lane.recovery import fold, last_lift, spot_checks

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    lane_id   TEXT    NOT NULL,
    seq       INTEGER NOT NULL,
    event_id  TEXT    NOT NULL UNIQUE,
    type      TEXT    NOT NULL,
    ts        TEXT    NOT NULL,
    body      TEXT    NOT NULL,          -- the whole event as published, JSON
    PRIMARY KEY (lane_id, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS events_type ON events (type, ts);

CREATE TABLE IF NOT EXISTS passages (
    passage_id      TEXT PRIMARY KEY,
    lane_id         TEXT NOT NULL,
    opened_seq      INTEGER NOT NULL,
    opened_at       TEXT NOT NULL,
    closed_at       TEXT,
    card            TEXT,
    gross_weight_kg REAL,
    request_id      TEXT,
    decision        TEXT,
    instruction_id  TEXT,
    form_id         TEXT,
    hint            TEXT,
    auth_kind       TEXT,
    auth_id         TEXT,
    outcome         TEXT,
    reason          TEXT
);
CREATE INDEX IF NOT EXISTS passages_open ON passages (lane_id, closed_at);
-- A restart finds each lane's last passage by an index seek, however long the journal.
CREATE INDEX IF NOT EXISTS passages_lane_seq ON passages (lane_id, opened_seq);
CREATE INDEX IF NOT EXISTS passages_opened ON passages (opened_at);

-- Everything sent outward that must arrive: written with the events of the same step,
-- delivered in id order per target, kept until acknowledged.
CREATE TABLE IF NOT EXISTS outbox (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    target       TEXT NOT NULL,
    lane_id      TEXT NOT NULL,
    kind         TEXT NOT NULL,
    payload      TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT,
    delivered_at TEXT
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (target, delivered_at, id);

-- Approvals accepted for a lane (R10, R17); their uses are authorisations "ID#n".
CREATE TABLE IF NOT EXISTS approvals (
    approval_id TEXT PRIMARY KEY,
    lane_id     TEXT NOT NULL,
    trigger     TEXT NOT NULL,
    max_lifts   INTEGER NOT NULL,
    valid_from  TEXT NOT NULL,
    valid_until TEXT NOT NULL,
    document    TEXT NOT NULL,
    accepted_at TEXT NOT NULL
);

-- Orders left by the CLI for the running daemon (approvals, emergency accounts).
CREATE TABLE IF NOT EXISTS inbox (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    kind         TEXT NOT NULL,
    payload      TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    processed_at TEXT,
    result       TEXT
);

CREATE TABLE IF NOT EXISTS authorisations (
    kind         TEXT NOT NULL,
    auth_id      TEXT NOT NULL,
    lane_id      TEXT NOT NULL,
    passage_id   TEXT,
    committed_at TEXT NOT NULL,
    PRIMARY KEY (kind, auth_id)
);
"""


class JournalError(Exception):
    """The journal could not record something; whatever depended on it must not happen."""


class AuthorisationReplay(JournalError):
    """The authorisation was already consumed by an earlier lift."""


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """Something to deliver outward (e.g. a pass confirmation to ``authority:jg2``)."""

    target: str
    kind: str
    payload: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True, slots=True)
class PendingEvent:
    type: str
    ts: datetime
    data: dict[str, Any]


class Journal:
    def __init__(self, path: str | Path, site_id: str) -> None:
        self.path = str(path)
        self.site_id = site_id
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise JournalError(f"cannot open journal {self.path}: {exc}") from exc
        self._seq: dict[str, int] = {}
        # Each lane's last seq, one index seek per lane (a GROUP BY would read every event:
        # seconds at a restart once the journal holds a year of passages).
        for lane_id, seq in self._db.execute(
            "WITH RECURSIVE lanes(lane_id) AS ("
            " SELECT MIN(lane_id) FROM events"
            " UNION ALL SELECT (SELECT MIN(lane_id) FROM events WHERE lane_id > lanes.lane_id) FROM lanes"
            " WHERE lanes.lane_id IS NOT NULL)"
            " SELECT lane_id, (SELECT MAX(seq) FROM events WHERE events.lane_id = lanes.lane_id) FROM lanes"
            " WHERE lane_id IS NOT NULL"
        ):
            self._seq[lane_id] = seq

    def close(self) -> None:
        self._db.close()

    @property
    def db(self) -> sqlite3.Connection:
        """The journal's connection, for modules keeping their own tables (records,
        ledgers, MQTT cursors) in the same file. Same thread only; write in short
        transactions (``with journal.db:``)."""
        return self._db

    # --------------------------------------------------------------- writing

    def write(
        self,
        lane_id: str,
        events: Iterable[PendingEvent],
        authorisation: tuple[str, str, str | None, datetime] | None = None,
        outbox: Iterable[OutboxItem] = (),
        durable: bool = True,
    ) -> list[dict[str, Any]]:
        """Record ``events`` (and, if given, consume ``authorisation``) atomically.

        ``durable=False`` commits without waiting for the disk (``synchronous=NORMAL``):
        the transaction survives the process being killed, and survives power loss once
        the next durable write or ``sync()`` has run. Only for the lift's own record,
        written between its authorisation's durable commit and the coil (S6).

        ``authorisation`` is (kind, auth_id, passage_id, ts). Returns the events as
        written, with their ``event_id`` and ``seq``. Raises ``AuthorisationReplay`` if
        the authorisation was consumed before and ``JournalError`` on any failure; in
        both cases nothing at all was recorded.
        """
        pending = list(events)
        if authorisation is not None:
            kind, auth_id, passage_id, ts = authorisation
            # After the events that led to it (release.decided), in the same transaction.
            pending.append(
                PendingEvent(
                    "authorisation.committed",
                    ts,
                    {"passage_id": passage_id, "authorisation": {"kind": kind, "id": auth_id}},
                ),
            )
        seq = self._seq.get(lane_id, 0)
        written: list[dict[str, Any]] = []
        db = self._db
        try:
            if not durable:
                db.execute("PRAGMA synchronous=NORMAL")
            db.execute("BEGIN IMMEDIATE")
            try:
                if authorisation is not None:
                    kind, auth_id, passage_id, ts = authorisation
                    try:
                        db.execute(
                            "INSERT INTO authorisations (kind, auth_id, lane_id, passage_id, committed_at)"
                            " VALUES (?, ?, ?, ?, ?)",
                            (kind, auth_id, lane_id, passage_id, ts.isoformat()),
                        )
                    except sqlite3.IntegrityError as exc:
                        raise AuthorisationReplay(f"{kind} {auth_id} was already used") from exc
                for ev in pending:
                    seq += 1
                    body = {
                        "event_id": time_ordered_id(),
                        "seq": seq,
                        "site_id": self.site_id,
                        "lane_id": lane_id,
                        "type": ev.type,
                        "ts": ev.ts.isoformat(),
                        **ev.data,
                    }
                    db.execute(
                        "INSERT INTO events (lane_id, seq, event_id, type, ts, body) VALUES (?, ?, ?, ?, ?, ?)",
                        (lane_id, seq, body["event_id"], ev.type, body["ts"], json.dumps(body, ensure_ascii=False)),
                    )
                    self._project(body)
                    written.append(body)
                for item in outbox:
                    db.execute(
                        "INSERT INTO outbox (target, lane_id, kind, payload, created_at) VALUES (?, ?, ?, ?, ?)",
                        (item.target, lane_id, item.kind, json.dumps(item.payload, ensure_ascii=False),
                         item.created_at.isoformat()),
                    )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except JournalError:
            raise
        except sqlite3.Error as exc:
            raise JournalError(f"journal write failed: {exc}") from exc
        finally:
            if not durable:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("PRAGMA synchronous=FULL")
        self._seq[lane_id] = seq
        return written

    def sync(self) -> None:
        """Make every committed transaction durable (fsync the write-ahead log)."""
        try:
            fd = os.open(f"{self.path}-wal", os.O_RDONLY)
        except FileNotFoundError:
            return  # checkpointed and truncated: already in the database file, synced
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _project(self, ev: dict[str, Any]) -> None:
        """Keep the passages table in step with the events (same transaction)."""
        t = ev["type"]
        pid = ev.get("passage_id")
        if pid is None:
            return
        db = self._db
        if t == "passage.opened":
            db.execute(
                "INSERT OR IGNORE INTO passages (passage_id, lane_id, opened_seq, opened_at) VALUES (?, ?, ?, ?)",
                (pid, ev["lane_id"], ev["seq"], ev["ts"]),
            )
        elif t == "card.read":
            db.execute("UPDATE passages SET card = ? WHERE passage_id = ?", (ev["card"], pid))
        elif t == "weight.stable":
            db.execute("UPDATE passages SET gross_weight_kg = ? WHERE passage_id = ?", (ev["gross_weight_kg"], pid))
        elif t == "release.requested":
            db.execute("UPDATE passages SET request_id = ? WHERE passage_id = ?", (ev["request_id"], pid))
        elif t == "release.decided":
            db.execute(
                "UPDATE passages SET decision = ?, instruction_id = ?, form_id = ?, hint = ? WHERE passage_id = ?",
                (ev["decision"], ev.get("instruction_id"), ev.get("form_id"), ev.get("hint"), pid),
            )
        elif t == "authorisation.committed":
            auth = ev["authorisation"]
            db.execute(
                "UPDATE passages SET auth_kind = ?, auth_id = ? WHERE passage_id = ?", (auth["kind"], auth["id"], pid)
            )
        elif t == "passage.closed":
            db.execute(
                "UPDATE passages SET closed_at = ?, outcome = ?, reason = ? WHERE passage_id = ?",
                (ev["ts"], ev["outcome"], ev.get("reason"), pid),
            )

    # --------------------------------------------------------------- reading

    def last_seq(self, lane_id: str) -> int:
        return self._seq.get(lane_id, 0)

    def recover(self, lane_id: str) -> tuple[Recovered | None, tuple[str, str] | None]:
        """The lane's open passage as its events describe it, and the last lift's
        authorisation (S7); both from the events since the lane's last passage opened."""
        row = self._db.execute(
            "SELECT opened_seq FROM passages WHERE lane_id = ? ORDER BY opened_seq DESC LIMIT 1", (lane_id,)
        ).fetchone()
        if row is None:
            return None, None
        events = self.events(lane_id, since_seq=row[0] - 1)
        return fold(events), last_lift(events)

    def spot_checks(self, lane_id: str) -> tuple[int, float]:
        """Spot-check orders in force on the lane: (hold next N, random share) (R7)."""
        # By the type index: spot-check events are few, a lane's events are all it ever did.
        row = self._db.execute(
            "SELECT body FROM events INDEXED BY events_type"
            " WHERE type IN ('spot_check.ordered', 'spot_check.applied') AND lane_id = ?"
            " ORDER BY seq DESC LIMIT 1",
            (lane_id,),
        ).fetchone()
        return spot_checks([json.loads(row[0])]) if row else (0, 0.0)

    # ---------------------------------------------------------------- outbox

    def outbox_next(self, target: str, limit: int = 50) -> list[dict[str, Any]]:
        """Undelivered items for ``target``, oldest first."""
        cur = self._db.execute(
            "SELECT id, lane_id, kind, payload, attempts FROM outbox"
            " WHERE target = ? AND delivered_at IS NULL ORDER BY id LIMIT ?",
            (target, limit),
        )
        return [
            {"id": i, "lane_id": lane, "kind": kind, "payload": json.loads(payload), "attempts": attempts}
            for i, lane, kind, payload, attempts in cur
        ]

    def outbox_delivered(self, item_id: int, at: datetime) -> None:
        self._db.execute("UPDATE outbox SET delivered_at = ?, attempts = attempts + 1 WHERE id = ?", (at.isoformat(), item_id))

    def outbox_failed(self, item_id: int, error: str) -> None:
        self._db.execute("UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE id = ?", (error[:500], item_id))

    def outbox_depth(self, target: str | None = None) -> int:
        sql = "SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL"
        args: tuple = ()
        if target is not None:
            sql += " AND target = ?"
            args = (target,)
        return self._db.execute(sql, args).fetchone()[0]

    # ------------------------------------------------------------- approvals

    def store_approval(self, approval_id: str, lane_id: str, trigger: str, max_lifts: int,
                       valid_from: datetime, valid_until: datetime, document: str, accepted_at: datetime) -> bool:
        """Keep an accepted approval; False if it was accepted before (nothing changes)."""
        try:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO approvals VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (approval_id, lane_id, trigger, max_lifts, valid_from.isoformat(), valid_until.isoformat(),
                 document, accepted_at.isoformat()),
            )
        except sqlite3.Error as exc:
            raise JournalError(f"approval not recorded: {exc}") from exc
        return cur.rowcount == 1

    def approval_uses(self, approval_id: str) -> int:
        """Uses of an approval the journal holds as consumed authorisations."""
        pattern = approval_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "#%"
        row = self._db.execute(
            "SELECT COUNT(*) FROM authorisations WHERE kind = 'approval' AND auth_id LIKE ? ESCAPE '\\'",
            (pattern,),
        ).fetchone()
        return row[0]

    def approvals_for(self, lane_id: str, now: datetime) -> list[dict[str, Any]]:
        """Accepted approvals of a lane still inside their window, with the uses spent."""
        cur = self._db.execute(
            "SELECT approval_id, trigger, max_lifts, valid_from, valid_until, document FROM approvals"
            " WHERE lane_id = ?",
            (lane_id,),
        )
        out = []
        for approval_id, trigger, max_lifts, valid_from, valid_until, document in cur.fetchall():
            if datetime.fromisoformat(valid_until) <= now:
                continue
            out.append({
                "approval_id": approval_id, "trigger": trigger, "max_lifts": max_lifts,
                "valid_from": datetime.fromisoformat(valid_from), "valid_until": datetime.fromisoformat(valid_until),
                "lifts_used": self.approval_uses(approval_id), "document": json.loads(document),
            })
        return out

    # ----------------------------------------------------------------- inbox

    def inbox_put(self, kind: str, payload: dict[str, Any], at: datetime) -> int:
        cur = self._db.execute(
            "INSERT INTO inbox (kind, payload, created_at) VALUES (?, ?, ?)",
            (kind, json.dumps(payload, ensure_ascii=False), at.isoformat()),
        )
        return cur.lastrowid

    def inbox_pending(self) -> list[dict[str, Any]]:
        cur = self._db.execute("SELECT id, kind, payload FROM inbox WHERE processed_at IS NULL ORDER BY id")
        return [{"id": i, "kind": k, "payload": json.loads(p)} for i, k, p in cur.fetchall()]

    def inbox_done(self, item_id: int, at: datetime, result: dict[str, Any]) -> None:
        self._db.execute(
            "UPDATE inbox SET processed_at = ?, result = ? WHERE id = ?",
            (at.isoformat(), json.dumps(result, ensure_ascii=False), item_id),
        )

    def inbox_result(self, item_id: int) -> dict[str, Any] | None:
        row = self._db.execute("SELECT result FROM inbox WHERE id = ?", (item_id,)).fetchone()
        return json.loads(row[0]) if row and row[0] else None

    def consumed(self, kind: str, auth_id: str) -> bool:
        row = self._db.execute("SELECT 1 FROM authorisations WHERE kind = ? AND auth_id = ?", (kind, auth_id)).fetchone()
        return row is not None

    def events(self, lane_id: str | None = None, since_seq: int | None = None, limit: int | None = None) -> list[dict]:
        return list(self.iter_events(lane_id, since_seq, limit))

    def iter_events(
        self, lane_id: str | None = None, since_seq: int | None = None, limit: int | None = None
    ) -> Iterator[dict]:
        """Events in ``seq`` order per lane, those with seq > ``since_seq``."""
        sql = "SELECT body FROM events"
        where, args = [], []
        if lane_id is not None:
            where.append("lane_id = ?")
            args.append(lane_id)
        if since_seq is not None:
            where.append("seq > ?")
            args.append(since_seq)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY lane_id, seq"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        for (body,) in self._db.execute(sql, args):
            yield json.loads(body)

    def passage(self, passage_id: str) -> dict | None:
        cur = self._db.execute("SELECT * FROM passages WHERE passage_id = ?", (passage_id,))
        row = cur.fetchone()
        return None if row is None else dict(zip([c[0] for c in cur.description], row))

    def passages(self, lane_id: str | None = None, limit: int = 100) -> list[dict]:
        sql = "SELECT * FROM passages"
        args: list[Any] = []
        if lane_id is not None:
            sql += " WHERE lane_id = ?"
            args.append(lane_id)
        sql += " ORDER BY opened_at DESC LIMIT ?"
        args.append(limit)
        cur = self._db.execute(sql, args)
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row)) for row in cur]
