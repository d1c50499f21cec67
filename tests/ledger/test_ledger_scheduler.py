"""R14 scheduled: the daemon writes each period's ledger by itself into ``ledger.dir``,
once per period and format, catches up periods missed while it was down, and announces
each file as a ``ledger.exported`` event on lane ``_site`` (published like every event:
the MQTT link sends it on)."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest

from gatectl.config import load_config
from gatectl import events as ev
from gatectl.ledger import LedgerScheduler, Period
from gatectl.service import Site

from .conftest import read_csv, read_xlsx
from .synthetic import TZ, build_journal, site_yaml

FIRST = date(2026, 11, 13)


class Clock:
    def __init__(self, t: datetime) -> None:
        self.t = t

    def __call__(self) -> datetime:
        return self.t


def make_site(tmp_path: Path, clock: Clock, ledger: str) -> Site:
    path = tmp_path / "site.yaml"
    path.write_text(site_yaml("gatectl.db", ledger), encoding="utf-8")
    return Site(load_config(path), now=clock)


@pytest.fixture
def journal_path(tmp_path: Path) -> Path:
    """Traffic from 2026-11-12 (the day before FIRST) to 2026-12-30, 10 passages a lane a day."""
    path = tmp_path / "gatectl.db"
    build_journal(path, FIRST, 48, 10)
    return path


def passages_between(path: Path, start: date, end: date) -> int:
    db = sqlite3.connect(path)
    try:  # every time stamp of the synthetic journal is +08:00, so text bounds are exact
        return db.execute("SELECT COUNT(*) FROM passages WHERE opened_at >= ? AND opened_at < ?",
                          (start.isoformat(), (end + timedelta(days=1)).isoformat())).fetchone()[0]
    finally:
        db.close()


LEDGER = "ledger:\n  dir: ledgers\n  formats: [xlsx, csv]\n  first_day: 2026-11-13\n"


async def test_each_period_written_once_announced_and_caught_up_after_downtime(tmp_path: Path,
                                                                                journal_path: Path) -> None:
    clock = Clock(datetime(2026, 11, 28, 0, 20, tzinfo=TZ))  # the first period ended 20 minutes ago
    site = make_site(tmp_path, clock, LEDGER)
    published: list[dict] = []
    site.subscribe(lambda evs: published.extend(ev.encode(s) for s in evs if s.type == "ledger.exported"))
    sched = LedgerScheduler(site)
    assert await sched.run_once() == []  # not settled yet: passages may still be closing
    clock.t = datetime(2026, 11, 28, 0, 31, tzinfo=TZ)
    written = await sched.run_once()
    assert [(e["period_from"], e["period_to"], e["format"]) for e in written] == [
        ("2026-11-13", "2026-11-27", "xlsx"), ("2026-11-13", "2026-11-27", "csv")]
    assert published == written and all(e["lane_id"] == "_site" for e in written)
    ledgers = tmp_path / "ledgers"
    xlsx = ledgers / "卡口登记台账_kmzb-jk_20261113-20261127.xlsx"
    assert written[0]["path"] == str(xlsx)
    expected = passages_between(journal_path, FIRST, date(2026, 11, 27))
    assert written[0]["rows"] == written[1]["rows"] == expected == 15 * 4 * 10
    assert len(read_xlsx(xlsx)["卡口登记台账"]) == expected
    assert len(read_csv(ledgers / "卡口登记台账_kmzb-jk_20261113-20261127.csv")) == expected
    assert (ledgers / "卡口登记台账_kmzb-jk_20261113-20261127-告警.csv").exists()
    assert written[1]["files"][0] == str(ledgers / "卡口登记台账_kmzb-jk_20261113-20261127.csv")
    assert await sched.run_once() == []  # never twice

    # Down from 2026-12-01 to 2026-12-30: a new daemon writes the two periods it missed.
    site.journal.close()
    clock.t = datetime(2026, 12, 30, 9, 0, tzinfo=TZ)
    site = make_site(tmp_path, clock, LEDGER)
    sched = LedgerScheduler(site)
    written = await sched.run_once()
    assert [(e["period_from"], e["period_to"]) for e in written[::2]] == [
        ("2026-11-28", "2026-12-12"), ("2026-12-13", "2026-12-27")]
    assert [e["rows"] for e in written[::2]] == [
        passages_between(journal_path, date(2026, 11, 28), date(2026, 12, 12)),
        passages_between(journal_path, date(2026, 12, 13), date(2026, 12, 27)),
    ]
    assert await sched.run_once() == []
    exported = [e for e in site.journal.events("_site") if e["type"] == "ledger.exported"]
    assert len(exported) == 6 == len({(e["period_from"], e["format"]) for e in exported})
    assert sched.next_due(clock.t) == datetime(2027, 1, 12, 0, 30, tzinfo=TZ)
    site.journal.close()


async def test_periods_start_at_the_journals_first_day_without_first_day(tmp_path: Path,
                                                                         journal_path: Path) -> None:
    clock = Clock(datetime(2026, 11, 27, 1, 0, tzinfo=TZ))
    site = make_site(tmp_path, clock, "ledger:\n  dir: out\n  every_days: 7\n")
    sched = LedgerScheduler(site)
    assert sched.anchor() == date(2026, 11, 12)  # the synthetic journal's first day
    assert sched.periods(clock.t) == [Period(date(2026, 11, 12), date(2026, 11, 18)),
                                      Period(date(2026, 11, 19), date(2026, 11, 25))]
    written = await sched.run_once()
    assert [e["format"] for e in written] == ["xlsx", "xlsx"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "卡口登记台账_kmzb-jk_20261112-20261118.xlsx", "卡口登记台账_kmzb-jk_20261119-20261125.xlsx"]
    site.journal.close()


async def test_a_ledger_that_cannot_be_written_is_retried_not_announced(tmp_path: Path, journal_path: Path) -> None:
    (tmp_path / "ledgers").write_text("a file where the directory should be", encoding="utf-8")
    clock = Clock(datetime(2026, 11, 28, 1, 0, tzinfo=TZ))
    site = make_site(tmp_path, clock, LEDGER)
    sched = LedgerScheduler(site)
    assert await sched.run_once() == []
    assert not [e for e in site.journal.events("_site") if e["type"] == "ledger.exported"]
    (tmp_path / "ledgers").unlink()
    assert len(await sched.run_once()) == 2
    site.journal.close()


async def test_run_writes_by_itself_and_never_returns(tmp_path: Path, journal_path: Path) -> None:
    """As a site task: it must not end (a finished task stops the site), with or without a
    ledger directory."""
    clock = Clock(datetime(2026, 11, 28, 1, 0, tzinfo=TZ))
    site = make_site(tmp_path, clock, LEDGER)
    published: list[dict] = []
    site.subscribe(lambda evs: published.extend(ev.encode(s) for s in evs if s.type == "ledger.exported"))
    task = asyncio.create_task(LedgerScheduler(site, poll_s=0.05).run())
    for _ in range(400):
        if len(published) == 2:
            break
        await asyncio.sleep(0.05)
    assert len(published) == 2
    clock.t = datetime(2026, 12, 13, 0, 45, tzinfo=TZ)  # the next period settles
    for _ in range(400):
        if len(published) == 4:
            break
        await asyncio.sleep(0.05)
    assert [e["period_from"] for e in published] == ["2026-11-13"] * 2 + ["2026-11-28"] * 2
    assert not task.done()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    site.journal.close()

    (tmp_path / "off").mkdir()
    off = make_site(tmp_path / "off", clock, "")
    idle = asyncio.create_task(LedgerScheduler(off, poll_s=0.01).run())
    await asyncio.sleep(0.2)
    assert not idle.done()
    idle.cancel()
    await asyncio.gather(idle, return_exceptions=True)
    assert not (tmp_path / "off" / "ledgers").exists()
    off.journal.close()
