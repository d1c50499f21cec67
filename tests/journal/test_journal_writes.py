"""The journal's write paths (S6, S7): durable and lift-record writes, time-ordered ids."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path

from gatectl.ids import time_ordered_id
from gatectl.journal import Journal, PendingEvent

NOW = datetime(2026, 11, 27, 8, 0, tzinfo=timezone.utc)


def test_s6_a_lift_record_written_without_waiting_for_the_disk_survives_a_kill(tmp_path: Path) -> None:
    """S6, S7: the authorisation is committed durably, the lift's record with
    ``durable=False`` just before the coil; the process is then SIGKILLed. Both are in
    the journal the restarted daemon opens, in order, and the connection is back to
    ``synchronous=FULL`` for everything after."""
    db = tmp_path / "gatectl.db"
    child = f"""
import os, signal
from datetime import datetime, timezone
from gatectl.journal import Journal, PendingEvent
now = datetime(2026, 11, 27, 8, 0, tzinfo=timezone.utc)
j = Journal({str(db)!r}, "SITE")
j.write("B1-IN", [PendingEvent("release.decided", now, {{}})],
        authorisation=("release_instruction", "CMD-1", "P1", now))
j.write("B1-IN", [PendingEvent("barrier.lifted", now, {{}})], durable=False)
assert j.db.execute("PRAGMA synchronous").fetchone()[0] == 2, "FULL again after the lift record"
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    j = Journal(db, "SITE")
    types = [r[0] for r in j.db.execute("SELECT type FROM events WHERE lane_id = 'B1-IN' ORDER BY seq")]
    assert types == ["release.decided", "authorisation.committed", "barrier.lifted"]
    seqs = [r[0] for r in j.db.execute("SELECT seq FROM events WHERE lane_id = 'B1-IN' ORDER BY seq")]
    assert seqs == [1, 2, 3]


def test_s6_sync_makes_the_log_durable_and_is_harmless_without_one(tmp_path: Path) -> None:
    j = Journal(tmp_path / "gatectl.db", "SITE")
    j.write("B1-IN", [PendingEvent("barrier.lifted", NOW, {})], durable=False)
    j.sync()  # fsyncs the -wal file
    j.close()  # the last connection checkpoints and removes the log
    assert not os.path.exists(f"{j.path}-wal")
    j.sync()  # no log at all: nothing to do, no error
    j = Journal(tmp_path / "gatectl.db", "SITE")
    assert j.db.execute("SELECT count(*) FROM events").fetchone()[0] == 1


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
    written = j.write("B1-IN", [PendingEvent("loop.changed", NOW, {}) for _ in range(50)])
    assert [uuid.UUID(e["event_id"]).version for e in written] == [7] * 50
    assert isinstance(j.db, sqlite3.Connection)
