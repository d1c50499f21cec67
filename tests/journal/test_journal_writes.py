"""The journal's writer (S1, S6, S7): group commit off the event loop, authorisations
durable before their lift, failures that record nothing, files it refuses to start from,
journals of older versions, time-ordered ids."""

from __future__ import annotations

import concurrent.futures
import json
import signal
import sqlite3
import subprocess
import sys
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest

from gatectl import events as ev
from gatectl.ids import time_ordered_id
from gatectl.journal import AuthorisationReplay, Entry, Journal, JournalError, JournalRefused
from gatectl.lane.commands import CommitAuthorisation

NOW = datetime(2026, 11, 27, 8, 0, tzinfo=timezone.utc)


def opened(pid: str) -> Entry:
    return Entry(ev.PassageOpened(passage_id=pid), NOW)


def commit(auth_id: str, pid: str = "P1") -> CommitAuthorisation:
    return CommitAuthorisation("release_instruction", auth_id, pid, NOW)


def test_s6_an_authorisation_whose_future_resolved_survives_a_kill(tmp_path: Path) -> None:
    """S6, S7: the lane pulses once the authorisation's future resolves; SIGKILL right
    then, and the restarted journal holds the authorisation, its events and their seqs."""
    db = tmp_path / "gatectl.db"
    child = f"""
import os, signal
from datetime import datetime, timezone
from gatectl import events as ev
from gatectl.journal import Journal, Entry
from gatectl.lane.commands import CommitAuthorisation
now = datetime(2026, 11, 27, 8, 0, tzinfo=timezone.utc)
j = Journal({str(db)!r}, "SITE")
j.start()
j.append("B1-IN", [Entry(ev.PassageOpened(passage_id="P1"), now)])
j.append("B1-IN", [Entry(ev.AuthorityDecision(request_id="r", decision="release", instruction_id="CMD-1",
                                               passage_id="P1"), now)],
         authorisation=CommitAuthorisation("release_instruction", "CMD-1", "P1", now)).result()
os.kill(os.getpid(), signal.SIGKILL)  # the coil would be energised here
"""
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    j = Journal(db, "SITE")
    rows = [(b["seq"], b["type"]) for b in j.events("B1-IN")]
    assert rows == [(1, "passage.opened"), (2, "release.decided"), (3, "authorisation.committed")]
    recovered, _ = j.recover("B1-IN")
    assert recovered is not None and recovered.authorisation == ("release_instruction", "CMD-1")
    with pytest.raises(AuthorisationReplay):
        j.write("B1-IN", [], authorisation=commit("CMD-1"))


def test_group_commit_takes_every_lanes_appends_in_few_transactions(tmp_path: Path) -> None:
    """Appends of many lanes queued together commit in groups (one transaction, one fsync
    each), keep their per-lane order and contiguous seqs, and every future resolves."""
    j = Journal(tmp_path / "gatectl.db", "SITE")
    j.start()
    try:
        futures: list[concurrent.futures.Future] = []
        gate = threading.Event()
        # Hold the writer on a job while 32 lanes queue 10 appends each.
        j.run(lambda tx: gate.wait(5))
        for n in range(10):
            for lane in range(32):
                futures.append(j.append(f"L{lane:02d}", [opened(f"P{lane}-{n}")]))
        gate.set()
        for f in futures:
            f.result(timeout=30)
        assert j.group_appends == 320
        assert j.groups < 320 / 4, f"{j.groups} transactions for 320 appends"
        for lane in range(32):
            assert [b["seq"] for b in j.events(f"L{lane:02d}")] == list(range(1, 11))
            assert [b["passage_id"] for b in j.events(f"L{lane:02d}")] == [f"P{lane}-{n}" for n in range(10)]
    finally:
        j.close()


def test_s1_a_replay_in_a_group_refuses_only_itself(tmp_path: Path) -> None:
    """S1: one lane's replayed instruction in a group: that authorisation is refused (its
    preceding events still journaled), the other lane's commits."""
    j = Journal(tmp_path / "gatectl.db", "SITE")
    j.write("A", [opened("PA")], authorisation=commit("CMD-1", "PA"))
    j.start()
    try:
        gate = threading.Event()
        j.run(lambda tx: gate.wait(5))
        again = j.append("A", [Entry(ev.LoopChanged(loop="arrival_loop", occupied=True), NOW)],
                         authorisation=commit("CMD-1", "PA"))
        fresh = j.append("B", [opened("PB")], authorisation=commit("CMD-2", "PB"))
        gate.set()
        with pytest.raises(AuthorisationReplay):
            again.result(timeout=10)
        assert [s.type for s in fresh.result(timeout=10)] == ["passage.opened", "authorisation.committed"]
        assert [b["type"] for b in j.events("A")] == ["passage.opened", "authorisation.committed", "loop.changed"]
    finally:
        j.close()


def test_s6_a_failed_group_records_nothing_refuses_its_authorisation_and_retries_the_rest(tmp_path: Path) -> None:
    """S6: the disk refuses a group: nothing of it is recorded, the authorisation in it is
    refused at once (no lift), the journal reports itself faulty; once writes work again the
    plain events of the group are journaled, in order, and it reports itself healthy."""
    j = Journal(tmp_path / "gatectl.db", "SITE")
    health: list[tuple[bool, str]] = []
    j.on_health(lambda ok, reason: health.append((ok, reason)))
    j.write("A", [opened("P0")])
    # Make every write fail as a full disk would: a trigger that aborts inserts of events.
    j._db.execute("CREATE TEMP TRIGGER full BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END")
    j.start()
    try:
        plain = j.append("A", [Entry(ev.LoopChanged(loop="arrival_loop", occupied=True), NOW)])
        auth = j.append("A", [Entry(ev.CardRead(card="0100E2850E", passage_id="P0"), NOW)],
                        authorisation=commit("CMD-9", "P0"))
        with pytest.raises(JournalError):
            auth.result(timeout=10)
        assert health and health[0][0] is False and j.faulty
        assert [b["type"] for b in j.events("A")] == ["passage.opened"]
        j.run(lambda tx: tx.db.execute("DROP TRIGGER temp.full"))
        plain.result(timeout=10)
        j.append("A", []).result(timeout=10)
        assert [b["type"] for b in j.events("A")] == ["passage.opened", "loop.changed", "card.read"]
        assert j.faulty is None and health[-1][0] is True
        assert j.reader().execute("SELECT COUNT(*) FROM authorisations").fetchone()[0] == 0
    finally:
        j.close()


def test_s7_an_empty_file_where_the_journal_should_be_is_refused(tmp_path: Path) -> None:
    """S7, S1: a 0-byte journal would start seq again at 1 and forget every spent
    authorisation: refused, with a message saying what to do."""
    path = tmp_path / "gatectl.db"
    path.write_bytes(b"")
    with pytest.raises(JournalRefused, match="empty file.*gatectl journal new"):
        Journal(path, "SITE")
    path.write_bytes(b"some notes, not a database\n")
    with pytest.raises(JournalRefused, match="not a gatectl journal"):
        Journal(path, "SITE")
    other = tmp_path / "other.db"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE invoices (id INTEGER)")
    db.commit()
    db.close()
    with pytest.raises(JournalRefused, match="something else"):
        Journal(other, "SITE")


def test_s7_a_journal_of_the_first_version_is_migrated_and_recovers(tmp_path: Path) -> None:
    """S7: a journal written before the projection kept recovery columns: opening it folds
    each lane's last stretch again, so the open passage and the last lift come back."""
    path = tmp_path / "gatectl.db"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE events (lane_id TEXT NOT NULL, seq INTEGER NOT NULL, event_id TEXT NOT NULL UNIQUE,
            type TEXT NOT NULL, ts TEXT NOT NULL, body TEXT NOT NULL, PRIMARY KEY (lane_id, seq)) WITHOUT ROWID;
        CREATE TABLE passages (passage_id TEXT PRIMARY KEY, lane_id TEXT NOT NULL, opened_seq INTEGER NOT NULL,
            opened_at TEXT NOT NULL, closed_at TEXT, card TEXT, gross_weight_kg REAL, request_id TEXT,
            decision TEXT, instruction_id TEXT, form_id TEXT, hint TEXT, auth_kind TEXT, auth_id TEXT,
            outcome TEXT, reason TEXT);
    """)
    bodies = [
        {"type": "passage.opened", "card": None, "passage_id": "P1"},
        {"type": "card.read", "card": "0100E2850E", "passage_id": "P1"},
        {"type": "authorisation.committed", "passage_id": "P1",
         "authorisation": {"kind": "release_instruction", "id": "CMD-7"}},
        {"type": "barrier.lifted", "authorisation": {"kind": "release_instruction", "id": "CMD-7"}, "reason": "lift",
         "passage_id": "P1"},
        {"type": "loop.changed", "loop": "safety_loop", "occupied": True, "passage_id": "P1"},
    ]
    for seq, body in enumerate(bodies, 1):
        full = {"event_id": f"e{seq}", "seq": seq, "site_id": "SITE", "lane_id": "B1-IN", "ts": NOW.isoformat(), **body}
        db.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)",
                   ("B1-IN", seq, full["event_id"], body["type"], full["ts"], json.dumps(full)))
    db.execute("INSERT INTO passages (passage_id, lane_id, opened_seq, opened_at, card, auth_kind, auth_id)"
               " VALUES ('P1', 'B1-IN', 1, ?, '0100E2850E', 'release_instruction', 'CMD-7')", (NOW.isoformat(),))
    db.commit()
    db.close()
    j = Journal(path, "SITE")
    recovered, lane = j.recover("B1-IN")
    assert recovered is not None and recovered.entered and recovered.lifted
    assert lane.last_lift == ("release_instruction", "CMD-7")
    assert j.last_seq("B1-IN") == 5
    assert j.reader().execute("PRAGMA user_version").fetchone()[0] >= 2
    j.close()


def test_event_ids_are_uuids_in_time_order_for_flat_index_growth(tmp_path: Path) -> None:
    """Journal growth (docs/performance.md): ids are version-7 UUIDs, so each new event
    goes to the end of the event_id index instead of a random leaf."""
    ids = [time_ordered_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    parsed = [uuid.UUID(i) for i in ids]
    assert {u.version for u in parsed} == {7} and {u.variant for u in parsed} == {uuid.RFC_4122}
    millis = [u.int >> 80 for u in parsed]
    assert millis == sorted(millis)
    j = Journal(tmp_path / "gatectl.db", "SITE")
    written = j.write("B1-IN", [Entry(ev.LoopChanged(loop="arrival_loop", occupied=True), NOW) for _ in range(50)])
    assert [uuid.UUID(s.event_id).version for s in written] == [7] * 50


def test_s6_the_lanes_answer_never_waits_for_a_projection(tmp_path: Path) -> None:
    """S6: a projection that takes its time (records catching up, a slow disk) runs after
    the lane's authorisation future has resolved, not before."""
    j = Journal(tmp_path / "gatectl.db", "SITE")
    release = threading.Event()
    projected = threading.Event()

    def slow(tx, written) -> None:
        release.wait(10)
        projected.set()

    j.add_projector(slow)
    j.start()
    try:
        future = j.append("A", [opened("P1")], authorisation=commit("CMD-1", "P1"))
        assert [s.type for s in future.result(timeout=10)] == ["passage.opened", "authorisation.committed"]
        assert not projected.is_set()
        release.set()
        assert projected.wait(10)
    finally:
        release.set()
        j.close()


def test_an_append_that_can_never_be_written_is_refused_alone(tmp_path: Path) -> None:
    """Not the disk but the data (a value no JSON holds): that append is refused with the
    error and the others of its group commit; the writer goes on."""
    j = Journal(tmp_path / "gatectl.db", "SITE")
    j.start()
    try:
        gate = threading.Event()
        j.run(lambda tx: gate.wait(5))
        good = j.append("A", [opened("P1")])
        bad = j.append("B", [Entry(ev.CardRead(card=object(), passage_id="P2"), NOW)])  # type: ignore[arg-type]
        after = j.append("A", [opened("P3")])
        gate.set()
        assert [s.seq for s in good.result(timeout=10)] == [1]
        with pytest.raises(JournalError, match="cannot be journaled"):
            bad.result(timeout=10)
        assert [s.seq for s in after.result(timeout=10)] == [2]
        assert j.events("B") == [] and j.faulty is None
        cancelled = j.run(lambda tx: gate.wait(0.2))
        cancelled.cancel()  # a caller that gave up: the writer shrugs
        assert [s.seq for s in j.append("A", [opened("P4")]).result(timeout=10)] == [3]
    finally:
        j.close()


def test_s6_a_lingering_request_commits_with_the_authorisation_that_follows(tmp_path: Path) -> None:
    """S6 with one fsync: plain entries appended with ``linger`` wait in the writer for the
    lane's next append, and commit with the authorisation in one transaction, in order.
    Meanwhile the writer still runs jobs."""
    j = Journal(tmp_path / "gatectl.db", "SITE")
    j.start()
    try:
        groups = j.groups
        requested = j.append("A", [Entry(ev.ReleaseRequested(request_id="r1", card="C1"), NOW)], linger=60.0)
        assert j.run(lambda tx: "ran").result(timeout=10) == "ran"
        assert not requested.done() and j.groups == groups
        authorised = j.append("A", [Entry(ev.AuthorityDecision(request_id="r1", decision="release",
                                                               instruction_id="CMD-1"), NOW)],
                              authorisation=commit("CMD-1", "P1"))
        assert [s.type for s in authorised.result(timeout=10)] == ["release.decided", "authorisation.committed"]
        assert [s.type for s in requested.result(timeout=10)] == ["release.requested"]
        assert j.groups == groups + 1
        assert [b["type"] for b in j.events("A")] == ["release.requested", "release.decided", "authorisation.committed"]
    finally:
        j.close()


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = threading.Event()
    timer = threading.Timer(timeout, deadline.set)
    timer.start()
    try:
        while not predicate():
            assert not deadline.wait(0.005), "timed out"
    finally:
        timer.cancel()


def test_s6_rows_written_while_a_request_lingers_are_nobodys_until_the_commit(tmp_path: Path) -> None:
    """S6: while a release request lingers, the writer writes its rows into an open
    transaction, so the authorisation that follows adds only its own. Until that commit
    no reader sees them; a job meanwhile gets the connection (the rows are written again
    after it); the group then commits in order with contiguous seqs."""
    j = Journal(tmp_path / "gatectl.db", "SITE")
    j.start()
    try:
        requested = j.append("A", [opened("P1"), Entry(ev.ReleaseRequested(request_id="r1", card="C1"), NOW)],
                             linger=60.0)
        wait_for(lambda: j.prebuilt_appends >= 1)
        assert j.events("A") == [] and not requested.done()
        assert j.run(lambda tx: tx.db.execute("SELECT count(*) FROM events").fetchone()[0]).result(timeout=10) == 0
        wait_for(lambda: j.prebuilt_appends >= 2)  # written again once the job was done
        authorised = j.append("A", [Entry(ev.AuthorityDecision(request_id="r1", decision="release",
                                                               instruction_id="CMD-1", passage_id="P1"), NOW)],
                              authorisation=commit("CMD-1", "P1"))
        assert [s.seq for s in authorised.result(timeout=10)] == [3, 4]
        assert [s.seq for s in requested.result(timeout=10)] == [1, 2]
        assert [(b["seq"], b["type"]) for b in j.events("A")] == [
            (1, "passage.opened"), (2, "release.requested"), (3, "release.decided"), (4, "authorisation.committed")]
        assert j.passage("P1")["instruction_id"] == "CMD-1"
    finally:
        j.close()


def test_s6_a_kill_while_a_request_lingers_leaves_none_of_its_rows(tmp_path: Path) -> None:
    """S6, S7: SIGKILL while a request's rows sit in the open transaction: the restarted
    journal holds what was committed before and nothing of the request, which no lane
    was ever told was journaled; seqs go on from the last commit."""
    db = tmp_path / "gatectl.db"
    child = f"""
import os, signal, time
from datetime import datetime, timezone
from gatectl import events as ev
from gatectl.journal import Journal, Entry
now = datetime(2026, 11, 27, 8, 0, tzinfo=timezone.utc)
j = Journal({str(db)!r}, "SITE")
j.start()
j.append("B1-IN", [Entry(ev.PassageOpened(passage_id="P0"), now)]).result()
j.append("B1-IN", [Entry(ev.ReleaseRequested(request_id="r", card="C1"), now)], linger=60.0)
while j.prebuilt_appends < 1:
    time.sleep(0.005)
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    j = Journal(db, "SITE")
    assert [(b["seq"], b["type"]) for b in j.events("B1-IN")] == [(1, "passage.opened")]
    assert [s.seq for s in j.write("B1-IN", [opened("P1")])] == [2]


def test_a_lingering_append_commits_alone_after_its_linger_or_at_close(tmp_path: Path) -> None:
    """Nothing follows: the lingering entries commit once their linger is over; a journal
    closing commits whatever still lingers."""
    j = Journal(tmp_path / "gatectl.db", "SITE")
    j.start()
    try:
        alone = j.append("A", [opened("P1")], linger=0.05)
        assert [s.seq for s in alone.result(timeout=10)] == [1]
        last = j.append("A", [opened("P2")], linger=60.0)
    finally:
        j.close()
    assert [s.seq for s in last.result(timeout=0)] == [2]
    assert [b["passage_id"] for b in Journal(tmp_path / "gatectl.db", "SITE").events("A")] == ["P1", "P2"]
