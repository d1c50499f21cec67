"""A damaged event row met by the records' catch-up (#13): the daemon starts, the row is
reported once with file, lane and seq and skipped, and the records after it are there."""

from __future__ import annotations

import sqlite3
from datetime import datetime
from pathlib import Path

from .conftest import TZ, build_synthetic


def test_issue13_records_catch_up_skips_a_damaged_row_and_reports_it_once(tmp_path: Path, capsys) -> None:
    syn = build_synthetic(tmp_path, datetime(2026, 11, 26, 8, 0, tzinfo=TZ))
    for device in ("card_reader", "weighbridge", "io1"):
        syn.lane_event("B1-IN", "alarm.raised", alarm="device_fault", device=device, reason="silent")
        syn.later(minutes=1)
    alarms = syn.events("alarm.raised", "B1-IN")
    path = syn.site.journal.path
    syn.site.journal.close()

    # The record tables fall behind (as after a crash before their commit), and the
    # second alarm's row is damaged on disk.
    db = sqlite3.connect(path)
    db.execute("UPDATE events SET body = ? WHERE event_id = ?", (b"\xff{not json", alarms[1]["event_id"]))
    db.execute("DELETE FROM rec_alarms")
    db.execute("DELETE FROM rec_cursor")
    db.commit()
    db.close()
    capsys.readouterr()

    again = build_synthetic(tmp_path, datetime(2026, 11, 26, 9, 0, tzinfo=TZ))  # Records(site) catches up
    try:
        got = again.records.store.alarms(limit=10)
        assert sorted(a["event_id"] for a in got) == sorted([alarms[0]["event_id"], alarms[2]["event_id"]])
        out = capsys.readouterr()
        reports = [line for line in (out.out + out.err).splitlines() if "damaged event in the journal" in line]
        assert len(reports) == 1
        assert f"seq={alarms[1]['seq']}" in reports[0] and "lane=B1-IN" in reports[0] and path in reports[0]
        again.records.store.catch_up("B1-IN")  # met again: not reported again
        out = capsys.readouterr()
        assert "damaged event in the journal" not in out.out + out.err
    finally:
        again.site.journal.close()
