"""R14 at volume: 15 days of a busy site (4 lanes), written straight into the journal,
exported to csv and xlsx; the row counts and passage ids match the journal, and memory
does not grow with the number of passages (rows are streamed, never held).

The default run uses 100 passages per lane per day (6,000 passages, a few seconds); the
full 2,000 per lane per day (120,000 passages) runs with ``--soak``. Durations are never
asserted: ``bench/ledger_export.py`` prints them beside a raw sqlite3-to-csv baseline.
"""

from __future__ import annotations

import csv
import sqlite3
import tracemalloc
from collections import Counter
from datetime import date, timedelta
from pathlib import Path

import pytest

from gatectl.config import SiteConfig, load_config
from gatectl.ledger import export

from .synthetic import build_journal, site_yaml

START = date(2026, 11, 13)
END = START + timedelta(days=14)


def journal_counts(path: Path) -> tuple[set[str], Counter, Counter]:
    """Passage ids, outcomes and record types of the period, straight from the journal
    (every synthetic time stamp is +08:00, the site's offset, so text bounds are exact)."""
    db = sqlite3.connect(path)
    try:
        lo, hi = START.isoformat(), (END + timedelta(days=1)).isoformat()
        ids, outcomes = set(), Counter()
        for pid, outcome in db.execute(
                "SELECT passage_id, outcome FROM passages WHERE opened_at >= ? AND opened_at < ?", (lo, hi)):
            ids.add(pid)
            outcomes[outcome] += 1
        types = Counter(dict(db.execute(
            "SELECT type, COUNT(*) FROM events WHERE ts >= ? AND ts < ? GROUP BY type", (lo, hi)).fetchall()))
        return ids, outcomes, types
    finally:
        db.close()


def csv_ids(path: Path) -> list[str]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = csv.reader(f)
        header = next(rows)
        i = header.index("通行编号")
        return [row[i] for row in rows]


def xlsx_ids(path: Path) -> dict[str, list[str]]:
    from openpyxl import load_workbook

    wb = load_workbook(path, read_only=True)
    try:
        out = {}
        for name in ("卡口登记台账", "不予放行", "手动抬杆", "紧急放行"):
            rows = wb[name].iter_rows(values_only=True)
            i = list(next(rows)).index("通行编号")
            out[name] = [row[i] for row in rows]
        return out
    finally:
        wb.close()


def site(tmp_path: Path, per_lane_day: int) -> tuple[SiteConfig, Path]:
    journal = tmp_path / "gatectl.db"
    build_journal(journal, START, 15, per_lane_day)
    (tmp_path / "site.yaml").write_text(site_yaml("gatectl.db"), encoding="utf-8")
    return load_config(tmp_path / "site.yaml"), journal


def check_busy_site(tmp_path: Path, per_lane_day: int) -> None:
    config, journal = site(tmp_path, per_lane_day)
    ids, outcomes, types = journal_counts(journal)
    assert len(ids) == 15 * 4 * per_lane_day

    result = export(journal, config, START, END, "csv", tmp_path / "l.csv")
    got = csv_ids(tmp_path / "l.csv")
    assert result.passages == len(got) == len(ids) and set(got) == ids  # none missing, none doubled
    assert result.rows["告警"] == types["alarm.raised"] and result.rows["交接班"] == types["shift.handover"]

    result = export(journal, config, START, END, "xlsx", tmp_path / "l.xlsx")
    sheets = xlsx_ids(tmp_path / "l.xlsx")
    assert result.passages == len(sheets["卡口登记台账"]) == len(ids) and set(sheets["卡口登记台账"]) == ids
    for name, outcome in [("不予放行", "held"), ("手动抬杆", "manual"), ("紧急放行", "emergency")]:
        assert result.rows[name] == len(sheets[name]) == outcomes[outcome] > 0
    assert result.rows["事件记录"] == types["incident.opened"] + types["incident.updated"] + types["incident.closed"]
    assert result.rows["设备台账"] == 15 * 4 * 3
    assert result.rows["故障处理单"] == types["ticket.opened"] + types["ticket.advanced"]


def test_busy_site_small(tmp_path: Path) -> None:
    check_busy_site(tmp_path, 100)


@pytest.mark.soak
def test_busy_site_15_days_120k_passages(tmp_path: Path) -> None:
    check_busy_site(tmp_path, 2000)


def test_memory_does_not_grow_with_the_period(tmp_path: Path) -> None:
    """Fifteen days take about what one day takes: rows are streamed, not held."""
    config, journal = site(tmp_path, 40)
    for fmt in ("csv", "xlsx"):
        export(journal, config, START, START, fmt, tmp_path / f"warm.{fmt}")  # imports, caches
        peaks = []
        for end in (START, END):
            tracemalloc.start()
            try:
                export(journal, config, START, end, fmt, tmp_path / f"m.{fmt}")
                peaks.append(tracemalloc.get_traced_memory()[1])
            finally:
                tracemalloc.stop()
        assert peaks[1] < 2 * peaks[0], (fmt, peaks)
