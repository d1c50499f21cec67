"""The daily equipment ledger (每日设备管理台账, R15) on a clock the test moves: fault
windows from synthetic fault events, frame drops from the drivers' counters, shift checks,
written at midnight site time by ``Records.run`` and caught up after missed days."""

from __future__ import annotations

import asyncio
import json
from datetime import date, datetime
from pathlib import Path

import pytest

import gatectl.records as records_mod
from gatectl.journal import Entry

from .conftest import TZ, Synthetic, build_synthetic, cli, wait_until
from journaling import record, write

DAY = date(2026, 11, 26)


def fault_window(syn: Synthetic, lane: str, device: str, start: datetime, end: datetime | None) -> None:
    syn.at(start)
    write(syn.site.journal, lane, [
        Entry.of("fault.opened", start, {"device": device, "reason": "timeout"}),
        Entry.of("alarm.raised", start, {"alarm": "device_fault", "device": device, "reason": "timeout"}),
    ])
    if end is not None:
        syn.at(end)
        syn.lane_event(lane, "fault.closed", device=device)


def check(syn: Synthetic, when: datetime, phase: str) -> None:
    syn.at(when)
    syn.records.perform("shift.check", {"phase": phase, "guard": "王保安", "remarks": ""})


def drop_frames(syn: Synthetic, when: datetime, lane: str, n: int) -> None:
    """The card reader's codec drops n more frames; the daemon samples its counters."""
    syn.at(when)
    syn.site.lanes[lane].card_reader._codec.dropped["bad_checksum"] += n
    syn.records.sample(when, force=True)


async def test_r15_equipment_ledger_row_for_a_day_with_a_known_fault_window(
    synthetic: Synthetic, capsys: pytest.CaptureFixture[str]
) -> None:
    """R15: io1 faulty 10:00-12:30 on the day, a card reader faulty from 22:00 the evening
    before to 01:00, 7 frames dropped, two shift checks: at midnight ``run`` journals one
    equipment.daily row per device with availability, faults, seconds faulty, frames
    dropped and checks, for that day and the day before it (caught up), once only."""
    syn = synthetic
    check(syn, datetime(2026, 11, 25, 21, 0, tzinfo=TZ), "end")
    fault_window(syn, "B1-IN", "card_reader", datetime(2026, 11, 25, 22, 0, tzinfo=TZ),
                 datetime(2026, 11, 26, 1, 0, tzinfo=TZ))
    check(syn, datetime(2026, 11, 26, 8, 0, tzinfo=TZ), "start")
    drop_frames(syn, datetime(2026, 11, 26, 9, 0, tzinfo=TZ), "B1-IN", 5)
    fault_window(syn, "B1-IN", "io1", datetime(2026, 11, 26, 10, 0, tzinfo=TZ), datetime(2026, 11, 26, 12, 30, tzinfo=TZ))
    check(syn, datetime(2026, 11, 26, 20, 0, tzinfo=TZ), "end")
    drop_frames(syn, datetime(2026, 11, 26, 23, 0, tzinfo=TZ), "B1-IN", 2)

    syn.at(datetime(2026, 11, 27, 0, 0, 3, tzinfo=TZ))
    task = asyncio.create_task(syn.records.run())
    try:
        await wait_until(lambda: syn.records.store.equipment(DAY) != [], timeout=5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    rows = {(r["lane_id"], r["device"]): r for r in syn.records.store.equipment(DAY)}
    assert set(rows) == {(lane, dev) for lane in ("B1-IN", "B1-OUT")
                         for dev in ("card_reader", "weighbridge", "io1", "barrier")}
    io1 = rows[("B1-IN", "io1")]
    assert (io1["faults"], io1["faulty_s"], io1["availability"]) == (1, 9000.0, round(1 - 9000 / 86400, 6))
    reader = rows[("B1-IN", "card_reader")]
    assert (reader["faults"], reader["faulty_s"], reader["frames_dropped"]) == (0, 3600.0, 7)
    assert reader["availability"] == round(1 - 3600 / 86400, 6)
    other = rows[("B1-OUT", "io1")]  # the same module, seen healthy from the other lane
    assert (other["faults"], other["faulty_s"], other["availability"]) == (0, 0.0, 1.0)
    assert all(r["checks"] == 2 for r in rows.values())

    before = {(r["lane_id"], r["device"]): r for r in syn.records.store.equipment(date(2026, 11, 25))}
    assert (before[("B1-IN", "card_reader")]["faults"], before[("B1-IN", "card_reader")]["faulty_s"]) == (1, 7200.0)
    assert before[("B1-IN", "card_reader")]["checks"] == 1

    daily = [e for e in syn.events("equipment.daily", lane="B1-IN") if e["date"] == DAY.isoformat()]
    ev = next(e for e in daily if e["device"] == "io1")
    assert {k: ev[k] for k in ("date", "lane_id", "device", "availability", "faults", "faulty_s", "frames_dropped",
                               "checks")} == {"date": "2026-11-26", "lane_id": "B1-IN", "device": "io1",
                                              "availability": io1["availability"], "faults": 1, "faulty_s": 9000.0,
                                              "frames_dropped": 0, "checks": 2}
    n = len(syn.events("equipment.daily", lane="B1-IN"))
    syn.records.tick()
    assert len(syn.events("equipment.daily", lane="B1-IN")) == n  # written once

    assert cli(["ledger", "equipment", "--config", str(syn.config_path), "--date", "2026-11-26"]) == 0
    out = capsys.readouterr().out
    assert "每日设备管理台账" in out and "89.58%" in out and "2h30m00s" in out and "未入账" not in out
    assert cli(["ledger", "equipment", "--config", str(syn.config_path), "--date", "2026-11-26", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["final"] is True and len(body["rows"]) == 8


def test_r15_restart_ends_a_stale_fault_and_missed_days_are_caught_up(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """R15: the daemon stops while the barrier is faulty and starts three days later with
    it healthy: the fault ends at the restart (the lane finds the device well), and the
    ledger days missed while it was down are written on start, faulty all day."""
    monkeypatch.setattr(records_mod, "RESTART_GRACE_S", 0.0)
    first = build_synthetic(tmp_path, datetime(2026, 11, 26, 8, 0, tzinfo=TZ))
    fault_window(first, "B1-IN", "barrier", datetime(2026, 11, 26, 10, 0, tzinfo=TZ), None)
    first.site.journal.close()  # the daemon stops

    again = build_synthetic(tmp_path, datetime(2026, 11, 29, 9, 0, tzinfo=TZ))
    try:
        again.records.start()
        again.records.tick()
        for day, faulty in [(date(2026, 11, 26), 14 * 3600.0), (date(2026, 11, 27), 86400.0),
                            (date(2026, 11, 28), 86400.0)]:
            row = next(r for r in again.records.store.equipment(day) if (r["lane_id"], r["device"]) == ("B1-IN", "barrier"))
            assert row["faulty_s"] == faulty
        assert again.records.store.equipment(date(2026, 11, 27))[0]["faults"] == 0
        today = again.records.store.compute_equipment(date(2026, 11, 29), datetime(2026, 11, 29, 12, 0, tzinfo=TZ))
        barrier = next(r for r in today if (r["lane_id"], r["device"]) == ("B1-IN", "barrier"))
        assert barrier["faulty_s"] == 9 * 3600.0  # midnight to the restart at 09:00, not beyond
        assert len(again.events("ticket.opened")) == 1  # the barrier's ticket stays the one ticket
    finally:
        again.site.journal.close()


def test_records_catch_up_events_journaled_while_they_were_not_following(tmp_path: Path) -> None:
    """R8: events journaled while Records was not subscribed (an older daemon, a crash
    between the journal write and the projection) are projected on start, and the
    incident the forced passage needs is opened then."""
    from gatectl.config import load_config
    from gatectl.service import Site

    syn = build_synthetic(tmp_path, datetime(2026, 11, 26, 8, 0, tzinfo=TZ))
    syn.site.journal.close()
    bare = Site(load_config(syn.config_path), now=lambda: datetime(2026, 11, 26, 9, 0, tzinfo=TZ))
    alarm = record(bare, "B1-OUT", "alarm.raised", {"alarm": "forced_passage", "loop": "safety_loop", "state": "idle"})
    bare.journal.close()

    again = build_synthetic(tmp_path, datetime(2026, 11, 26, 9, 5, tzinfo=TZ))
    try:
        again.records.start()
        assert again.records.store.alarm(alarm["event_id"])["open"]
        (opened,) = again.events("incident.opened")
        assert opened["alarm_event_id"] == alarm["event_id"] and opened["lane_id"] == "B1-OUT"
        again.records.start()  # idempotent
        assert len(again.events("incident.opened")) == 1
    finally:
        again.site.journal.close()


def test_records_projection_failure_loses_nothing_and_projects_once(synthetic: Synthetic,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """R8: the record tables cannot be written for a moment (disk I/O error) as an alarm
    is journaled: the lane is not disturbed, and the next pass reads on from the journal:
    the alarm is listed, its incident opened, each once."""
    import sqlite3

    from gatectl.records import RecordStore

    syn = synthetic
    store = syn.records.store
    real = RecordStore._commit
    calls = {"n": 0}

    def failing(self, batch):
        calls["n"] += 1
        if calls["n"] == 1:
            raise sqlite3.OperationalError("disk I/O error")
        return real(self, batch)

    monkeypatch.setattr(RecordStore, "_commit", failing)
    alarm = syn.lane_event("B1-IN", "alarm.raised", alarm="tailgating", vehicles=2)  # does not raise
    assert store.alarm(alarm["event_id"]) is None
    syn.lane_event("B1-IN", "loop.changed", loop="arrival_loop", occupied=True)  # the lane goes on
    assert store.alarm(alarm["event_id"])["open"]
    (opened,) = syn.events("incident.opened")
    assert opened["alarm_event_id"] == alarm["event_id"] and opened["kind"] == "tailgating"
    assert len(store.alarms()) == 1
