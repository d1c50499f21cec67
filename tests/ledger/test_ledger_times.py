"""The export's quick reading of time stamps (text of the site's own offset, remembered per
minute) gives what the general reading gives, for any stamp a journal may hold."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest

from gatectl.ledger import LedgerReader as _Reader, Period


def reader(tz: str, start: date, end: date) -> _Reader:
    config = SimpleNamespace(site=SimpleNamespace(tz=ZoneInfo(tz)), lanes=[], administrative_vehicles=[], staff=[])
    return _Reader(None, config, Period(start, end), None)  # type: ignore[arg-type]


def general(r: _Reader, ts: str) -> tuple[datetime | None, datetime | None]:
    """In-period and local reading without the quick path."""
    t = r.instant(ts)
    local = t.astimezone(r.tz).replace(tzinfo=None, microsecond=0)
    return (local if r.lo <= t < r.hi else None), local


def stamps(tz: str, around: datetime) -> list[str]:
    """Stamps every few minutes over a day around ``around``, in the site's offset, UTC,
    another offset and none, with and without microseconds."""
    zone, out = ZoneInfo(tz), []
    for k in range(-720, 720, 7):
        t = (around + timedelta(minutes=k, seconds=k % 60)).astimezone(zone)
        for u in (t, t.astimezone(timezone.utc), t.astimezone(timezone(timedelta(hours=-5)))):
            out += [u.isoformat(), u.replace(microsecond=0).isoformat(), u.replace(microsecond=250000).isoformat(),
                    u.isoformat(" ")]
        out.append(t.replace(tzinfo=None).isoformat())
    return out


@pytest.mark.parametrize(
    ("tz", "start", "end", "around"),
    [
        ("Asia/Shanghai", date(2026, 11, 13), date(2026, 11, 27), datetime(2026, 11, 13, tzinfo=ZoneInfo("Asia/Shanghai"))),
        ("Asia/Shanghai", date(2026, 11, 13), date(2026, 11, 27), datetime(2026, 11, 28, tzinfo=ZoneInfo("Asia/Shanghai"))),
        # the autumn change (02:00-03:00 twice) and the period starting the day after
        ("Europe/Berlin", date(2026, 10, 26), date(2026, 11, 1), datetime(2026, 10, 25, 2, 30, tzinfo=timezone.utc)),
        ("Europe/Berlin", date(2026, 3, 29), date(2026, 4, 2), datetime(2026, 3, 29, 1, 30, tzinfo=timezone.utc)),
    ],
)
def test_quick_reading_agrees_with_the_general_one(tz: str, start: date, end: date, around: datetime) -> None:
    r = reader(tz, start, end)
    for ts in stamps(tz, around):
        expect_in, expect_local = general(r, ts)
        assert r.in_period(ts) == expect_in, ts
        assert r.local(ts) == expect_local, ts
