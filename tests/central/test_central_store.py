"""The central's store against a real PostgreSQL, without MQTT (R12, R14): events of a
lane arriving in order, out of order across batches, twice, and with a gap filled later
end with the same rows, the same completeness and the same passages. In order, the walk
and the fold run on the batch in memory; out of order they read the table: both ways
must agree."""

from __future__ import annotations

import itertools
import json
import random
import uuid
from datetime import datetime, timedelta, timezone

import psycopg

from gatectl.central.ingest import parse_event
from gatectl.central.store import Incoming, Store

PREFIX = "gatectl/site-a"
T0 = datetime(2026, 11, 27, 8, 0, tzinfo=timezone(timedelta(hours=8)))


def passage(n: int, lane: str) -> list[tuple[str, dict]]:
    pid, req = str(uuid.uuid4()), str(uuid.uuid4())
    card = f"{n:04d}E2850E"
    auth = {"kind": "release_instruction", "id": f"CMD-{lane}-{n:06d}"}
    return [
        ("passage.opened", {"passage_id": pid}),
        ("card.read", {"passage_id": pid, "card": card}),
        ("release.requested", {"passage_id": pid, "request_id": req, "card": card, "gross_weight_kg": 31250.0}),
        ("release.decided", {"passage_id": pid, "request_id": req, "source": "authority", "decision": "release",
                             "instruction_id": auth["id"], "hint": "核放单已核放，请通行"}),
        ("authorisation.committed", {"passage_id": pid, "authorisation": auth}),
        ("barrier.lifted", {"passage_id": pid, "authorisation": auth, "reason": "lift"}),
        ("passage.closed", {"passage_id": pid, "outcome": "passed", "reason": None}),
    ]


def lane_events(lanes: list[str], passages: int) -> list[Incoming]:
    out = []
    clock = itertools.count()
    for lane in lanes:
        seq = 0
        for n in range(passages):
            for type_, data in passage(n, lane):
                seq += 1
                body = {"event_id": str(uuid.uuid4()), "seq": seq, "site_id": "site-a", "lane_id": lane,
                        "type": type_, "ts": (T0 + timedelta(seconds=next(clock))).isoformat(), **data}
                out.append(parse_event(PREFIX, lane, json.dumps(body, ensure_ascii=False).encode(), 0.0))
    return out


def fresh_db(postgres, name: str) -> str:
    admin = postgres.url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    return postgres.url.rsplit("/", 1)[0] + "/" + name


def snapshot(url: str) -> dict:
    with psycopg.connect(url) as conn:
        return {
            "events": sorted(r[0] for r in conn.execute("SELECT event_id::text FROM events")),
            "lanes": conn.execute("SELECT lane_id, contiguous_seq, max_seq, stored, folded_seq FROM lanes"
                                  " ORDER BY lane_id").fetchall(),
            "passages": conn.execute("SELECT passage_id, lane_id, opened_seq, card, outcome, auth_id, record"
                                     " FROM passages ORDER BY passage_id").fetchall(),
            "lifts": conn.execute("SELECT event_id::text FROM lifts ORDER BY 1").fetchall(),
        }


def test_in_order_out_of_order_twice_and_gap_store_the_same(postgres):
    """R12/R14: one lane stream stored in order (walk and fold in memory), and shuffled
    across batches with repeats and a gap filled last (walk and fold from the table):
    same events once, contiguous_seq at the end, the same passages."""
    events = lane_events(["B1-IN", "B2-OUT"], 12)
    a = Store(fresh_db(postgres, "store_in_order"))
    a.connect()
    try:
        for i in range(0, len(events), 20):
            result = a.ingest(events[i:i + 20])
            assert result.stored == len(events[i:i + 20]) and not result.fold_problems
    finally:
        a.close()
    expected = snapshot(a.url)
    assert [row[1:] for row in expected["lanes"]] == [(84, 84, 84, 84)] * 2
    assert len(expected["passages"]) == 24 and {p[4] for p in expected["passages"]} == {"passed"}

    rng = random.Random(14)
    gap = {ev.event_id for ev in events if ev.lane_id == "B1-IN" and 30 <= ev.seq <= 33}
    rest = [ev for ev in events if ev.event_id not in gap]
    shuffled = rest + rng.sample(rest, 40)  # every event, 40 of them twice
    rng.shuffle(shuffled)
    b = Store(fresh_db(postgres, "store_shuffled"))
    b.connect()
    try:
        stored = 0
        for i in range(0, len(shuffled), 25):
            stored += b.ingest(shuffled[i:i + 25]).stored
        assert stored == len(rest)
        before_gap = snapshot(b.url)
        assert dict((r[0], r[1]) for r in before_gap["lanes"])["B1-IN"] == 29  # never past the gap
        result = b.ingest([ev for ev in events if ev.event_id in gap])
        assert result.lanes[("site-a", "B1-IN")] == 84
    finally:
        b.close()
    assert snapshot(b.url) == expected
