"""S6 with deferred fsyncs: a group with no authorisation in it is committed without its
own fsync and becomes durable with the next one; an authorisation still waits for its
own. Nobody hears of an event (future, subscriber) before it is durable."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path

from gatectl import events as ev
from gatectl.events import Stamped
from gatectl.journal import Entry, Journal
from gatectl.lane.commands import CommitAuthorisation

NOW = datetime(2026, 11, 27, 8, 0, tzinfo=timezone.utc)
LANES = ["B1", "B2", "B3", "B4"]


def opened(pid: str) -> Entry:
    return Entry(ev.PassageOpened(passage_id=pid), NOW)


def test_s6_plain_groups_skip_their_fsync_and_subscribers_hear_in_commit_order(tmp_path: Path) -> None:
    """Four lanes append plain events from threads while a fifth commits authorisations:
    fewer fsyncs than groups, every future answered, and the subscriber hears every
    event once, in seq order per lane, and every authorisation durable (S6)."""
    j = Journal(tmp_path / "gatectl.db", "SITE")
    heard: list[Stamped] = []
    j.subscribe(heard.extend)
    j.start()
    futures = []
    lock = threading.Lock()

    def lane(lane_id: str) -> None:
        for n in range(60):
            f = j.append(lane_id, [opened(f"{lane_id}-{n}")])
            with lock:
                futures.append(f)

    threads = [threading.Thread(target=lane, args=(lane_id,)) for lane_id in LANES]
    for t in threads:
        t.start()
    auths = []
    for n in range(5):
        auths.append(j.append("A1", [opened(f"A1-{n}")],
                              authorisation=CommitAuthorisation("release_instruction", f"CMD-{n}", f"A1-{n}", NOW)))
        auths[-1].result(timeout=30)
    for t in threads:
        t.join()
    for f in futures:
        assert len(f.result(timeout=30)) == 1
    groups, syncs = j.groups, j.syncs
    j.close()
    assert syncs < groups, f"{syncs} fsyncs for {groups} groups"
    per_lane: dict[str, list[int]] = {}
    for stamped in heard:
        per_lane.setdefault(stamped.lane_id, []).append(stamped.seq)
    for lane_id in LANES:
        assert per_lane[lane_id] == list(range(1, 61)), lane_id
    assert per_lane["A1"] == list(range(1, 11))  # five passages, five authorisations
    j = Journal(tmp_path / "gatectl.db", "SITE")
    assert sum(1 for _ in j.events()) == 4 * 60 + 10


def test_s6_plain_events_whose_future_resolved_survive_a_kill(tmp_path: Path) -> None:
    """A plain append's future resolves only once its group is durable (the writer's own
    fsync when no authorisation came to cover it): SIGKILL right then loses nothing."""
    db = tmp_path / "gatectl.db"
    child = f"""
import os, signal
from datetime import datetime, timezone
from gatectl import events as ev
from gatectl.journal import Journal, Entry
now = datetime(2026, 11, 27, 8, 0, tzinfo=timezone.utc)
j = Journal({str(db)!r}, "SITE")
j.start()
for n in range(20):
    f = j.append("B1", [Entry(ev.PassageOpened(passage_id=f"P{{n}}"), now)])
f.result(timeout=30)
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    j = Journal(db, "SITE")
    assert [e["seq"] for e in j.events("B1")] == list(range(1, 21))


def test_s6_close_makes_held_plain_groups_durable_and_answers_them(tmp_path: Path) -> None:
    """Closing the journal right after plain appends answers every one of them, and the
    journal reopened holds them all."""
    j = Journal(tmp_path / "gatectl.db", "SITE")
    j.start()
    futures = [j.append("B1", [opened(f"P{n}")]) for n in range(30)]
    j.close()
    assert all(len(f.result(timeout=30)) == 1 for f in futures)
    j = Journal(tmp_path / "gatectl.db", "SITE")
    assert [e["seq"] for e in j.events("B1")] == list(range(1, 31))
