"""The central's writes to PostgreSQL, from one thread that owns one connection.

``Store.ingest(batch)`` is one transaction:

1. the batch goes to a temporary staging table by ``COPY`` (psycopg's ``copy.write_row``);
2. ``INSERT INTO events SELECT ... ON CONFLICT DO NOTHING RETURNING``: each event is
   stored once by ``event_id`` whatever the deliveries, replays or instances; what comes
   back is what is new;
3. the touched lanes' rows are upserted in (site, lane) order, which locks them: two
   instances storing events of the same lane take turns here, and the second sees the
   first's committed events (READ COMMITTED: a statement sees what was committed before
   it started), so whichever comes last advances ``contiguous_seq`` over both;
4. ``contiguous_seq`` walks up over the stored seqs (a bounded window per round);
5. the events between ``folded_seq`` and the new ``contiguous_seq`` are folded into
   passages with the lane's own fold (``project.fold_events``), in seq order; the
   passages they touched go to a second staging table by ``COPY`` and into ``passages``
   with one upsert;
6. zone alarms: ``instruction_replay`` (one release instruction or approval use lifted on
   two sites) from the folded ``barrier.lifted`` events, ``card_on_two_lanes`` (one card in
   passages of two sites whose times overlap) from the passages just folded; each alarm
   once by its key.

A crash anywhere rolls the whole batch back; the broker or a replay brings it again.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import psycopg
import structlog
from psycopg.types.json import Jsonb

from gatectl.central import schema

log = structlog.get_logger("gatectl.central.store")

#: Seqs fetched per lane and round while walking ``contiguous_seq`` up.
WALK_WINDOW = 5000
#: Events folded per lane and round (bounded memory in a large backfill).
FOLD_WINDOW = 5000
#: Authorisation kinds whose ids name one customs decision zone-wide.
ZONE_UNIQUE_AUTH = ("release_instruction", "approval")


@dataclass(frozen=True, slots=True)
class Incoming:
    """One event as received: the envelope parsed, the body kept as the text published."""

    event_id: str
    ts: datetime
    site_id: str
    lane_id: str
    seq: int
    type: str
    body: str
    prefix: str
    received: float = 0.0  # time.time() when read from the broker
    data: dict | None = None  # the body parsed on receipt (folded from, never parsed again)


@dataclass
class IngestResult:
    stored: int = 0
    duplicates: int = 0
    lanes: dict[tuple[str, str], int] = field(default_factory=dict)  # contiguous_seq after
    alarms: list[dict] = field(default_factory=list)
    committed_at: float = 0.0
    fold_problems: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    prefix: str
    site_id: str
    lane_id: str
    from_seq: int
    to_seq: int


class Store:
    """Owns one autocommit connection; every method runs in the central's DB thread."""

    def __init__(self, url: str, *, connect_timeout: float = 5.0) -> None:
        self.url = url
        self.connect_timeout = connect_timeout
        self.conn: psycopg.Connection | None = None
        self._months: set[tuple[int, int]] = set()
        self._resume: dict[tuple[str, str], tuple[int, Any]] = {}  # lane -> (folded_seq, record)

    # ------------------------------------------------------------------ connection

    def connect(self) -> None:
        self.close()
        conn = psycopg.connect(self.url, autocommit=True, connect_timeout=int(self.connect_timeout),
                               application_name="gatectl-central")
        schema.migrate(conn)
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS staging (event_id uuid, ts timestamptz, site_id text,"
                     " lane_id text, seq bigint, type text, body jsonb) ON COMMIT DELETE ROWS")
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS passage_staging (passage_id text, site_id text, lane_id text,"
                     " opened_seq bigint, opened_at timestamptz, closed_at timestamptz, card text, auth_kind text,"
                     " auth_id text, outcome text, record jsonb) ON COMMIT DELETE ROWS")
        self._months = schema.existing_partitions(conn)
        self._resume.clear()  # another instance may have folded meanwhile
        self.conn = conn

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            finally:
                self.conn = None

    def _c(self) -> psycopg.Connection:
        if self.conn is None or self.conn.closed:
            self.connect()
        assert self.conn is not None
        return self.conn

    # ------------------------------------------------------------------ ingest

    def ingest(self, batch: list[Incoming]) -> IngestResult:
        conn = self._c()
        months = {schema.month_of(ev.ts) for ev in batch} - self._months
        if months:
            schema.ensure_partitions(conn, months)
            self._months |= months
        result = IngestResult()
        try:
            with conn.transaction():
                self._ingest(conn, batch, result)
        except BaseException:
            self._resume.clear()  # the fold positions of this transaction never happened
            raise
        result.committed_at = time.time()
        return result

    def _ingest(self, conn: psycopg.Connection, batch: list[Incoming], result: IngestResult) -> None:
        with conn.cursor() as cur:
            with cur.copy("COPY staging (event_id, ts, site_id, lane_id, seq, type, body) FROM STDIN") as cp:
                for ev in batch:
                    cp.write_row((ev.event_id, ev.ts, ev.site_id, ev.lane_id, ev.seq, ev.type, ev.body))
            # Ordered by key, so two instances inserting overlapping batches wait on each
            # other in one order and never deadlock. What comes back is what is new.
            cur.execute(
                "INSERT INTO events (event_id, ts, site_id, lane_id, seq, type, body)"
                " SELECT DISTINCT ON (event_id, ts) event_id, ts, site_id, lane_id, seq, type, body FROM staging"
                " ORDER BY event_id, ts ON CONFLICT DO NOTHING RETURNING event_id::text, ts"
            )
            new = cur.fetchall()
        result.stored = len(new)
        result.duplicates = len(batch) - len(new)
        if not new:
            return
        by_id: dict[str, Incoming] = {}
        doubtful: set[tuple[str, str]] = set()  # lanes whose stored bodies must be read back
        for ev in batch:
            seen = by_id.setdefault(ev.event_id, ev)
            if seen is not ev and (seen.body != ev.body or seen.ts != ev.ts):
                doubtful.add((ev.site_id, ev.lane_id))  # one id, two contents: trust only the table
        prefixes = {(ev.site_id, ev.lane_id): ev.prefix for ev in batch}
        per_lane: dict[tuple[str, str], list] = {}  # lane -> [count, max seq, last ts, new events]
        for event_id, ts in new:
            ev = by_id[event_id]
            key = (ev.site_id, ev.lane_id)
            agg = per_lane.get(key)
            if agg is None:
                per_lane[key] = [1, ev.seq, ts, [ev]]
            else:
                agg[0] += 1
                if ev.seq > agg[1]:
                    agg[1] = ev.seq
                if ts > agg[2]:
                    agg[2] = ts
                agg[3].append(ev)
        lanes = sorted(per_lane)
        site_last: dict[str, tuple[str, datetime]] = {}  # prefix -> (site, last event)
        for key, agg in per_lane.items():
            prefix = prefixes.get(key)
            if prefix is not None:
                last = site_last.get(prefix, (key[0], agg[2]))[1]
                site_last[prefix] = (key[0], max(last, agg[2]))
        order = sorted(site_last)
        with conn.pipeline():  # both upserts in one round trip
            # One statement, rows in (site, lane) order: it locks the lane rows in one order
            # in every instance, and hands back what the walk and the fold start from.
            lanes_cur = conn.execute(
                "INSERT INTO lanes AS l (site_id, lane_id, prefix, max_seq, stored, last_event_at)"
                " SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::bigint[], %b::bigint[],"
                " %b::timestamptz[]) ORDER BY 1, 2"
                " ON CONFLICT (site_id, lane_id) DO UPDATE SET"
                " prefix = excluded.prefix, max_seq = greatest(l.max_seq, excluded.max_seq),"
                " stored = l.stored + excluded.stored,"
                " last_event_at = greatest(l.last_event_at, excluded.last_event_at)"
                " RETURNING site_id, lane_id, contiguous_seq, folded_seq, stored",
                ([k[0] for k in lanes], [k[1] for k in lanes], [prefixes.get(k) for k in lanes],
                 [per_lane[k][1] for k in lanes], [per_lane[k][0] for k in lanes], [per_lane[k][2] for k in lanes]),
            )
            conn.execute(
                "INSERT INTO sites AS s (prefix, site_id, last_event_at)"
                " SELECT * FROM unnest(%b::text[], %b::text[], %b::timestamptz[]) ORDER BY 1 ON CONFLICT (prefix)"
                " DO UPDATE SET last_event_at = greatest(s.last_event_at, excluded.last_event_at),"
                " site_id = coalesce(s.site_id, excluded.site_id)",
                (order, [site_last[p][0] for p in order], [site_last[p][1] for p in order]),
            )
            rows = lanes_cur.fetchall()
        fresh = {k: sorted(agg[3], key=_by_seq) for k, agg in per_lane.items() if k not in doubtful}
        self._advance(conn, rows, fresh, result)

    def _advance(self, conn: psycopg.Connection, rows: list[tuple], fresh: dict[tuple[str, str], list[Incoming]],
                 result: IngestResult) -> None:
        """Walk contiguous_seq up, fold what became contiguous, raise zone alarms.

        The walk starts in memory over the batch's own new seqs; only a lane whose count of
        stored events says more lie beyond (out-of-order arrivals, another instance's
        events) is walked further in the table."""
        contig: dict[tuple[str, str], int] = {}
        start: dict[tuple[str, str], int] = {}
        folded: dict[tuple[str, str], int] = {}
        counts: dict[tuple[str, str], int] = {}
        todo: list[tuple[str, str]] = []
        for s, ln, c, f, stored in rows:
            key = (s, ln)
            start[key], folded[key], counts[key] = c, f, stored
            for ev in fresh.get(key, ()):
                if ev.seq == c + 1:
                    c = ev.seq
                elif ev.seq > c + 1:
                    break
            contig[key] = c
            if stored != c:  # every seq up to c is stored: stored > c means some lie beyond
                todo.append(key)
        while todo:
            found = conn.execute(
                "SELECT e.site_id, e.lane_id, e.seq FROM unnest(%b::text[], %b::text[], %b::bigint[])"
                " AS t(site_id, lane_id, c) JOIN events e ON e.site_id = t.site_id AND e.lane_id = t.lane_id"
                " AND e.seq > t.c AND e.seq <= t.c + %s ORDER BY e.site_id, e.lane_id, e.seq",
                ([k[0] for k in todo], [k[1] for k in todo], [contig[k] for k in todo], WALK_WINDOW),
            ).fetchall()
            full: list[tuple[str, str]] = []
            by_lane: dict[tuple[str, str], list[int]] = {}
            for s, ln, seq in found:
                by_lane.setdefault((s, ln), []).append(seq)
            for key, seqs in by_lane.items():
                c = c0 = contig[key]
                for seq in seqs:
                    if seq == c + 1:
                        c = seq
                    elif seq > c + 1:
                        break
                if c > c0:
                    if c == c0 + WALK_WINDOW:
                        full.append(key)  # the whole window was contiguous: look further
                    contig[key] = c
            todo = full
        result.lanes = dict(contig)
        spans = {k: (folded[k], contig[k]) for k in sorted(contig) if contig[k] > folded[k]}
        # Bodies in memory stand for the table only where it holds one event per seq and
        # nothing beyond: then this batch's events of the span are all the span holds.
        moved = sorted(k for k in contig if contig[k] > start[k] or k in spans)
        update = None
        if moved:
            update = (
                "UPDATE lanes l SET contiguous_seq = greatest(l.contiguous_seq, t.c),"
                " folded_seq = greatest(l.folded_seq, t.f),"
                " replay_progress_at = CASE WHEN l.replay_to IS NULL OR t.c = l.contiguous_seq"
                " THEN l.replay_progress_at ELSE now() END"
                " FROM unnest(%b::text[], %b::text[], %b::bigint[], %b::bigint[]) AS t(site_id, lane_id, c, f)"
                " WHERE l.site_id = t.site_id AND l.lane_id = t.lane_id",
                ([k[0] for k in moved], [k[1] for k in moved], [contig[k] for k in moved],
                 [max(folded[k], contig[k]) if k in spans else folded[k] for k in moved]),
            )
        self._fold(conn, spans, {k: v for k, v in fresh.items() if counts.get(k) == contig.get(k)}, result, update)

    # ------------------------------------------------------------------ projection

    def _fold(self, conn: psycopg.Connection, spans: dict[tuple[str, str], tuple[int, int]],
              fresh: dict[tuple[str, str], list[Incoming]], result: IngestResult,
              update: tuple[str, tuple] | None = None) -> None:
        """Fold each lane's events ``(folded_seq, contiguous_seq]`` in seq order; every lane
        of the batch in the same few statements (a round trip per lane would cost more
        than the whole insert).

        When this batch itself stored exactly those seqs (the usual case: a lane's events
        arriving in order), they are folded from the bodies parsed on receipt; otherwise
        (a gap just filled, events stored by another instance or an earlier batch) the
        span is read back from the table."""
        from gatectl.central.project import fold_events, record_from_json, record_json

        if not spans:
            if update is not None:
                conn.execute(*update)
            return
        records: dict[tuple[str, str], Any] = {}
        cold = [k for k, (lo, _) in spans.items() if self._resume.get(k, (None,))[0] != lo]
        for k in spans:
            if k not in cold:
                records[k] = self._resume[k][1]
        if cold:
            rows = conn.execute(
                "SELECT DISTINCT ON (p.site_id, p.lane_id) p.site_id, p.lane_id, p.record"
                " FROM unnest(%b::text[], %b::text[], %b::bigint[]) AS t(site_id, lane_id, lo)"
                " JOIN passages p ON p.site_id = t.site_id AND p.lane_id = t.lane_id AND p.opened_seq <= t.lo"
                " ORDER BY p.site_id, p.lane_id, p.opened_seq DESC",
                ([k[0] for k in cold], [k[1] for k in cold], [spans[k][0] for k in cold])).fetchall()
            found = {(si, ln): rec for si, ln, rec in rows}
            for k in cold:
                records[k] = record_from_json(found[k]) if k in found else None
        touched_all: dict[str, tuple[str, Any]] = {}
        lifted: list[dict] = []
        pos = {k: lo for k, (lo, _) in spans.items()}

        def fold_lane(k: tuple[str, str], lane_bodies: list[dict], upto: int) -> None:
            """Fold one lane's next contiguous bodies, up to seq ``upto``."""
            record, touched, problems = fold_events(records[k], lane_bodies)
            records[k] = record
            if problems:
                result.fold_problems.extend(f"{k[0]}/{k[1]}: {p}" for p in problems)
            for pid, r in touched.items():
                touched_all[pid] = (k[0], r)
            lifted.extend(b for b in lane_bodies if b.get("type") == "barrier.lifted")
            pos[k] = upto

        for k, (lo, hi) in spans.items():
            evs = fresh.get(k)
            if not evs or evs[0].seq != lo + 1 or len(evs) < hi - lo or evs[hi - lo - 1].seq != hi:
                continue
            evs = evs[:hi - lo]  # sorted, distinct by id: first and last seq right means no holes or repeats
            if any(ev.data is None for ev in evs) or len({ev.seq for ev in evs}) != hi - lo:
                continue
            fold_lane(k, [ev.data for ev in evs], hi)
        while True:
            todo = [k for k in spans if pos[k] < spans[k][1]]
            if not todo:
                break
            upto = {k: min(spans[k][1], pos[k] + FOLD_WINDOW) for k in todo}
            rows = conn.execute(
                "SELECT e.site_id, e.lane_id, e.body FROM unnest(%b::text[], %b::text[], %b::bigint[], %b::bigint[])"
                " AS t(site_id, lane_id, lo, hi) JOIN events e ON e.site_id = t.site_id AND e.lane_id = t.lane_id"
                " AND e.seq > t.lo AND e.seq <= t.hi ORDER BY e.site_id, e.lane_id, e.seq",
                ([k[0] for k in todo], [k[1] for k in todo], [pos[k] for k in todo], [upto[k] for k in todo]),
            ).fetchall()
            bodies: dict[tuple[str, str], list[dict]] = {}
            for si, ln, body in rows:
                bodies.setdefault((si, ln), []).append(body)
            for k in todo:
                fold_lane(k, bodies.get(k, []), upto[k])
        if touched_all:
            # A passage touched by the batch is a row here (about one for every two events
            # at 200 lanes): by COPY, then one upsert from the staging table, rather than an
            # INSERT per row, whose parameters cost the central more than the fold itself.
            with conn.cursor() as cur, cur.copy(
                    "COPY passage_staging (passage_id, site_id, lane_id, opened_seq, opened_at, closed_at, card,"
                    " auth_kind, auth_id, outcome, record) FROM STDIN") as cp:
                for si, r in touched_all.values():
                    cp.write_row((r.passage_id, si, r.lane_id, r.opened_seq, r.opened_at, r.closed_at, r.card,
                                  r.auth_kind, r.auth_id, r.outcome, json.dumps(record_json(r), ensure_ascii=False)))
        # The writes and the two alarm look-ups in one round trip (pipeline mode): the
        # server runs them in order, so the look-ups see the rows written before them.
        with conn.pipeline():
            if touched_all:
                # In passage order, so instances writing the same passages lock them in one order.
                conn.execute(
                    "INSERT INTO passages (passage_id, site_id, lane_id, opened_seq, opened_at, closed_at, card,"
                    " auth_kind, auth_id, outcome, record) SELECT * FROM passage_staging ORDER BY passage_id"
                    " ON CONFLICT (passage_id) DO UPDATE SET closed_at = excluded.closed_at, card = excluded.card,"
                    " auth_kind = excluded.auth_kind, auth_id = excluded.auth_id, outcome = excluded.outcome,"
                    " record = excluded.record",
                )
            if update is not None:
                conn.execute(*update)
            lifts = self._lifts_send(conn, lifted)
            cards = self._cards_send(conn, [(si, r) for si, r in touched_all.values() if r.card])
            shared = lifts.fetchall() if lifts is not None else []
            pairs = cards.fetchall() if cards is not None else []
        self._lifts_finish(conn, shared, result)
        self._cards_finish(conn, pairs, result)
        for k in spans:
            self._resume[k] = (spans[k][1], records[k])

    def _lifts_send(self, conn: psycopg.Connection, bodies: list[dict]) -> psycopg.Cursor | None:
        """Record the lifts of zone-unique authorisations; the cursor of the look-up for
        those lifted on more than one site."""
        rows = []
        for body in bodies:
            auth = body.get("authorisation")
            if isinstance(auth, dict) and auth.get("kind") in ZONE_UNIQUE_AUTH and auth.get("id"):
                rows.append((auth["kind"], str(auth["id"]), body["site_id"], body["lane_id"], body["event_id"],
                             body["ts"]))
        if not rows:
            return None
        conn.cursor().executemany(
            "INSERT INTO lifts (auth_kind, auth_id, site_id, lane_id, event_id, ts) VALUES (%s, %s, %s, %s, %s, %s)"
            " ON CONFLICT DO NOTHING", rows)
        keys = sorted({(r[0], r[1]) for r in rows})
        return conn.execute(
            "SELECT l.auth_kind, l.auth_id, array_agg(DISTINCT l.site_id) FROM lifts l"
            " JOIN unnest(%b::text[], %b::text[]) AS t(k, i) ON l.auth_kind = t.k AND l.auth_id = t.i"
            " GROUP BY l.auth_kind, l.auth_id HAVING count(DISTINCT l.site_id) > 1",
            ([k for k, _ in keys], [i for _, i in keys]))

    def _lifts_finish(self, conn: psycopg.Connection, shared: list[tuple], result: IngestResult) -> None:
        """``instruction_replay``: one release instruction or approval lifted on two sites."""
        for kind, ident, _sites in shared:
            others = conn.execute(
                "SELECT site_id, lane_id, event_id::text, ts FROM lifts WHERE auth_kind = %s AND auth_id = %s"
                " ORDER BY ts", (kind, ident)).fetchall()
            detail = {"authorisation": {"kind": kind, "id": ident},
                      "lifts": [{"site_id": s, "lane_id": ln, "event_id": e, "ts": t.isoformat()}
                                for s, ln, e, t in others]}
            self._raise(conn, f"instruction_replay:{kind}:{ident}", "instruction_replay",
                        sorted({r[0] for r in others}), detail, result)

    def _cards_send(self, conn: psycopg.Connection, passages: list[tuple[str, Any]]) -> psycopg.Cursor | None:
        """The look-up for ``card_on_two_lanes``: a card in passages of two sites whose
        times overlap."""
        if not passages:
            return None
        return conn.execute(
            "SELECT t.pid, t.site_id, t.lane_id, t.card, p.passage_id, p.site_id, p.lane_id"
            " FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::timestamptz[], %b::timestamptz[])"
            " AS t(pid, site_id, lane_id, card, opened_at, closed_at)"
            " JOIN passages p ON p.card = t.card AND p.site_id <> t.site_id"
            " AND p.opened_at < coalesce(t.closed_at, 'infinity'::timestamptz)"
            " AND coalesce(p.closed_at, 'infinity'::timestamptz) > t.opened_at",
            ([r.passage_id for _, r in passages], [si for si, _ in passages], [r.lane_id for _, r in passages],
             [r.card for _, r in passages], [r.opened_at for _, r in passages], [r.closed_at for _, r in passages]),
        )

    def _cards_finish(self, conn: psycopg.Connection, rows: list[tuple], result: IngestResult) -> None:
        for pid, site_id, lane_id, card, other_pid, other_site, other_lane in rows:
            pair = sorted([(site_id, lane_id, pid), (other_site, other_lane, other_pid)])
            detail = {"card": card, "passages": [{"site_id": s, "lane_id": ln, "passage_id": p} for s, ln, p in pair]}
            self._raise(conn, f"card_on_two_lanes:{card}:{pair[0][2]}:{pair[1][2]}", "card_on_two_lanes",
                        sorted({site_id, other_site}), detail, result)

    def _raise(self, conn: psycopg.Connection, key: str, alarm: str, sites: list[str], detail: dict,
               result: IngestResult) -> None:
        row = conn.execute(
            "INSERT INTO zone_alarms (alarm_id, key, alarm, site_ids, raised_at, detail)"
            " VALUES (%s, %s, %s, %s, now(), %s) ON CONFLICT (key) DO NOTHING RETURNING alarm_id::text, raised_at",
            (uuid.uuid4(), key, alarm, sites, Jsonb(detail)),
        ).fetchone()
        if row is not None:
            result.alarms.append(zone_alarm_json(row[0], alarm, sites, row[1], None, detail))

    # ------------------------------------------------------------------ sites and states

    def site_status(self, prefix: str, site_id: str, online: bool) -> dict | None:
        """Record a lane PC's retained status; a change to offline raises ``site_offline``
        (once, whichever instance sees it first), back online clears it."""
        conn = self._c()
        with conn.transaction():
            conn.execute("INSERT INTO sites (prefix, site_id) VALUES (%s, %s) ON CONFLICT (prefix) DO NOTHING",
                         (prefix, site_id))
            changed = conn.execute(
                "UPDATE sites SET online = %s, status_at = now() WHERE prefix = %s AND online IS DISTINCT FROM %s"
                " RETURNING coalesce(site_id, %s)", (online, prefix, online, site_id),
            ).fetchone()
            if changed is None:
                return None
            site = changed[0]
            if online:
                conn.execute("UPDATE zone_alarms SET cleared_at = now() WHERE alarm = 'site_offline'"
                             " AND cleared_at IS NULL AND site_ids = %s", ([site],))
                return None
            result = IngestResult()
            stamp = datetime.now(timezone.utc)
            self._raise(conn, f"site_offline:{site}:{stamp.isoformat()}", "site_offline", [site],
                        {"site_id": site, "prefix": prefix}, result)
            return result.alarms[0] if result.alarms else None

    def save_states(self, states: Iterable[tuple[str, str, str, dict, int | None]]) -> None:
        """Latest retained lane states: (prefix, site, lane, state, last_seq). ``last_seq``
        raises ``max_seq``: a lane's events that never reached us become a known gap."""
        conn = self._c()
        rows = sorted(states, key=lambda r: (r[1], r[2]))
        if not rows:
            return
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO lanes AS l (site_id, lane_id, prefix, max_seq, state, state_at)"
                " VALUES (%s, %s, %s, %s, %s, now()) ON CONFLICT (site_id, lane_id) DO UPDATE SET"
                " prefix = excluded.prefix, max_seq = greatest(l.max_seq, excluded.max_seq),"
                " state = excluded.state, state_at = excluded.state_at",
                [(site, lane, prefix, last_seq or 0, Jsonb(state)) for prefix, site, lane, state, last_seq in rows],
            )

    # ------------------------------------------------------------------ gaps

    def plan_replays(self, grace_s: float, timeout_s: float, replay_max: int) -> list[ReplayRequest]:
        """The replays to ask for now: per lane with a gap older than ``grace_s`` and no
        replay in flight (one that still brings events within ``timeout_s`` is)."""
        conn = self._c()
        out: list[ReplayRequest] = []
        with conn.transaction():
            conn.execute("UPDATE lanes SET gap_from = NULL, gap_since = NULL, replay_from = NULL, replay_to = NULL"
                         " WHERE contiguous_seq >= max_seq AND (gap_from IS NOT NULL OR replay_to IS NOT NULL)")
            rows = conn.execute(
                "SELECT site_id, lane_id, prefix, contiguous_seq, max_seq, gap_from, gap_since, replay_to,"
                " coalesce(replay_progress_at, replay_at), now(),"
                " (SELECT min(seq) FROM events e WHERE e.site_id = l.site_id AND e.lane_id = l.lane_id"
                "  AND e.seq > l.contiguous_seq)"
                " FROM lanes l WHERE contiguous_seq < max_seq AND prefix IS NOT NULL"
                " ORDER BY site_id, lane_id FOR UPDATE SKIP LOCKED"
            ).fetchall()
            for site, lane, prefix, contig, max_seq, gap_from, gap_since, replay_to, progress, now, nxt in rows:
                start = contig + 1
                continuing = replay_to is not None and contig >= replay_to and gap_from != start
                if gap_from != start:
                    conn.execute("UPDATE lanes SET gap_from = %s, gap_since = now() WHERE site_id = %s"
                                 " AND lane_id = %s", (start, site, lane))
                    if not continuing:
                        continue  # a new gap: give out-of-order deliveries their grace
                elif (now - gap_since).total_seconds() < grace_s:
                    continue
                if (replay_to is not None and contig < replay_to and progress is not None
                        and (now - progress).total_seconds() < timeout_s):
                    continue  # in flight and still bringing events
                end = (nxt - 1) if nxt is not None else max_seq
                end = min(end, contig + replay_max)
                conn.execute(
                    "UPDATE lanes SET replay_from = %s, replay_to = %s, replay_at = now(), replay_progress_at = now(),"
                    " replays = replays + 1 WHERE site_id = %s AND lane_id = %s", (start, end, site, lane))
                out.append(ReplayRequest(prefix, site, lane, start, end))
        return out


def _by_seq(ev: Incoming) -> int:
    return ev.seq


def zone_alarm_json(alarm_id: str, alarm: str, sites: list[str], raised_at: datetime,
                    cleared_at: datetime | None, detail: dict) -> dict:
    """A zone alarm as the API lists it and MQTT publishes it."""
    return {"alarm_id": alarm_id, "source": "zone", "alarm": alarm, "site_ids": list(sites),
            "raised_at": raised_at.isoformat(), "cleared_at": cleared_at.isoformat() if cleared_at else None,
            "open": cleared_at is None, **detail}


def parse_body(raw: bytes, max_bytes: int = 65536) -> dict:
    """An event body from MQTT: a JSON object, bounded (ValueError says why not)."""
    if len(raw) > max_bytes:
        raise ValueError(f"event larger than {max_bytes} bytes")
    body = json.loads(raw)
    if not isinstance(body, dict):
        raise ValueError("an event is a JSON object")
    return body
