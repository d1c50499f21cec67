"""The journal gives the lanes priority (S6): commits before projections, subscribers in
commit order, reads one at a time on one thread, pages built without holding the
interpreter (docs/performance.md, benches 1, 8 and 9)."""

from __future__ import annotations

import asyncio
import threading
from datetime import datetime, timezone
from pathlib import Path

import pytest

import gatectl.journal as journal_module
from gatectl import events as ev
from gatectl.journal import Entry, Journal
from gatectl.lane.commands import CommitAuthorisation

NOW = datetime(2026, 11, 27, 8, 0, tzinfo=timezone.utc)


def loop(occupied: bool) -> Entry:
    return Entry(ev.LoopChanged(loop="arrival_loop", occupied=occupied), NOW)


def test_s6_commits_go_before_projections_which_follow_in_commit_order(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """S6: what the lanes append while the writer holds a projection back is committed
    first; the projection then takes both commits at once, and subscribers hear every
    event once, in commit order, before a job's events."""
    monkeypatch.setattr(journal_module, "PROJECT_AFTER_S", 30.0)  # held until a job comes
    monkeypatch.setattr(journal_module, "PROJECT_WITHIN_S", 30.0)
    j = Journal(tmp_path / "gatectl.db", "SITE")
    projected: list[list[tuple[str, int]]] = []
    heard: list[tuple[str, int]] = []
    j.add_projector(lambda tx, written: projected.append([(s.lane_id, s.seq) for s in written]))
    j.subscribe(lambda written: heard.extend((s.lane_id, s.seq) for s in written))
    j.start()
    try:
        j.append("A", [loop(True)]).result(timeout=10)
        j.append("B", [Entry(ev.PassageOpened(passage_id="P1"), NOW)],
                 authorisation=CommitAuthorisation("release_instruction", "CMD-1", "P1", NOW)).result(timeout=10)
        assert projected == [] and heard == []  # committed, durable, not projected yet
        j.run(lambda tx: tx.append("A", ev.LoopChanged(loop="arrival_loop", occupied=False), NOW)).result(timeout=10)
        j.run(lambda tx: None).result(timeout=10)  # the writer told subscribers of the first job first
        assert projected[0] == [("A", 1), ("B", 1), ("B", 2)]
        assert heard == [("A", 1), ("B", 1), ("B", 2), ("A", 2)]
    finally:
        j.close()


def test_a_closing_journal_projects_what_it_held_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal_module, "PROJECT_AFTER_S", 30.0)
    monkeypatch.setattr(journal_module, "PROJECT_WITHIN_S", 30.0)
    j = Journal(tmp_path / "gatectl.db", "SITE")
    heard: list[int] = []
    j.subscribe(lambda written: heard.extend(s.seq for s in written))
    j.start()
    j.append("A", [loop(True), loop(False)]).result(timeout=10)
    j.close()
    assert heard == [1, 2]


def test_events_page_is_the_stored_bodies_joined(tmp_path: Path) -> None:
    """The page the API serves: byte for byte the stored JSON bodies in seq order per lane,
    Chinese text included, for any lane, start and limit."""
    j = Journal(tmp_path / "gatectl.db", "SITE")
    j.write("B1-IN", [Entry(ev.PassageHeld(reason="no_answer", display="请到待检区", passage_id=f"P{n}"), NOW)
                      for n in range(30)])
    j.write("A0", [loop(n % 2 == 0) for n in range(7)])
    try:
        for lane, since, limit in [(None, None, 10_000), ("B1-IN", 12, 5), ("A0", None, None), ("none", None, 3),
                                   (None, None, 1)]:
            rows = [body for _, _, body in j.event_rows(lane, since, limit)]
            assert j.events_page(lane, since, limit) == ('{"events":[' + ",".join(rows) + "]}").encode()
    finally:
        j.close()


async def test_reads_run_one_at_a_time_on_one_thread(tmp_path: Path) -> None:
    """However many reads are asked for at once, one reader thread takes them in turn."""
    j = Journal(tmp_path / "gatectl.db", "SITE")
    j.write("A", [loop(True)])
    inside = 0
    most = 0
    lock = threading.Lock()

    def read(db) -> str:
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
        db.execute("SELECT COUNT(*) FROM events").fetchone()
        with lock:
            inside -= 1
        return threading.current_thread().name

    try:
        names = await asyncio.gather(*(j.read(read) for _ in range(20)))
        assert len(set(names)) == 1 and most == 1
    finally:
        j.close()
