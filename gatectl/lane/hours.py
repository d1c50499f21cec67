"""When a lane releases automatically (R2): its open hours by weekday and on holidays.

Customs-managed lanes open "according to customs' requirements"; the site writes that down
as windows per day of the week, with their own windows on holidays (``calendar.holidays``).
A window ``HH:MM-HH:MM`` opens at its start and closes at its end; one whose end is before
its start runs over midnight and belongs to the day it starts on. Customs may also open or
close a lane at once over its hours (``HoursOrdered``); that is the core's, not this
module's. Pure: no clock, times in, answers out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo

Window = tuple[int, int]  # minutes from midnight: start included, end excluded
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True, slots=True)
class Schedule:
    """Open hours: windows for each weekday (Monday first) and, if given, for holidays."""

    days: tuple[tuple[Window, ...], ...]
    tz: tzinfo
    holiday: tuple[Window, ...] | None = None
    holidays: frozenset[date] = frozenset()

    def __post_init__(self) -> None:
        if len(self.days) != 7:
            raise ValueError("a schedule has windows for each of the 7 days")

    @classmethod
    def daily(cls, windows: Iterable[Window], tz: tzinfo, holidays: Iterable[date] = (),
              holiday: Iterable[Window] | None = None) -> Schedule:
        day = tuple(windows)
        return cls((day,) * 7, tz, None if holiday is None else tuple(holiday), frozenset(holidays))

    def windows(self, day: date) -> tuple[Window, ...]:
        if day in self.holidays and self.holiday is not None:
            return self.holiday
        return self.days[day.weekday()]

    def _spans(self, day: date) -> Iterable[tuple[datetime, datetime]]:
        for start, end in self.windows(day):
            opens = self._at(day, start)
            closes = self._at(day if end > start else day + timedelta(days=1), end % 1440 if end > start else end)
            yield opens, closes

    def _at(self, day: date, minute: int) -> datetime:
        if minute >= 1440:  # "24:00"
            day, minute = day + timedelta(days=1), minute - 1440
        return datetime.combine(day, time(minute // 60, minute % 60), tzinfo=self.tz)

    def is_open(self, now: datetime) -> bool:
        local = now.astimezone(self.tz)
        today = local.date()
        for day in (today - timedelta(days=1), today):
            for opens, closes in self._spans(day):
                if opens <= local < closes:
                    return True
        return False

    def next_change(self, now: datetime) -> datetime | None:
        """The next time the lane opens or closes after ``now`` (None: never, within a week)."""
        local = now.astimezone(self.tz)
        today = local.date()
        times = [t for d in range(-1, 8) for span in self._spans(today + timedelta(days=d)) for t in span if t > local]
        return min(times) if times else None


__all__ = ["Schedule", "Window", "DAYS"]
