"""The journal: one SQLite file per process, the lane PC's durable memory.

WAL with ``synchronous=FULL``: a committed transaction survives power loss. Every event
gets a time-ordered ``event_id`` and a per-lane ``seq`` that increases by one and is never
reused (CONTRACT section 5). Authorisations are recorded as consumed with a primary key on
(kind, id), so an instruction can be committed once and only once (S1, S6); the row and
its ``authorisation.committed`` event land in the same transaction.

Who owns what:

- **One writer thread owns the only write connection.** Lanes hand it appends
  (``append``) from their event loop and never wait for the disk, except for an
  authorisation: its future resolves once the transaction holding it is durable, and
  only then does the lane pulse the coil (S6: this is the one place that proves it).
  Everything the writer finds queued when it wakes is committed as one group, in one
  transaction with one fsync, whatever lane it came from (group commit: the writer never
  waits for a timer while an authorisation waits). What was committed is projected
  (records) and told to subscribers afterwards, once no append waits and the writer has
  been idle for ``PROJECT_AFTER_S`` (a lane resuming after its authorisation has the
  interpreter to itself meanwhile), or at the latest after ``PROJECT_WITHIN_S``. The
  write-ahead log is checkpointed by a thread of its own, never inside a commit. Other
  writes (records, MQTT cursors, the inbox, approvals) are jobs (``run``), each its own
  transaction, taken one at a time after the projection, so they can delay an
  authorisation by one short job at most.
- **Readers have their own connections**, one per thread (``reader()``), read-only; the
  API, records, the screen, MQTT and ledgers read off the event loop (``read``) in
  bounded pages, on one reader thread that rests between reads (so reading takes at
  most about half a core), and serve pages as stored bytes (``events_page``). WAL
  readers never block the writer.
- **The projection is kept in the transaction of the events**: the ``passages`` table
  (``gatectl.lane.passage.fold``) and the ``lanes`` table (``fold_lane``: last lift, spot
  checks), so a restart reads each lane's open passage and record in two seeks.

A write that fails (disk full) fails its whole group and records nothing; the events stay
queued, in order, and are retried; the journal reports itself faulty (``on_health``) and
the lanes fail closed; an authorisation in a failed group is refused (no lift). Without
``start()`` (the CLI, tests) appends and jobs run at once in the calling thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import structlog

from gatectl import events as ev
from gatectl.events import Stamped
from gatectl.ids import time_ordered_id
from gatectl.lane.passage import COLUMNS, LaneRecord, PassageRecord, fold, fold_lane

log = structlog.get_logger("gatectl.journal")

#: How long the writer stays idle after a commit before it projects what it committed and
#: tells subscribers: the lanes' next steps (a coil write after an authorisation, the
#: authorisation after a release request) run meanwhile without the projection and the
#: subscribers competing for the interpreter. An append or a job ends the wait.
PROJECT_AFTER_S = 0.002
#: Committed events held for projection at most, and for how long at most: beyond, the
#: writer projects before it commits more (subscribers never fall far behind a busy journal).
PROJECT_BACKLOG = 512
PROJECT_WITHIN_S = 0.05
#: How often the checkpoint thread copies the write-ahead log into the database file.
CHECKPOINT_EVERY_S = 1.0
#: Threads reading the journal for the service side, and how long the reader rests
#: after a read, as a multiple of the time the read took (see ``Journal.read``).
READ_THREADS = 1
READ_REST = 1.0

T = TypeVar("T")

#: ``PRAGMA application_id`` of a gatectl journal ("GTCL").
APPLICATION_ID = 0x4754434C
#: ``PRAGMA user_version``: 2 adds the projection's recovery columns and the lanes table;
#: 3 the passage's plate kind and drill mark, and customs' hours and drills per lane.
SCHEMA_VERSION = 3
SQLITE_HEADER = b"SQLite format 3\x00"

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

-- The passage projection (gatectl.lane.passage.fold), kept with the events.
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

-- What each lane remembers beyond its passages (gatectl.lane.passage.fold_lane).
CREATE TABLE IF NOT EXISTS lanes (
    lane_id         TEXT PRIMARY KEY,
    last_lift_kind  TEXT,
    last_lift_id    TEXT,
    spot_hold_next  INTEGER NOT NULL DEFAULT 0,
    spot_fraction   REAL NOT NULL DEFAULT 0,
    hours_open      INTEGER,
    hours_until     TEXT,
    hours_reason    TEXT NOT NULL DEFAULT '',
    drill           INTEGER NOT NULL DEFAULT 0
);

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

#: Columns later versions added, by table (the rest of ``PassageRecord`` and ``LaneRecord``).
_ADDED_COLUMNS = {
    "passages": {
        "plate": "TEXT", "decided_at": "TEXT", "lifted_at": "TEXT", "entered": "INTEGER NOT NULL DEFAULT 0",
        "last_seen_at": "TEXT", "hold_reason": "TEXT", "lane_kind": "TEXT", "drill": "INTEGER NOT NULL DEFAULT 0",
    },
    "lanes": {
        "hours_open": "INTEGER", "hours_until": "TEXT", "hours_reason": "TEXT NOT NULL DEFAULT ''",
        "drill": "INTEGER NOT NULL DEFAULT 0",
    },
}
_PASSAGE_UPSERT = (
    f"INSERT INTO passages ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
    f" ON CONFLICT (passage_id) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in COLUMNS[1:])}"
)
_LANE_COLUMNS = ("lane_id", "last_lift_kind", "last_lift_id", "spot_hold_next", "spot_fraction", "hours_open",
                 "hours_until", "hours_reason", "drill")
_LANE_UPSERT = (
    f"INSERT INTO lanes ({', '.join(_LANE_COLUMNS)}) VALUES ({', '.join('?' * len(_LANE_COLUMNS))})"
    f" ON CONFLICT (lane_id) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in _LANE_COLUMNS[1:])}"
)


def lane_row(rec: LaneRecord) -> tuple:
    last = rec.last_lift
    return (rec.lane_id, last.kind if last else None, last.id if last else None, rec.spot_hold_next,
            rec.spot_fraction, rec.hours_open, rec.hours_until, rec.hours_reason, int(rec.drill))


def lane_record(row: Sequence[Any]) -> LaneRecord:
    lane_id, kind, ident, hold_next, fraction, hours_open, hours_until, hours_reason, drill = row
    return LaneRecord(lane_id, ev.Authorisation(kind, ident) if kind and ident else None, hold_next, fraction,
                      None if hours_open is None else bool(hours_open), hours_until, hours_reason or "", bool(drill))


class JournalError(Exception):
    """The journal could not record something; whatever depended on it must not happen."""


class AuthorisationReplay(JournalError):
    """The authorisation was already consumed by an earlier lift."""


class JournalRefused(JournalError):
    """The file where the journal should be is not one gatectl can start from."""


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """Something to deliver outward (e.g. a pass confirmation to ``authority:jg2``)."""

    target: str
    kind: str
    payload: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Entry:
    """One event to journal, stamped ``ts`` (a lane core's ``Emit`` is one too)."""

    event: ev.Event
    ts: datetime

    @classmethod
    def of(cls, type_: str, ts: datetime, data: dict[str, Any]) -> Entry:
        """From the JSON fields of an event of ``type_`` (as an API or test has them)."""
        return cls(ev.decode_event(type_, data), ts)


class Pending(Protocol):
    event: ev.Event
    ts: datetime


class Authorising(Protocol):
    """What an authorisation commit needs (a lane core's ``CommitAuthorisation``)."""

    kind: str
    auth_id: str
    passage_id: str
    ts: datetime


def _settle(future: concurrent.futures.Future, result: Any = None, *, error: BaseException | None = None) -> None:
    """Resolve a caller's future; one whose caller gave up (cancelled) is left alone: the
    writer goes on whatever its callers do."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except concurrent.futures.InvalidStateError:
        pass


def passage_row(rec: PassageRecord) -> tuple:
    return tuple(int(v) if isinstance(v, bool) else v for v in (getattr(rec, c) for c in COLUMNS))


def passage_record(row: Sequence[Any]) -> PassageRecord:
    values = dict(zip(COLUMNS, row))
    values["entered"] = bool(values["entered"])
    values["drill"] = bool(values["drill"])
    return PassageRecord(**values)


# ---------------------------------------------------------------------- the file


def check_file(path: Path) -> bool:
    """Whether ``path`` may be opened as a journal: True if it exists already, False if
    a new one is to be made. Raises ``JournalRefused`` for a file that is empty or not a
    SQLite database: something went wrong there, and starting afresh would reuse seqs and
    forget the authorisations already spent (S1)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise JournalRefused(f"cannot read the journal {path}: {exc}") from exc
    how = "to start a new, empty journal deliberately, move the file away and run `gatectl journal new --config F`"
    if size == 0:
        raise JournalRefused(f"the journal {path} is an empty file (0 bytes): the journal it held is gone; "
                             f"every authorisation spent before would be forgotten. {how}")
    try:
        with path.open("rb") as f:
            head = f.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise JournalRefused(f"cannot read the journal {path}: {exc}") from exc
    if head != SQLITE_HEADER:
        raise JournalRefused(f"{path} is not a gatectl journal (not a SQLite database). {how}")
    return True


def _open(path: str, *, readonly: bool = False) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA busy_timeout=5000")
    if readonly:
        db.execute("PRAGMA query_only=ON")
    return db


# ---------------------------------------------------------------------- writes


@dataclass(slots=True)
class _Append:
    lane_id: str
    entries: list[Pending]
    authorisation: Authorising | None
    outbox: list[OutboxItem]
    future: concurrent.futures.Future
    #: Until when (monotonic) the writer may hold these for the lane's next append; 0: commit now.
    hold_until: float = 0.0


def _write_entries(tx: WriteTx, item: _Append) -> None:
    """An append's events and outbox items (not its authorisation) into ``tx``."""
    for entry in item.entries:
        tx.append(item.lane_id, entry.event, entry.ts)
    tx.outbox(item.lane_id, item.outbox)


@dataclass(slots=True)
class _Job(Generic[T]):
    fn: Callable[["WriteTx"], T]
    durable: bool
    future: concurrent.futures.Future


@dataclass(slots=True)
class _LaneState:
    """The writer's view of a lane: its last seq, open passage and lane record."""

    seq: int = 0
    open: PassageRecord | None = None
    record: LaneRecord | None = None


class WriteTx:
    """A write transaction in progress, as a job sees it: the write connection, and
    ``append`` to journal events in the same transaction (a record and its event, say)."""

    def __init__(self, journal: Journal, db: sqlite3.Connection) -> None:
        self._journal = journal
        self.db = db
        self.written: list[Stamped] = []
        self._lanes: dict[str, _LaneState] = {}
        # Projection rows changed by this transaction, written by ``flush``.
        self._passages: dict[str, PassageRecord] = {}
        self._lane_records: dict[str, LaneRecord] = {}

    def lane(self, lane_id: str) -> _LaneState:
        st = self._lanes.get(lane_id)
        if st is None:
            base = self._journal._lanes.get(lane_id) or _LaneState()
            st = self._lanes[lane_id] = _LaneState(base.seq, base.open, base.record)
        return st

    def append(self, lane_id: str, event: ev.Event, ts: datetime | str) -> Stamped:
        """Journal one event (seq, projection and all) in this transaction."""
        st = self.lane(lane_id)
        st.seq += 1
        stamped = Stamped(time_ordered_id(), st.seq, self._journal.site_id, lane_id,
                          ts if isinstance(ts, str) else ts.isoformat(), event)
        body = ev.encode(stamped)
        self.db.execute(
            "INSERT INTO events (lane_id, seq, event_id, type, ts, body) VALUES (?, ?, ?, ?, ?, ?)",
            (lane_id, stamped.seq, stamped.event_id, stamped.type, stamped.ts, json.dumps(body, ensure_ascii=False)),
        )
        self._project(st, stamped)
        self.written.append(stamped)
        return stamped

    def _project(self, st: _LaneState, stamped: Stamped) -> None:
        record = fold(st.open, stamped)
        if record is not st.open and record is not None:
            self._passages[record.passage_id] = record
        st.open = None if record is None or record.closed_at is not None else record
        before = st.record or LaneRecord(stamped.lane_id)
        after = fold_lane(before, stamped)
        st.record = after
        if after is not before:
            self._lane_records[after.lane_id] = after

    def flush(self) -> None:
        """Write the projection rows this transaction changed, once each (a passage
        touched by three events of one group is written once), before COMMIT."""
        if self._passages:
            self.db.executemany(_PASSAGE_UPSERT, [passage_row(r) for r in self._passages.values()])
            self._passages.clear()
        if self._lane_records:
            self.db.executemany(_LANE_UPSERT, [lane_row(r) for r in self._lane_records.values()])
            self._lane_records.clear()

    def outbox(self, lane_id: str, items: Iterable[OutboxItem]) -> None:
        for item in items:
            self.db.execute(
                "INSERT INTO outbox (target, lane_id, kind, payload, created_at) VALUES (?, ?, ?, ?, ?)",
                (item.target, lane_id, item.kind, json.dumps(item.payload, ensure_ascii=False),
                 item.created_at.isoformat()),
            )

    def _keep(self) -> None:
        """After COMMIT: the lanes' new state becomes the journal's."""
        for lane_id, st in self._lanes.items():
            self._journal._lanes[lane_id] = st


class Journal:
    def __init__(self, path: str | Path, site_id: str) -> None:
        self.path = str(path)
        self.site_id = site_id
        existed = check_file(Path(self.path))
        try:
            self._db = _open(self.path)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._prepare(existed)
        except sqlite3.DatabaseError as exc:
            raise JournalRefused(f"cannot open the journal {self.path}: {exc}") from exc
        self._lanes: dict[str, _LaneState] = {}
        self._load()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._read_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._read_rest_until = 0.0  # the reader thread's alone
        self._cond = threading.Condition()
        self._appends: deque[_Append] = deque()
        self._jobs: deque[_Job] = deque()
        self._thread: threading.Thread | None = None
        self._checkpointer: threading.Thread | None = None
        self._checkpoint_stop = threading.Event()
        self._stopping = False
        self._subscribers: list[Callable[[list[Stamped]], None]] = []
        # Committed, not yet projected nor told to subscribers (the writer's thread only).
        self._unprojected: list[Stamped] = []
        self._unprojected_at = 0.0
        # While appends linger: the open transaction holding the rows of the first
        # ``_prebuilt`` of them (the writer's thread only; see ``_prebuild``).
        self._open: WriteTx | None = None
        self._prebuilt = 0
        self._projectors: list[Callable[[WriteTx, list[Stamped]], None]] = []
        self._health_callbacks: list[Callable[[bool, str], None]] = []
        self.faulty: str | None = None
        #: Figures for metrics and benches.
        self.groups = 0
        self.group_appends = 0
        #: Lingering appends whose rows were written ahead of their commit (``_prebuild``).
        self.prebuilt_appends = 0
        self.jobs_run = 0

    # ------------------------------------------------------------------ opening

    def _prepare(self, existed: bool) -> None:
        db = self._db
        if existed:
            app_id = db.execute("PRAGMA application_id").fetchone()[0]
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if app_id not in (0, APPLICATION_ID) or (app_id == 0 and tables and "events" not in tables):
                raise JournalRefused(
                    f"{self.path} is a SQLite database of something else, not a gatectl journal; "
                    "to start a new, empty journal deliberately, move the file away and run "
                    "`gatectl journal new --config F`"
                )
        version = db.execute("PRAGMA user_version").fetchone()[0]
        db.executescript(SCHEMA)
        if version < SCHEMA_VERSION:
            with self._tx(db):
                for table, columns in _ADDED_COLUMNS.items():
                    have = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
                    for column, decl in columns.items():
                        if column not in have:
                            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
                db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                if version < 2:
                    self._backfill_v2(db)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _backfill_v2(self, db: sqlite3.Connection) -> None:
        """A journal from before version 2: fold each lane's stretch since its last
        passage opened again, for the recovery columns and the lanes table."""
        for (lane_id,) in list(db.execute(_LANES_SQL)):
            row = db.execute(
                "SELECT opened_seq FROM passages WHERE lane_id = ? ORDER BY opened_seq DESC LIMIT 1", (lane_id,)
            ).fetchone()
            since = row[0] - 1 if row else db.execute(
                "SELECT COALESCE(MAX(seq), 0) FROM events WHERE lane_id = ?", (lane_id,)).fetchone()[0]
            record: PassageRecord | None = None
            lane = LaneRecord(lane_id)
            spot = db.execute(
                "SELECT body FROM events INDEXED BY events_type WHERE type IN ('spot_check.ordered',"
                " 'spot_check.applied') AND lane_id = ? ORDER BY seq DESC LIMIT 1", (lane_id,)).fetchone()
            if spot is not None:
                lane = fold_lane(lane, self._decode_row(lane_id, None, spot[0]))
            for seq, body in db.execute("SELECT seq, body FROM events WHERE lane_id = ? AND seq > ? ORDER BY seq",
                                        (lane_id, since)).fetchall():
                st = self._decode_row(lane_id, seq, body)
                record = fold(record, st)
                if record is not None:
                    db.execute(_PASSAGE_UPSERT, passage_row(record))
                lane = fold_lane(lane, st)
            db.execute(_LANE_UPSERT, lane_row(lane))

    def _decode_row(self, lane_id: str, seq: int | None, body: str) -> Stamped:
        try:
            return ev.loads(body)
        except ev.EventDecodeError as exc:
            raise JournalError(f"damaged event in {self.path}: lane {lane_id} seq {seq}: {exc}") from None

    def _load(self) -> None:
        """Each lane's last seq (one index seek per lane), open passage and record."""
        db = self._db
        for lane_id, seq in db.execute(
            f"SELECT id, (SELECT MAX(seq) FROM events WHERE events.lane_id = l.id) FROM ({_LANES_SQL}) l"
        ).fetchall():
            self._lanes[lane_id] = _LaneState(seq=seq or 0)
        cols = ", ".join(COLUMNS)
        for lane_id, st in self._lanes.items():
            row = db.execute(
                f"SELECT {cols} FROM passages WHERE lane_id = ? ORDER BY opened_seq DESC LIMIT 1", (lane_id,)
            ).fetchone()
            if row is not None:
                rec = passage_record(row)
                st.open = rec if rec.closed_at is None else None
            row = db.execute(f"SELECT {', '.join(_LANE_COLUMNS)} FROM lanes WHERE lane_id = ?", (lane_id,)).fetchone()
            if row is not None:
                st.record = lane_record(row)

    @staticmethod
    @contextlib.contextmanager
    def _tx(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the writer thread (the daemon); until then writes run in the caller."""
        if self._thread is not None:
            return
        # Checkpoints move to a thread of their own: SQLite would run one inside whichever
        # commit crosses its threshold (every ten passages or so), and an authorisation's
        # commit would wait for it.
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        self._checkpoint_stop.clear()
        self._checkpointer = threading.Thread(target=self._checkpoints, name="journal-checkpoint", daemon=True)
        self._checkpointer.start()
        self._thread = threading.Thread(target=self._writer, name="journal-writer", daemon=True)
        self._thread.start()

    def _checkpoints(self) -> None:
        """The checkpoint thread: a passive checkpoint every ``CHECKPOINT_EVERY_S`` on a
        connection of its own. It runs beside the writer's commits (WAL lets it), copies
        what no reader still needs, and never blocks anybody."""
        db = _open(self.path)
        try:
            while not self._checkpoint_stop.wait(CHECKPOINT_EVERY_S):
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:  # busy, or the disk: the next one tries again
                    log.debug("journal checkpoint failed", error=str(exc))
        finally:
            db.close()

    def close(self) -> None:
        """Commit what is queued, stop the writer, close every connection."""
        thread, self._thread = self._thread, None
        if thread is not None:
            with self._cond:
                self._stopping = True
                self._cond.notify_all()
            thread.join(timeout=30)
        checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None:
            self._checkpoint_stop.set()
            checkpointer.join(timeout=30)
        if self._read_pool is not None:
            self._read_pool.shutdown(wait=True, cancel_futures=True)
            self._read_pool = None
        with self._readers_lock:
            for db in self._readers:
                with contextlib.suppress(sqlite3.Error):
                    db.close()
            self._readers.clear()
        with contextlib.suppress(sqlite3.Error):
            self._db.close()

    def subscribe(self, callback: Callable[[list[Stamped]], None]) -> None:
        """``callback(written)`` after every commit that journaled events, in the writer's
        thread (or the caller's, unstarted), in commit order. Must not block."""
        self._subscribers.append(callback)

    def add_projector(self, fn: Callable[[WriteTx, list[Stamped]], None]) -> None:
        """``fn(tx, written)`` in the writer's thread after every commit that journaled
        events (the lanes already have their answers), in a transaction of its own, before
        subscribers hear of them: a projection such as the records, and the events it
        journals itself (which it is handed next). An exception is logged and leaves the
        projection to catch up later; it never stops the writer."""
        self._projectors.append(fn)

    def on_health(self, callback: Callable[[bool, str], None]) -> None:
        """``callback(ok, reason)`` when writes start failing (False) and work again (True)."""
        self._health_callbacks.append(callback)

    # ------------------------------------------------------------------ writing

    def append(
        self,
        lane_id: str,
        entries: Iterable[Pending],
        *,
        authorisation: Authorising | None = None,
        outbox: Iterable[OutboxItem] = (),
        linger: float = 0.0,
    ) -> concurrent.futures.Future:
        """Queue ``entries`` (and, if given, the authorisation's consumption after them).

        The future resolves to the events as written (``Stamped``), once committed with
        ``synchronous=FULL``: durable. With an authorisation it raises
        ``AuthorisationReplay`` if that was consumed before (the entries are still
        journaled) or ``JournalError`` if the journal could not record it (then the entries
        stay queued for the next group). Thread-safe; never blocks.

        ``linger`` (seconds, plain entries only): the writer may hold these that long for
        an append that is about to follow, so both share one commit. A lane's release
        request lingers for the answer's authorisation: otherwise the authorisation, which
        the coil waits for, often arrives while the request's own fsync is in flight and
        waits for that one first. Any append that does not linger commits what lingers
        with it at once."""
        item = _Append(lane_id, list(entries), authorisation, list(outbox), concurrent.futures.Future(),
                       time.monotonic() + linger if linger > 0 and authorisation is None else 0.0)
        if self._thread is None:
            self._appends.append(item)
            self._commit_group()
            return item.future
        loop = None
        if authorisation is None:
            with contextlib.suppress(RuntimeError):
                loop = asyncio.get_running_loop()
        with self._cond:
            self._appends.append(item)
            if loop is None:
                self._cond.notify()
        if loop is not None:
            # Plain events appended from an event loop: the writer is woken when the loop
            # next turns, after what the same step started (a coil write goes on the wire
            # before the writer wakes to take the interpreter from it). Nobody waits on
            # them; an authorisation wakes it at once.
            loop.call_soon(self._wake)
        return item.future

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify()

    def write(self, lane_id: str, entries: Iterable[Pending], **kw: Any) -> list[Stamped]:
        """``append`` and wait for it (the CLI, tests, jobs outside the lanes)."""
        future = self.append(lane_id, entries, **kw)
        # The caller blocks, its event loop too if it has one: the writer cannot wait
        # for that loop to turn before it wakes.
        self._wake()
        return future.result()

    def run(self, fn: Callable[[WriteTx], T], *, durable: bool = True) -> concurrent.futures.Future:
        """Run a write job in its own transaction on the writer's connection; the future
        gives what ``fn(tx)`` returned, or its exception (nothing was written then)."""
        job: _Job = _Job(fn, durable, concurrent.futures.Future())
        if self._thread is None:
            self._run_job(job)
            return job.future
        with self._cond:
            self._jobs.append(job)
            self._cond.notify()
        return job.future

    def _writer(self) -> None:
        """The writer thread: it must outlive anything that goes wrong in one round."""
        while True:
            try:
                if self._write_round():
                    return
            except Exception:  # noqa: BLE001 - a bug in a round must not stop every lane's journal
                log.exception("journal writer round failed")

    def _write_round(self) -> bool:
        """One round of the writer: a group, the projection of what was committed, or
        one job, in that order of priority. True once stopped and drained."""
        with self._cond:
            while not (self._appends or self._jobs or self._stopping or self._unprojected):
                self._cond.wait()
            if self._unprojected and not (self._appends or self._jobs or self._stopping):
                # Something was just committed: a lane waited for it (an authorisation:
                # its coil write comes next) or will soon append again (a release request
                # is followed by the answer's authorisation). Leave them the interpreter
                # for a moment; an append or a job ends the wait.
                self._cond.wait(timeout=PROJECT_AFTER_S)
            held = self._held_for()
            lingering = held > 0 and not self._unprojected and not self._jobs
            waiting = len(self._appends)
        if lingering:
            # Only lingering appends: write their rows now, so the append that ends the
            # wait (an authorisation, whose coil waits for the commit) adds only its own;
            # then wait for it (an append ends the wait) and look again.
            self._prebuild()
            with self._cond:
                held = self._held_for()
                if len(self._appends) == waiting and held > 0 and not self._jobs:
                    self._cond.wait(timeout=held)
            return False
        with self._cond:
            held = self._held_for()
            overdue = self._unprojected and (len(self._unprojected) >= PROJECT_BACKLOG or
                                             time.monotonic() - self._unprojected_at >= PROJECT_WITHIN_S)
            appends = bool(self._appends) and not overdue and held <= 0
            project = not appends and bool(self._unprojected)
            job = None if appends or project or not self._jobs else self._jobs.popleft()
            if not appends and not project and job is None:
                return True  # stopping, and everything queued is done
        if project or job is not None:
            # A job or a projection needs the connection for a transaction of its own:
            # the lingering rows are written again when their wait is over.
            self._abandon()
        if project:
            self._flush_projection()
            return False
        if job is not None:
            self._run_job(job)
            return False
        self._commit_group()
        if self.faulty is not None:
            # The disk refused the group: jobs still get their answer (most fail the same
            # way; none waits forever behind the lanes), then try again in a while.
            with self._cond:
                job = self._jobs.popleft() if self._jobs else None
            if job is not None:
                self._run_job(job)
                return False
            with self._cond:
                if self._stopping:
                    self._fail_pending(JournalError(f"journal closed while failing: {self.faulty}"))
                    return True
                self._cond.wait(timeout=1.0)
        return False

    def _held_for(self) -> float:
        """How long the queued appends may still wait (0: commit them now). Under the lock."""
        if self._stopping or not self._appends:
            return 0.0
        until = min(item.hold_until for item in self._appends)
        return max(0.0, until - time.monotonic()) if until else 0.0

    def _fail_pending(self, exc: Exception) -> None:
        self._abandon()
        with self._cond:
            items, self._appends = list(self._appends), deque()
            jobs, self._jobs = list(self._jobs), deque()
        for item in items:
            _settle(item.future, error=exc)
        for job in jobs:
            _settle(job.future, error=exc)

    def _prebuild(self) -> None:
        """Write the rows of lingering appends into a transaction left open: the
        commit that ends their wait then builds only the rows of what came last.
        Nothing here is durable, visible to readers or told to anyone before that
        commit; a failure leaves no trace and the commit builds everything itself."""
        with self._cond:
            todo = list(self._appends)[self._prebuilt:]
        if not todo or any(item.authorisation is not None for item in todo):
            return
        db = self._db
        try:
            if self._open is None:
                db.execute("BEGIN IMMEDIATE")
                self._open = WriteTx(self, db)
            for item in todo:
                _write_entries(self._open, item)
                self._prebuilt += 1
                self.prebuilt_appends += 1
        except Exception:  # noqa: BLE001 - the commit writes them again and reports what fails
            self._abandon()

    def _abandon(self) -> None:
        """Roll back what ``_prebuild`` wrote."""
        if self._open is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
        self._open, self._prebuilt = None, 0

    def _commit_group(self, limit: int | None = None) -> None:
        """Commit everything queued now (or the first ``limit`` appends) in one
        transaction: one fsync for all lanes."""
        with self._cond:
            group = list(self._appends)[:limit]
        if limit is not None and self._prebuilt > limit:
            self._abandon()
        if not group:
            self._abandon()
            return
        db = self._db
        tx, done = self._open or WriteTx(self, db), self._prebuilt
        began = self._open is not None
        self._open, self._prebuilt = None, 0
        outcome: dict[int, BaseException] = {}
        try:
            if not began:
                db.execute("BEGIN IMMEDIATE")
            try:
                for i, item in enumerate(group):
                    if i < done:
                        continue  # its rows are in the transaction already
                    _write_entries(tx, item)
                    if item.authorisation is not None:
                        replay = self._consume(tx, item)
                        if replay is not None:
                            outcome[i] = replay
                tx.flush()
                db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise
        except (sqlite3.Error, OSError) as exc:
            self._group_failed(group, exc)
            return
        except Exception as exc:  # noqa: BLE001 - an event that cannot be written at all
            self._poisoned(group, exc)
            return
        tx._keep()
        with self._cond:
            for _ in group:
                self._appends.popleft()
        self.groups += 1
        self.group_appends += len(group)
        if self.faulty is not None:
            self._health(True, "")
        per_item: dict[int, list[Stamped]] = {}
        written = iter(tx.written)
        for i, item in enumerate(group):
            n = len(item.entries) + (1 if item.authorisation is not None and i not in outcome else 0)
            per_item[i] = [next(written) for _ in range(n)]
        # The lanes first: an authorisation's lane pulses the coil while the rest follows.
        for i, item in enumerate(group):
            if i in outcome:
                _settle(item.future, error=outcome[i])
            else:
                _settle(item.future, per_item[i])
        if self._thread is None:
            self._deliver(self._project(tx.written))
            return
        # Projected and told to subscribers once nothing is waiting to be committed: a
        # commit never waits behind a projection.
        if not self._unprojected:
            self._unprojected_at = time.monotonic()
        self._unprojected.extend(tx.written)

    def _flush_projection(self) -> None:
        written, self._unprojected = self._unprojected, []
        if written:
            self._deliver(self._project(written))

    def _project(self, written: list[Stamped]) -> list[Stamped]:
        """Run the projectors over ``written``; what they journal is projected in turn.
        Returns ``written`` and everything the projectors journaled, in order."""
        out = list(written)
        todo = written
        for _ in range(10):  # each round projects what the last one journaled
            if not todo or not self._projectors:
                break
            tx = WriteTx(self, self._db)
            try:
                with self._tx(self._db):
                    for fn in self._projectors:
                        fn(tx, todo)
                    tx.flush()
            except Exception:  # noqa: BLE001 - the projection catches up from the journal later
                log.exception("projection failed")
                break
            tx._keep()
            todo = tx.written
            out += todo
        return out

    def _consume(self, tx: WriteTx, item: _Append) -> AuthorisationReplay | None:
        """S1, S6: the authorisation's row and its event, or a replay (nothing of it)."""
        auth = item.authorisation
        assert auth is not None
        # A failed statement is undone alone (SQLite's default ABORT): the entries journaled
        # before it stay in the transaction, and no savepoint is needed.
        try:
            tx.db.execute(
                "INSERT INTO authorisations (kind, auth_id, lane_id, passage_id, committed_at) VALUES (?, ?, ?, ?, ?)",
                (auth.kind, auth.auth_id, item.lane_id, auth.passage_id, auth.ts.isoformat()),
            )
        except sqlite3.IntegrityError:
            return AuthorisationReplay(f"{auth.kind} {auth.auth_id} was already used")
        tx.append(item.lane_id, ev.AuthorisationCommitted(
            passage_id=auth.passage_id, authorisation=ev.Authorisation(auth.kind, auth.auth_id),
            drill=True if getattr(auth, "drill", False) else None), auth.ts)
        return None

    def _group_failed(self, group: list[_Append], exc: BaseException) -> None:
        """Nothing of the group was recorded. Authorisations are refused at once (no
        lift); the plain events stay queued, in order, for the next try (without a writer
        thread, the caller hears of the failure instead)."""
        reason = f"journal write failed: {exc}"
        if self.faulty is None:
            log.error("journal write failed", error=str(exc), pending=len(group))
            self._health(False, reason)
        failed: list[_Append] = []
        with self._cond:
            rest = list(self._appends)[len(group):]
            kept: list[_Append] = []
            for item in group:
                if self._thread is None:
                    failed.append(item)
                elif item.authorisation is None:
                    kept.append(item)
                else:
                    failed.append(item)
                    if item.entries or item.outbox:
                        # Its events happened: journaled when the journal takes writes again.
                        kept.append(_Append(item.lane_id, item.entries, None, item.outbox,
                                            concurrent.futures.Future()))
            self._appends = deque(kept + rest)
        for item in failed:
            _settle(item.future, error=JournalError(reason))

    def _poisoned(self, group: list[_Append], exc: BaseException) -> None:
        """Not the disk: something in the group can never be written (a value no JSON
        holds, a number SQLite cannot store). Commit the appends one by one so the others
        go through; the one that fails alone is refused with the error, loudly, rather
        than block every lane's journal behind it."""
        if len(group) > 1:
            for _ in group:
                self._commit_group(limit=1)
            return
        (item,) = group
        log.error("journal refused an append it can never write", lane=item.lane_id, error=repr(exc),
                  types=[type(e.event).__name__ for e in item.entries])
        with self._cond:
            if self._appends and self._appends[0] is item:
                self._appends.popleft()
        _settle(item.future, error=JournalError(f"cannot be journaled: {exc!r}"))

    def _health(self, ok: bool, reason: str) -> None:
        self.faulty = None if ok else reason
        if ok:
            log.info("journal writable again")
        for cb in self._health_callbacks:
            try:
                cb(ok, reason)
            except Exception:  # noqa: BLE001 - a subscriber must not stop the writer
                log.exception("journal health callback failed")

    def _run_job(self, job: _Job) -> None:
        self._flush_projection()  # subscribers hear of commits in commit order
        db = self._db
        tx = WriteTx(self, db)
        try:
            if not job.durable:
                db.execute("PRAGMA synchronous=NORMAL")
            try:
                with self._tx(db):
                    result = job.fn(tx)
                    tx.flush()
            finally:
                if not job.durable:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("PRAGMA synchronous=FULL")
        except BaseException as exc:  # noqa: BLE001 - the job's caller gets it
            if isinstance(exc, sqlite3.Error):
                exc = JournalError(f"journal write failed: {exc}")
            _settle(job.future, error=exc)
            return
        tx._keep()
        self.jobs_run += 1
        _settle(job.future, result)
        if tx.written:
            self._deliver(self._project(tx.written))

    def _deliver(self, written: list[Stamped]) -> None:
        if not written:
            return
        for cb in self._subscribers:
            try:
                cb(written)
            except Exception:  # noqa: BLE001 - a subscriber must not stop the writer
                log.exception("journal subscriber failed")

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

    # ------------------------------------------------------------------ reading

    def reader(self) -> sqlite3.Connection:
        """This thread's read-only connection to the journal."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = _open(self.path, readonly=True)
            self._local.db = db
            with self._readers_lock:
                self._readers.append(db)
        return db

    @property
    def db(self) -> sqlite3.Connection:
        """The calling thread's read connection (reads only; writes go through ``run``)."""
        return self.reader()

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(connection)`` on the reader thread, off the event loop.

        One thread, so reads are taken one at a time: two readers busy at once (API
        clients paging through the journal) hand the interpreter's lock back and forth
        at every row, thousands of times a second, and take twice the CPU from the
        lanes. And after each read the thread rests ``READ_REST`` times as long as the
        read took before it starts the next: however many clients page through the
        journal as fast as they can, reading takes at most half a core, and the lanes'
        threads find a processor free when they wake (``docs/performance.md``, bench 8).
        The answer is not held back: only the next read waits."""
        if self._read_pool is None:
            self._read_pool = concurrent.futures.ThreadPoolExecutor(READ_THREADS, thread_name_prefix="journal-read")
        return await asyncio.get_running_loop().run_in_executor(self._read_pool, self._paced, fn)

    def _paced(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """One read on the reader thread, after the rest the last one earned."""
        rest = self._read_rest_until - time.monotonic()
        if rest > 0:
            time.sleep(rest)
        began = time.monotonic()
        try:
            return fn(self.reader())
        finally:
            ended = time.monotonic()
            self._read_rest_until = ended + (ended - began) * READ_REST

    @property
    def queued(self) -> int:
        """Appends waiting for the writer (events kept in memory while the disk refuses)."""
        return len(self._appends)

    def last_seq(self, lane_id: str) -> int:
        st = self._lanes.get(lane_id)
        return st.seq if st is not None else 0

    def lanes(self) -> list[str]:
        return sorted(self._lanes)

    def recover(self, lane_id: str) -> tuple[PassageRecord | None, LaneRecord]:
        """The lane's open passage and its record, as the projection keeps them (S7)."""
        st = self._lanes.get(lane_id)
        if st is None:
            return None, LaneRecord(lane_id)
        return st.open, st.record or LaneRecord(lane_id)

    def events(self, lane_id: str | None = None, since_seq: int | None = None, limit: int | None = None) -> list[dict]:
        return list(self.iter_events(lane_id, since_seq, limit))

    def iter_events(
        self, lane_id: str | None = None, since_seq: int | None = None, limit: int | None = None,
        db: sqlite3.Connection | None = None,
    ) -> Iterator[dict]:
        """Events in ``seq`` order per lane, those with seq > ``since_seq``, as bodies."""
        for lane, seq, body in self.event_rows(lane_id, since_seq, limit, db=db):
            try:
                yield json.loads(body)
            except ValueError as exc:
                raise JournalError(f"damaged event in {self.path}: lane {lane} seq {seq}: not JSON ({exc})") from None

    def event_rows(
        self, lane_id: str | None = None, since_seq: int | None = None, limit: int | None = None,
        db: sqlite3.Connection | None = None,
    ) -> Iterator[tuple[str, int, str]]:
        """(lane, seq, body text) in ``seq`` order per lane: the stored JSON, unparsed."""
        sql, args = self._rows_sql("lane_id, seq, body", lane_id, since_seq, limit)
        yield from (db or self.reader()).execute(sql, args)

    def events_page(
        self, lane_id: str | None = None, since_seq: int | None = None, limit: int | None = None,
        db: sqlite3.Connection | None = None,
    ) -> bytes:
        """``{"events":[...]}``: the stored bodies of ``event_rows`` joined into one JSON
        document, as UTF-8, exactly the bytes of ``('{"events":[' + ",".join(bodies) +
        "]}").encode()``.

        Built so that a page of thousands of events never holds the interpreter's lock for
        long: the bodies come out of SQLite as bytes (no decoding), and ``bytes.join``
        copies a megabyte or more with the lock released. Joining and encoding them as
        text takes the lock for tens of milliseconds per 10 000 events, during which no
        other thread, the lanes' included, runs (``docs/performance.md``, bench 8)."""
        sql, args = self._rows_sql("CAST(body AS BLOB)", lane_id, since_seq, limit)
        bodies = [body for (body,) in (db or self.reader()).execute(sql, args)]
        return b"".join((b'{"events":[', b",".join(bodies), b"]}"))

    @staticmethod
    def _rows_sql(columns: str, lane_id: str | None, since_seq: int | None,
                  limit: int | None) -> tuple[str, list[Any]]:
        sql = f"SELECT {columns} FROM events"
        where: list[str] = []
        args: list[Any] = []
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
        return sql, args

    def passage(self, passage_id: str, db: sqlite3.Connection | None = None) -> dict | None:
        cur = (db or self.reader()).execute("SELECT * FROM passages WHERE passage_id = ?", (passage_id,))
        row = cur.fetchone()
        return None if row is None else dict(zip([c[0] for c in cur.description], row))

    def passages(self, lane_id: str | None = None, limit: int = 100, db: sqlite3.Connection | None = None) -> list[dict]:
        sql = "SELECT * FROM passages"
        args: list[Any] = []
        if lane_id is not None:
            sql += " WHERE lane_id = ?"
            args.append(lane_id)
        sql += " ORDER BY opened_at DESC LIMIT ?"
        args.append(limit)
        cur = (db or self.reader()).execute(sql, args)
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row)) for row in cur]

    # ------------------------------------------------------------------ outbox

    def outbox_next(self, target: str, limit: int = 50) -> list[dict[str, Any]]:
        """Undelivered items for ``target``, oldest first."""
        cur = self.reader().execute(
            "SELECT id, lane_id, kind, payload, attempts FROM outbox"
            " WHERE target = ? AND delivered_at IS NULL ORDER BY id LIMIT ?",
            (target, limit),
        )
        return [
            {"id": i, "lane_id": lane, "kind": kind, "payload": json.loads(payload), "attempts": attempts}
            for i, lane, kind, payload, attempts in cur
        ]

    def outbox_delivered(self, item_id: int, at: datetime) -> concurrent.futures.Future:
        return self.run(lambda tx: tx.db.execute(
            "UPDATE outbox SET delivered_at = ?, attempts = attempts + 1 WHERE id = ?", (at.isoformat(), item_id)))

    def outbox_failed(self, item_id: int, error: str) -> concurrent.futures.Future:
        return self.run(lambda tx: tx.db.execute(
            "UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE id = ?", (error[:500], item_id)),
            durable=False)

    def outbox_depth(self, target: str | None = None) -> int:
        sql = "SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL"
        args: tuple = ()
        if target is not None:
            sql += " AND target = ?"
            args = (target,)
        return self.reader().execute(sql, args).fetchone()[0]

    # ------------------------------------------------------------------ approvals

    def store_approval(self, approval_id: str, lane_id: str, trigger: str, max_lifts: int,
                       valid_from: datetime, valid_until: datetime, document: str,
                       accepted_at: datetime) -> concurrent.futures.Future:
        """Keep an accepted approval; the future says False if it was accepted before
        (nothing changes then)."""
        def job(tx: WriteTx) -> bool:
            cur = tx.db.execute(
                "INSERT OR IGNORE INTO approvals VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (approval_id, lane_id, trigger, max_lifts, valid_from.isoformat(), valid_until.isoformat(),
                 document, accepted_at.isoformat()),
            )
            return cur.rowcount == 1

        return self.run(job)

    def approval_uses(self, approval_id: str, db: sqlite3.Connection | None = None) -> int:
        """Uses of an approval the journal holds as consumed authorisations."""
        pattern = approval_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "#%"
        row = (db or self.reader()).execute(
            "SELECT COUNT(*) FROM authorisations WHERE kind = 'approval' AND auth_id LIKE ? ESCAPE '\\'",
            (pattern,),
        ).fetchone()
        return row[0]

    def approvals_for(self, lane_id: str, now: datetime) -> list[dict[str, Any]]:
        """Accepted approvals of a lane still inside their window, with the uses spent."""
        db = self.reader()
        out = []
        for approval_id, trigger, max_lifts, valid_from, valid_until, document in db.execute(
            "SELECT approval_id, trigger, max_lifts, valid_from, valid_until, document FROM approvals"
            " WHERE lane_id = ?", (lane_id,)
        ).fetchall():
            if datetime.fromisoformat(valid_until) <= now:
                continue
            out.append({
                "approval_id": approval_id, "trigger": trigger, "max_lifts": max_lifts,
                "valid_from": datetime.fromisoformat(valid_from), "valid_until": datetime.fromisoformat(valid_until),
                "lifts_used": self.approval_uses(approval_id, db), "document": json.loads(document),
            })
        return out

    # ------------------------------------------------------------------ inbox

    def inbox_put(self, kind: str, payload: dict[str, Any], at: datetime) -> int:
        return self.run(lambda tx: tx.db.execute(
            "INSERT INTO inbox (kind, payload, created_at) VALUES (?, ?, ?)",
            (kind, json.dumps(payload, ensure_ascii=False), at.isoformat()),
        ).lastrowid).result()

    def inbox_pending(self, limit: int = 100) -> list[dict[str, Any]]:
        """Orders not processed yet, oldest first; an order whose payload is damaged is
        handed over with ``payload`` None, to be marked failed (never retried forever)."""
        out = []
        for i, k, p in self.reader().execute(
            "SELECT id, kind, payload FROM inbox WHERE processed_at IS NULL ORDER BY id LIMIT ?", (limit,)
        ).fetchall():
            try:
                payload = json.loads(p)
            except ValueError:
                payload = None
            out.append({"id": i, "kind": k, "payload": payload})
        return out

    def inbox_done(self, item_id: int, at: datetime, result: dict[str, Any]) -> concurrent.futures.Future:
        return self.run(lambda tx: tx.db.execute(
            "UPDATE inbox SET processed_at = ?, result = ? WHERE id = ?",
            (at.isoformat(), json.dumps(result, ensure_ascii=False), item_id),
        ))

    def inbox_result(self, item_id: int) -> dict[str, Any] | None:
        row = self.reader().execute("SELECT result FROM inbox WHERE id = ?", (item_id,)).fetchone()
        return json.loads(row[0]) if row and row[0] else None


# Distinct lane ids by skip-scan over the (lane_id, seq) primary key: one probe per lane
# (a GROUP BY would read every event: seconds at a restart once the journal holds a year).
_LANES_SQL = """
WITH RECURSIVE l(id) AS (
    SELECT MIN(lane_id) FROM events
    UNION ALL
    SELECT (SELECT MIN(lane_id) FROM events WHERE lane_id > l.id) FROM l WHERE l.id IS NOT NULL
)
SELECT id FROM l WHERE id IS NOT NULL
"""

__all__ = [
    "Journal", "JournalError", "JournalRefused", "AuthorisationReplay", "OutboxItem", "Entry", "WriteTx",
    "check_file", "APPLICATION_ID", "SCHEMA_VERSION",
]
