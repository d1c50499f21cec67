"""The central's PostgreSQL schema: created and migrated by the central at start.

Versioned: ``schema_migrations`` holds each applied version; ``migrate(conn)`` applies the
missing ones in order, each in its own transaction, under an advisory lock so several
instances starting together migrate once. A database newer than this code is refused
(an old binary must not write into a schema it does not know).

Tables:

- ``events``: every event of every lane, once (primary key ``(event_id, ts)``; an event's
  ``ts`` never changes, so the key is the event id), the body as published (``jsonb``).
  Partitioned by month of ``ts`` (UTC months) with PostgreSQL's declarative partitioning:
  a query for a period reads only its months, and retention is dropping old partitions.
  Partitions are created on demand (``ensure_partitions``) before a batch that needs them.
  Append-only: the central never updates or deletes an event.
- ``lanes``: per (site, lane) the completeness bookkeeping (``contiguous_seq``: every seq
  up to it is stored; ``max_seq``: the highest seq known, stored or announced in the
  retained state's ``last_seq``; ``stored``: events stored, so ``missing = max_seq -
  stored``), the fold's position (``folded_seq``), the replay in flight, and the latest
  retained state.
- ``sites``: each lane PC by its topic prefix: site id, online (retained status), last event.
- ``passages``: the lane's passages, projected from each lane's contiguous events by the
  lane's own fold (``gatectl.lane.passage.fold``); ``record`` is the whole fold record.
- ``lifts``: release-instruction and approval lifts, for ``instruction_replay`` across sites.
- ``zone_alarms``: the zone's own alarms, each once by ``key``.
- ``relays``: every command and approval relayed to a lane PC, with the user who sent it.
"""

from __future__ import annotations

from datetime import datetime, timezone

import psycopg
from psycopg import sql

#: Advisory lock ids (two int4): migrations, partition creation.
LOCK_MIGRATE = (0x6761, 1)
LOCK_PARTITION = (0x6761, 2)

MIGRATIONS: list[tuple[int, str, str]] = [
    (1, "events, lanes, sites, passages, lifts, zone alarms", """
CREATE TABLE events (
    event_id  uuid        NOT NULL,
    ts        timestamptz NOT NULL,
    site_id   text        NOT NULL,
    lane_id   text        NOT NULL,
    seq       bigint      NOT NULL,
    type      text        NOT NULL,
    body      jsonb       NOT NULL,
    stored_at timestamptz NOT NULL DEFAULT clock_timestamp(),  -- when the row was written: lag figures
    PRIMARY KEY (event_id, ts)
) PARTITION BY RANGE (ts);
CREATE INDEX events_lane_seq ON events (site_id, lane_id, seq);
CREATE INDEX events_type_ts ON events (type, ts);

CREATE TABLE sites (
    prefix        text PRIMARY KEY,
    site_id       text,
    online        boolean,
    status_at     timestamptz,
    last_event_at timestamptz
);

CREATE TABLE lanes (
    site_id        text   NOT NULL,
    lane_id        text   NOT NULL,
    prefix         text,
    contiguous_seq bigint NOT NULL DEFAULT 0,
    max_seq        bigint NOT NULL DEFAULT 0,
    stored         bigint NOT NULL DEFAULT 0,
    folded_seq     bigint NOT NULL DEFAULT 0,
    last_event_at  timestamptz,
    gap_from       bigint,
    gap_since      timestamptz,
    replay_from    bigint,
    replay_to      bigint,
    replay_at      timestamptz,
    replay_progress_at timestamptz,
    replays        integer NOT NULL DEFAULT 0,
    state          jsonb,
    state_at       timestamptz,
    PRIMARY KEY (site_id, lane_id)
);

CREATE TABLE passages (
    passage_id  text PRIMARY KEY,
    site_id     text        NOT NULL,
    lane_id     text        NOT NULL,
    opened_seq  bigint      NOT NULL,
    opened_at   timestamptz NOT NULL,
    closed_at   timestamptz,
    card        text,
    auth_kind   text,
    auth_id     text,
    outcome     text,
    record      jsonb       NOT NULL
);
CREATE INDEX passages_opened ON passages (opened_at);
CREATE INDEX passages_lane ON passages (site_id, lane_id, opened_seq);
CREATE INDEX passages_card ON passages (card) WHERE card IS NOT NULL;

CREATE TABLE lifts (
    auth_kind text NOT NULL,
    auth_id   text NOT NULL,
    site_id   text NOT NULL,
    lane_id   text NOT NULL,
    event_id  uuid NOT NULL PRIMARY KEY,
    ts        timestamptz NOT NULL
);
CREATE INDEX lifts_auth ON lifts (auth_kind, auth_id);

CREATE TABLE zone_alarms (
    alarm_id   uuid PRIMARY KEY,
    key        text NOT NULL UNIQUE,
    alarm      text NOT NULL,
    site_ids   text[] NOT NULL,
    raised_at  timestamptz NOT NULL,
    cleared_at timestamptz,
    detail     jsonb NOT NULL
);
CREATE INDEX zone_alarms_open ON zone_alarms (raised_at) WHERE cleared_at IS NULL;

CREATE TABLE relays (
    relay_id  uuid PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    actor     text NOT NULL,
    role      text NOT NULL,
    site_id   text NOT NULL,
    topic     text NOT NULL,
    kind      text NOT NULL,
    body      jsonb NOT NULL
);
"""),
]

LATEST = MIGRATIONS[-1][0]


class SchemaError(Exception):
    """The database's schema cannot be used by this version of gatectl."""


def migrate(conn: psycopg.Connection) -> int:
    """Bring the schema to ``LATEST``; returns the version found before. ``conn`` in
    autocommit mode."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", LOCK_MIGRATE)
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
                     " version integer PRIMARY KEY, description text NOT NULL,"
                     " applied_at timestamptz NOT NULL DEFAULT now())")
        row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
        found = row[0] if row else 0
        if found > LATEST:
            raise SchemaError(f"the database schema is version {found}, newer than this gatectl ({LATEST}):"
                              " upgrade gatectl")
        for version, description, ddl in MIGRATIONS:
            if version <= found:
                continue
            conn.execute(ddl)
            conn.execute("INSERT INTO schema_migrations (version, description) VALUES (%s, %s)",
                         (version, description))
    return found


def month_of(ts: datetime) -> tuple[int, int]:
    t = ts.astimezone(timezone.utc)
    return t.year, t.month


def partition_name(year: int, month: int) -> str:
    return f"events_y{year:04d}m{month:02d}"


def ensure_partitions(conn: psycopg.Connection, months: set[tuple[int, int]]) -> None:
    """Create the monthly partitions of ``events`` for ``months`` that do not exist yet
    (in their own transaction, under a lock: instances may race for the same month)."""
    if not months:
        return
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", LOCK_PARTITION)
        for year, month in sorted(months):
            start = datetime(year, month, 1, tzinfo=timezone.utc)
            end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=timezone.utc)
            conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} PARTITION OF events FOR VALUES FROM ({}) TO ({})")
                         .format(sql.Identifier(partition_name(year, month)), sql.Literal(start), sql.Literal(end)))


def existing_partitions(conn: psycopg.Connection) -> set[tuple[int, int]]:
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'events'"
    ).fetchall()
    out = set()
    for (name,) in rows:
        if name.startswith("events_y") and len(name) == 15:
            out.add((int(name[8:12]), int(name[13:15])))
    return out
