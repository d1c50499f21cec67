"""R14: the checkpoint ledger (卡口登记台账), exported for park management and customs.

Every passage of a period, and the anomalies around them, read from the journal:

- ``export(journal, config, start, end, fmt, out)`` writes one period (site-local days,
  ``start`` and ``end`` inclusive) as ``xlsx`` (one workbook, one sheet per part) or ``csv``
  (one file per part, see below). It streams: one SQL cursor per part, ordered by time on
  the journal's indexes (``passages_opened``, ``events_type``), each row written as it is
  read, all parts inside one read transaction so they agree with each other.
- ``gatectl ledger export --config F [--from D] [--to D] [--format csv|xlsx] --out PATH``
  (CONTRACT 7). Without dates: the 15 days ending today (today included, so what just
  happened is in it); ``--from`` alone: 15 days from it; ``--to`` alone: 15 days ending on
  it. ``--format`` defaults to the suffix of ``--out``. Exit 0 ok, 1 runtime failure (no
  journal, cannot write), 2 bad usage or bad config.
- ``LedgerScheduler(site).run()`` writes each complete period into ``ledger.dir`` by
  itself and journals ``ledger.exported`` on lane ``_site`` (published like every event).

The parts (Chinese names are the sheet names and the CSV file suffixes):

=============  ==========================================================  =====  ====
part           rows                                                         xlsx   csv
=============  ==========================================================  =====  ====
卡口登记台账    every passage opened in the period                           yes    ``out``
不予放行        the passages closed ``held``                                 yes    (filter)
手动抬杆        the passages lifted under an approval (``manual``)           yes    (filter)
紧急放行        the emergency releases (``emergency``)                       yes    (filter)
告警            ``alarm.raised``, with its acknowledgement                   yes    yes
事件记录        ``incident.opened/updated/closed``                           yes    yes
审批            approvals accepted, refused, expired; refused manual lifts   yes    yes
开放时间指令    customs' orders over the open hours (``hours.ordered``)      yes    yes
交接班          ``shift.handover``                                           yes    yes
值班记录        ``shift.check`` and ``video.note``                          yes    yes
设备台账        ``equipment.daily`` (by its ``date``)                        yes    no
故障处理单      ``ticket.opened/advanced``                                   yes    no
演练            emergency drills: started, ended, and what happened during   yes    yes
说明            site, period, time zone, row counts                          yes    no
=============  ==========================================================  =====  ====

CSV layout: ``out`` is the passages file; every other CSV part goes beside it as
``{out.stem}-{part}.csv`` (``台账.csv``, ``台账-告警.csv``, …), header-only when the part is
empty, so the set of files is always the same. If ``out`` is an existing directory, the
files are named by period inside it (``卡口登记台账_{site}_{YYYYMMDD}-{YYYYMMDD}.csv``). CSV is
UTF-8 with a BOM (Excel opens the Chinese correctly); free text that a spreadsheet would
take for a formula (``= + - @``) is prefixed with ``'``. Holds, manual and emergency lifts
are rows of the passages file with their own ``通行结果``/``结果代码``, to filter on.

The passage's columns: ``车牌`` is the plate read for the passage (the plate camera's read;
for an emergency release without a read, the plate of the guard's account of the vehicle).
A list's plate is not a read: an administrative vehicle matched by its card alone has no
plate in the ledger. ``通道类型`` is the kind the passage went under: on a shared lane
(保税/非保税共用) each passage's own kind, the lane's only while none was decided.

Drills: a passage opened during an emergency drill, and the alarms, lifts, approvals and
refused manual lifts journaled during one (``"drill": true``), are kept out of every other
part and listed on 演练, each with the start of the drill it belongs to, between the
``drill.started`` and ``drill.ended`` rows (who, note, when) of its lane.

Every value meant for people is Chinese, with the raw code in the next column (``通行结果``
/ ``结果代码``, ``授权类型`` / ``授权类型代码``, …). Times are site-local (``site.timezone``)
wall-clock times without offset, to the second; a passage belongs to the site-local day it
opened on. In xlsx they are real date-time cells.

Rows come in the order of the journal's time stamps as stored (the daemon stamps site
time, so that is time order; a journal mixing UTC offsets still gets every row of the
period once, bounds checked per row, only its order follows the text). Memory stays flat
whatever the period holds: besides the row being written, an export keeps only the
emergency accounts and alarm acknowledgements it joins to their rows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import heapq
import json
import os
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from gatectl import events as ev
from gatectl import labels
from gatectl.config import ConfigError, format_problems, load_config
from gatectl.labels import ALARMS as ALARM_ZH
from gatectl.labels import CATEGORIES, INCIDENT_KINDS, PARTIES
from gatectl.labels import HEALTH as HEALTH_ZH
from gatectl.labels import KINDS as KINDS_ZH
from gatectl.labels import TICKET_STATES as TICKET_STATE_ZH
from gatectl.worker import STOP, worker

if TYPE_CHECKING:
    from gatectl.config import SiteConfig
    from gatectl.service import Site

log = structlog.get_logger("gatectl.ledger")

FORMATS = ("csv", "xlsx")
DEFAULT_DAYS = 15
TITLE = "卡口登记台账"
#: The scheduler writes a period this long after its last day ended, so passages still
#: open at midnight (a held vehicle backing out) have closed.
SETTLE = timedelta(minutes=30)
#: Rows per xlsx sheet (Excel's limit, header included); more continue in "name(2)".
XLSX_MAX_ROWS = 1_048_576
#: How often a running export looks at its stop flag.
STOP_CHECK_ROWS = 2048
#: Minutes of time stamps whose site-local reading is remembered (see ``LedgerReader._minute``);
#: rows come in time order, so a small window holds almost every hit.
MINUTE_CACHE = 4096

# --------------------------------------------------------------------------------------
# Words for people (raw codes stay in their own columns; unknown codes show as they are):
# gatectl.labels, the one table of them.

DIRECTION_ZH = labels.DIRECTIONS
OUTCOME_ZH = labels.OUTCOMES
OPEN_PASSAGE_ZH = labels.OPEN_PASSAGE
DECISION_ZH = labels.DECISIONS
AUTH_ZH = labels.AUTH_KINDS
APPROVAL_REASON_ZH = {**labels.APPROVAL_REASONS, **labels.REFUSALS}
APPROVAL_EVENT_ZH = labels.APPROVAL_EVENTS
TRIGGER_ZH = labels.TRIGGERS
INCIDENT_ACTION_ZH = labels.INCIDENT_ACTIONS
DEVICE_ZH = labels.DEVICES
DUTY_ZH = labels.DUTY
TICKET_SOURCE_ZH = labels.TICKET_SOURCES
FIELD_ZH = labels.FIELDS
SITE_WIDE_ZH = labels.SITE_WIDE
HOURS_ORDER_ZH = {"open": "开放通道", "close": "关闭通道", "clear": "恢复按开放时间"}
DRILL_RECORD_ZH = {"drill.started": "演练开始", "drill.ended": "演练结束", "passage": "演练通行",
                   "alarm.raised": "演练告警", "barrier.lifted": "演练抬杆"}
LIFT_REASON_ZH = {"lift": "放行抬杆", "safety_reverse": "安全回抬"}
zh = labels.zh
reason_zh = labels.reason


# --------------------------------------------------------------------------------------
# Periods


@dataclass(frozen=True, slots=True)
class Period:
    """Site-local days ``start``..``end``, both included."""

    start: date
    end: date

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise ValueError(f"the period ends ({self.end}) before it starts ({self.start})")

    @classmethod
    def ending(cls, end: date, days: int = DEFAULT_DAYS) -> Period:
        return cls(end - timedelta(days=days - 1), end)

    @classmethod
    def starting(cls, start: date, days: int = DEFAULT_DAYS) -> Period:
        return cls(start, start + timedelta(days=days - 1))

    def filename(self, site_id: str, fmt: str) -> str:
        return f"{TITLE}_{site_id}_{self.start:%Y%m%d}-{self.end:%Y%m%d}.{fmt}"

    def __str__(self) -> str:
        return f"{self.start.isoformat()}..{self.end.isoformat()}"


class LedgerError(Exception):
    """The ledger could not be written (no journal, an unwritable file, …)."""


class LedgerCancelled(LedgerError):
    """The export was asked to stop; nothing was left behind."""


@dataclass
class LedgerExport:
    """What one export wrote: the main file, every file, rows per part."""

    period: Period
    format: str
    path: Path
    files: list[Path]
    rows: dict[str, int]

    @property
    def passages(self) -> int:
        return self.rows[PASSAGES]


# --------------------------------------------------------------------------------------
# Columns and parts


@dataclass(frozen=True, slots=True)
class Column:
    header: str
    width: float = 12


@dataclass(frozen=True, slots=True)
class Part:
    name: str
    columns: tuple[Column, ...]
    csv: bool
    outcome: str | None = None  # a view of the passages: those closed with this outcome
    freeze: str = "B2"  # the header row and the time column stay in view


PASSAGES = TITLE
HOURS = "开放时间指令"
DRILLS = "演练"
PASSAGE_COLUMNS = (
    Column("时间", 20),
    Column("离开时间", 20),
    Column("通道", 10),
    Column("通道名称", 18),
    Column("通道类型", 9),
    Column("方向", 6),
    Column("IC卡号", 14),
    Column("车牌", 12),
    Column("毛重(kg)", 10),
    Column("海关指令", 10),
    Column("指令代码", 9),
    Column("放行指令号", 24),
    Column("核放单号", 22),
    Column("海关提示", 18),
    Column("通行结果", 10),
    Column("结果代码", 11),
    Column("授权类型", 14),
    Column("授权类型代码", 18),
    Column("授权编号", 24),
    Column("原因", 20),
    Column("原因代码", 18),
    Column("备注", 40),
    Column("通行编号", 36),
)
PARTS: tuple[Part, ...] = (
    Part(PASSAGES, PASSAGE_COLUMNS, csv=True),
    Part("不予放行", PASSAGE_COLUMNS, csv=False, outcome="held"),
    Part("手动抬杆", PASSAGE_COLUMNS, csv=False, outcome="manual"),
    Part("紧急放行", PASSAGE_COLUMNS, csv=False, outcome="emergency"),
    Part("告警", (
        Column("时间", 20), Column("通道", 10), Column("通道名称", 18), Column("告警", 14), Column("告警代码", 20),
        Column("通行编号", 36), Column("详情", 40), Column("确认时间", 20), Column("确认人", 10),
        Column("确认备注", 30), Column("事件编号", 36),
    ), csv=True),
    Part("事件记录", (
        Column("时间", 20), Column("通道", 10), Column("通道名称", 18), Column("事件编号", 36), Column("动作", 8),
        Column("动作代码", 16), Column("类型", 12), Column("类型代码", 16), Column("内容", 40), Column("处理人", 10),
    ), csv=True),
    Part("审批", (
        Column("时间", 20), Column("通道", 10), Column("通道名称", 18), Column("事项", 14), Column("事项代码", 20),
        Column("审批编号", 24), Column("触发方式", 14), Column("原因", 18), Column("原因代码", 22),
        Column("详情", 50),
    ), csv=True),
    Part(HOURS, (
        Column("时间", 20), Column("通道", 10), Column("通道名称", 18), Column("指令", 14), Column("指令代码", 10),
        Column("截止时间", 20), Column("原因", 30), Column("来源", 12), Column("下达人", 12), Column("事件编号", 36),
    ), csv=True),
    Part("交接班", (
        Column("时间", 20), Column("交班人", 10), Column("接班人", 10), Column("值班记录", 50),
        Column("移交未结告警", 30), Column("移交未结事件", 30), Column("移交未结故障单", 30),
    ), csv=True),
    Part("值班记录", (
        Column("时间", 20), Column("通道", 10), Column("通道名称", 18), Column("记录", 14), Column("记录代码", 12),
        Column("值班人", 10), Column("设备情况", 40), Column("内容", 50),
    ), csv=True),
    Part("设备台账", (
        Column("日期", 12), Column("通道", 10), Column("通道名称", 18), Column("设备", 12), Column("设备代码", 14),
        Column("可用率(%)", 10), Column("故障次数", 8), Column("故障时长(秒)", 12), Column("丢帧数", 8),
        Column("当日班次检查(次)", 16), Column("记录时间", 20),
    ), csv=False, freeze="A2"),
    Part("故障处理单", (
        Column("时间", 20), Column("故障单号", 36), Column("通道", 10), Column("设备", 12), Column("动作", 8),
        Column("状态", 16), Column("状态代码", 12), Column("处理人", 10), Column("内容", 50), Column("来源", 10),
    ), csv=False),
    Part(DRILLS, (
        Column("时间", 20), Column("通道", 10), Column("通道名称", 18), Column("演练开始", 20), Column("记录", 12),
        Column("记录代码", 16), Column("人员", 12), Column("内容", 60), Column("通行编号", 36), Column("事件编号", 36),
    ), csv=True),
)
NOTES = "说明"
_PART = {p.name: p for p in PARTS}
_VIEWS = {p.outcome: p.name for p in PARTS if p.outcome is not None}

#: Keys every event has; what is left of an event is its own content.
_ENVELOPE = frozenset({"event_id", "seq", "site_id", "lane_id", "type", "ts"})
#: Not shown as content: the envelope, and the drill mark (the part a row is on says it).
_NOT_CONTENT = _ENVELOPE | {"drill"}


def render(value: Any) -> str | None:
    """Structured values of records (lists of open alarms, device checks) as one line."""
    if value is None or value == "" or value == [] or value == {}:
        return None
    if isinstance(value, bool):
        return "是" if value else "否"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return _number_text(value)
    if isinstance(value, dict):
        return "；".join(f"{k}: {_compact(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "、".join(_compact(v) for v in value)
    return str(value)


def _compact(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if value is None:
        return ""
    return render(value) or ""


def _number_text(value: float | int) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# --------------------------------------------------------------------------------------
# Reading the journal


@dataclass(frozen=True, slots=True)
class _Lane:
    name: str | None = None
    kind: str | None = None
    direction: str | None = None


class _Memo(dict):
    """``f(code)`` for each code met, computed once: the per-row word look-ups."""

    def __init__(self, f: Callable[[Any], Any]) -> None:
        super().__init__()
        self.f = f

    def __missing__(self, key: Any) -> Any:
        value = self[key] = self.f(key)
        return value


_fromiso = datetime.fromisoformat


class LedgerReader:
    """One period of one journal (or a copy shaped like one), read in one transaction;
    site-local times. ``passages()`` and each of ``RECORD_PARTS`` give a part's rows."""

    def __init__(self, db: sqlite3.Connection, config: SiteConfig, period: Period,
                 stop: threading.Event | None) -> None:
        self.db = db
        self.tz: tzinfo = config.site.tz
        self.period = period
        self.stop = stop
        self.lanes: dict[str, _Lane] = {
            lane.id: _Lane(lane.name, KINDS_ZH.get(lane.kind, lane.kind), DIRECTION_ZH[lane.direction])
            for lane in config.lanes
        }
        self.lanes["_site"] = _Lane(SITE_WIDE_ZH)
        self.staff = {m.card: m.name for m in config.staff}
        self._passage_columns: frozenset[str] | None = None
        # Exact bounds as instants; the SQL bounds are a day wider on each side, so a time
        # stamp written with any UTC offset is found, then filtered exactly here.
        self.lo = datetime.combine(period.start, time(0), self.tz)
        self.hi = datetime.combine(period.end + timedelta(days=1), time(0), self.tz)
        self.sql_lo = (period.start - timedelta(days=1)).isoformat()
        self.sql_hi = (period.end + timedelta(days=2)).isoformat()
        self._emergency: dict[str, dict] | None = None
        self._acks: dict[str, tuple[str, dict]] | None = None
        self._opened: dict[str, dict[Any, dict]] = {}
        self._rows = 0
        self._minutes: dict[str, int] = {}

    # ---------------------------------------------------------------- time stamps
    #
    # The hot path of an export is reading time stamps. The daemon writes them in site
    # time with their offset ("2026-11-13T09:00:00.123456+08:00"): for those, once it is
    # known that the offset is the site's own in that minute, the site-local wall clock is
    # the text itself (to the second), and whether the minute is in the period is known
    # for all its seconds (the period's bounds are local midnights). Anything else (no
    # offset, another offset, another shape) takes the general way.

    def _minute(self, ts: str) -> int:
        """1 or 0: ``ts`` has the journal's shape and the site's offset, and its minute
        is in the period or not; -1: read it the general way. Remembered per minute."""
        n = len(ts)
        if not ((n == 32 and ts[19] == ".") or (n == 25 and ts[19] in "+-")):
            return -1
        key = ts[:16] + ts[-6:]
        known = self._minutes.get(key)
        if known is None:
            try:
                t = self.instant(ts)
                same = t.tzinfo is not None and t.astimezone(self.tz).replace(
                    tzinfo=None, microsecond=0) == _fromiso(ts[:19])
            except ValueError:
                same = False
            known = (1 if self.lo <= t < self.hi else 0) if same else -1
            if len(self._minutes) >= MINUTE_CACHE:
                self._minutes.clear()
            self._minutes[key] = known
        return known

    # ---------------------------------------------------------------- helpers

    @property
    def passage_columns(self) -> frozenset[str]:
        """A journal from before schema 3 has no plate, kind or drill mark per passage."""
        if self._passage_columns is None:
            self._passage_columns = frozenset(r[1] for r in self.db.execute("PRAGMA table_info(passages)"))
        return self._passage_columns

    def instant(self, ts: str) -> datetime:
        t = datetime.fromisoformat(ts)
        return t if t.tzinfo is not None else t.replace(tzinfo=self.tz)

    def local(self, ts: str | None) -> datetime | None:
        """``ts`` as site-local wall-clock time (naive, whole seconds)."""
        if ts is None:
            return None
        if self._minute(ts) >= 0:
            return _fromiso(ts[:19])
        return self.instant(ts).astimezone(self.tz).replace(tzinfo=None, microsecond=0)

    def time_text(self, value: Any) -> str | None:
        """A time stamp inside an event's content, as site-local text."""
        if not isinstance(value, str):
            return render(value)
        try:
            local = self.local(value)
        except ValueError:
            return value
        return None if local is None else local.strftime("%Y-%m-%d %H:%M:%S")

    def fields(self, content: Any, *skip: str) -> str | None:
        """A record's content for people: "经过：…；车牌：…", codes in Chinese."""
        if not isinstance(content, dict):
            return render(content)
        parts = []
        for key, value in content.items():
            if key in _NOT_CONTENT or key in skip or value in (None, "", [], {}):
                continue
            if key in ("parties", "notified"):
                value = [PARTIES.get(v, v) for v in value] if isinstance(value, list) else PARTIES.get(value, value)
            elif key == "category":
                value = zh(CATEGORIES, value)
            elif key == "at":
                value = self.time_text(value)
            parts.append(f"{FIELD_ZH.get(key, key)}：{render(value)}")
        return "；".join(parts) or None

    def in_period(self, ts: str) -> datetime | None:
        """Site-local time of ``ts`` if it falls in the period, else None."""
        fast = self._minute(ts)
        if fast >= 0:
            return _fromiso(ts[:19]) if fast else None
        t = self.instant(ts)
        if not self.lo <= t < self.hi:
            return None
        return t.astimezone(self.tz).replace(tzinfo=None, microsecond=0)

    def lane(self, lane_id: str | None) -> _Lane:
        return self.lanes.get(lane_id or "", _Lane())

    def tick(self) -> None:
        self._rows += 1
        if self.stop is not None and self._rows % STOP_CHECK_ROWS == 0 and self.stop.is_set():
            raise LedgerCancelled("ledger export stopped")

    def _lane_columns(self, lane_id: str | None, lane_kind: str | None = None) -> tuple:
        """Lane, its name, the passage's kind (the lane's unless the passage has its own,
        on a shared lane), direction."""
        lane = self.lane(lane_id)
        kind = lane.kind if lane_kind is None else zh(KINDS_ZH, lane_kind)
        return lane_id, lane.name, kind, lane.direction

    def events(self, *types: str, since: str | None = None, until: str | None = None,
               drill: bool = False) -> Iterator[tuple[str, dict]]:
        """Events of ``types`` by time (one index range per type, merged), as (ts, body);
        ``drill``: only those journaled during a drill (picked in SQL: they are few)."""
        lo = self.sql_lo if since is None else since
        hi = self.sql_hi if until is None else until
        only = " AND json_extract(body, '$.drill') = 1" if drill else ""

        def one(type_: str) -> Iterator[tuple[str, str]]:
            yield from self.db.execute(
                f"SELECT ts, body FROM events WHERE type = ? AND ts >= ? AND ts < ?{only} ORDER BY ts", (type_, lo, hi)
            )

        for ts, body in heapq.merge(*(one(t) for t in types), key=lambda r: r[0]):
            yield ts, json.loads(body)

    def period_events(self, *types: str, drill: bool = False) -> Iterator[tuple[datetime, dict]]:
        for ts, body in self.events(*types, drill=drill):
            t = self.in_period(ts)
            if t is not None:
                self.tick()
                yield t, body

    def opened(self, type_: str, key: str, ident: Any) -> dict:
        """What the ``type_`` event naming ``ident`` said (the ``ticket.opened`` of a ticket
        advanced now): remembered from this period's rows, or looked up once."""
        known = self._opened.setdefault(type_, {})
        if ident not in known:
            row = None
            if ident is not None:
                row = self.db.execute(
                    "SELECT body FROM events WHERE type = ? AND json_extract(body, ?) = ? ORDER BY ts LIMIT 1",
                    (type_, f"$.{key}", ident),
                ).fetchone()
            known[ident] = json.loads(row[0]) if row else {}
        return known[ident]

    def remember(self, body: dict, key: str, *fields: str) -> None:
        self._opened.setdefault(body["type"], {})[body.get(key)] = {f: body.get(f) for f in fields}

    def emergency_account(self, passage_id: str) -> dict | None:
        """The guard's account of an emergency release; given after it, maybe after the period."""
        if self._emergency is None:
            self._emergency = {}
            for _, body in self.events("emergency.account", until="\uffff"):
                # The latest account counts; only what the ledger shows is kept.
                shown = ("vehicle_type", "plate", "note", "by")
                self._emergency[body.get("passage_id")] = {k: body.get(k) for k in shown}
        return self._emergency.get(passage_id)

    def approval(self, approval_id: str) -> dict | None:
        """The approval document (a primary-key look-up per manual lift; not kept)."""
        try:
            row = self.db.execute("SELECT document FROM approvals WHERE approval_id = ?", (approval_id,)).fetchone()
        except sqlite3.OperationalError:  # a journal from before approvals
            return None
        return json.loads(row[0]) if row else None

    # ------------------------------------------------------------------ parts

    def passages(self, text: bool = False, drill: bool = False) -> Iterator[tuple[str | None, tuple]]:
        """Every passage opened in the period, by time, with its outcome code: the real
        ones, or (``drill``) those opened during a drill.

        ``text``: the row as CSV writes it (each value as ``_csv_value`` makes it), built
        here where each column's kind is known instead of value by value afterwards."""
        have = self.passage_columns
        if "drill" in have:
            only = " AND drill = 1" if drill else " AND drill = 0"
        elif drill:
            return  # a journal from before drills has none
        else:
            only = ""
        plate_col = "plate" if "plate" in have else "NULL"
        kind_col = "lane_kind" if "lane_kind" in have else "NULL"
        cur = self.db.execute(
            "SELECT passage_id, lane_id, opened_at, closed_at, card, gross_weight_kg, decision, instruction_id,"
            f" form_id, hint, auth_kind, auth_id, outcome, reason, {plate_col}, {kind_col} FROM passages"
            f" WHERE opened_at >= ? AND opened_at < ?{only} ORDER BY opened_at",
            (self.sql_lo, self.sql_hi),
        )
        # The per-row work is look-ups made once per code (120 k rows a period is usual).
        # Each code memo gives (the word, the code), as CSV text with ``text``.
        ready: Callable[[tuple], tuple] = (lambda values: tuple(_csv_row(values))) if text else (lambda values: values)
        lanes = _Memo(lambda key: ready(self._lane_columns(*key)))
        decision_zh = _Memo(lambda code: ready((zh(DECISION_ZH, code), code)))
        outcome_zh = _Memo(lambda code: ready((OPEN_PASSAGE_ZH if code is None else zh(OUTCOME_ZH, code), code)))
        auth_zh = _Memo(lambda code: ready((zh(AUTH_ZH, code), code)))
        why_zh = _Memo(lambda code: ready((reason_zh(code), code)))
        cv = _csv_value
        staff = self.staff
        minute, in_period, local = self._minute, self.in_period, self.local
        stop, check = self.stop, STOP_CHECK_ROWS
        for (pid, lane_id, opened_at, closed_at, card, kg, decision, instruction, form, hint, auth_kind, auth_id,
             outcome, reason, plate, lane_kind) in cur:
            # in_period and local, inlined for the journal's own time stamps
            fast = minute(opened_at)
            if fast == 1:
                t = opened_at[:10] + " " + opened_at[11:19] if text else _fromiso(opened_at[:19])
            elif fast == 0:
                continue
            else:
                t = in_period(opened_at)
                if t is None:
                    continue
                if text:
                    t = t.isoformat(" ")
            if closed_at is None:
                closed = None
            elif minute(closed_at) >= 0:
                closed = closed_at[:10] + " " + closed_at[11:19] if text else _fromiso(closed_at[:19])
            else:
                closed = local(closed_at)
                if text:
                    closed = closed.isoformat(" ")  # type: ignore[union-attr]
            self._rows += 1
            if stop is not None and self._rows % check == 0 and stop.is_set():
                raise LedgerCancelled("ledger export stopped")
            if auth_kind in ("emergency", "approval") or (card and card in staff):
                plate, note = self._vehicle(pid, card, plate, auth_kind, auth_id)
            else:  # what _vehicle says of any other passage
                note = None
            if text:
                yield outcome, (
                    t, closed, *lanes[lane_id, lane_kind], cv(card), cv(plate), cv(kg),
                    *decision_zh[decision], cv(instruction), cv(form), cv(hint),
                    *outcome_zh[outcome], *auth_zh[auth_kind], cv(auth_id), *why_zh[reason], cv(note), cv(pid),
                )
            else:
                yield outcome, (
                    t, closed, *lanes[lane_id, lane_kind], card, plate, kg,
                    *decision_zh[decision], instruction, form, hint,
                    *outcome_zh[outcome], *auth_zh[auth_kind], auth_id, *why_zh[reason], note, pid,
                )

    def _vehicle(self, pid: str, card: str | None, plate: str | None, auth_kind: str | None,
                 auth_id: str | None) -> tuple[str | None, str | None]:
        """Plate and remarks. The plate is the one read for the passage; an emergency
        release without a read takes the plate of the guard's account (a person's read of
        that vehicle). An approval's plate is what it was issued for, not a read: a remark."""
        notes: list[str] = []
        if auth_kind == "emergency":
            acc = self.emergency_account(pid)
            if acc is None:
                notes.append("特种车辆信息未登记")
            else:
                plate = plate or acc.get("plate")
                notes.append(f"特种车辆：{acc.get('vehicle_type') or ''}")
                if acc.get("note"):
                    notes.append(str(acc["note"]))
                if acc.get("by"):
                    notes.append(f"登记人：{acc['by']}")
        elif auth_kind == "approval" and auth_id:
            approval_id = auth_id.rsplit("#", 1)[0]
            doc = self.approval(approval_id) or {}
            why = zh(APPROVAL_REASON_ZH, doc.get("reason"))
            detail = "：".join(x for x in (why, doc.get("detail")) if x)
            notes.append(f"审批 {approval_id}" + (f"（{detail}）" if detail else ""))
            if doc.get("plate"):
                notes.append(f"审批车牌：{doc['plate']}")
            for key, word in (("requested_by", "申请"), ("verified_by", "核实"), ("approved_by", "批准"),
                              ("countersigned_by", "会签")):
                who = doc.get(key)
                if isinstance(who, dict):
                    notes.append(f"{word}：{who.get('org') or ''} {who.get('name') or ''}".rstrip())
        elif card and card in self.staff:
            notes.append(f"人员：{self.staff[card]}")
        return plate, "；".join(notes) or None

    def acknowledgements(self) -> dict[str, tuple[str, dict]]:
        """The first acknowledgement of each alarm (given after it, maybe after the period)."""
        if self._acks is None:
            self._acks = {}
            for ts, body in self.events("alarm.acknowledged", until="\uffff"):
                self._acks.setdefault(body.get("alarm_event_id"), (ts, {"by": body.get("by"), "note": body.get("note")}))
        return self._acks

    def alarms(self) -> Iterator[tuple]:
        acks = self.acknowledgements()
        for t, body in self.period_events("alarm.raised"):
            if body.get("drill"):
                continue  # on 演练
            lane = self.lane(body.get("lane_id"))
            ack_ts, ack = acks.get(body.get("event_id"), (None, {}))
            yield (
                t, body.get("lane_id"), lane.name, zh(ALARM_ZH, body.get("alarm")), body.get("alarm"),
                body.get("passage_id"), self.fields(body, "alarm", "passage_id"), self.local(ack_ts), ack.get("by"),
                ack.get("note") or None, body.get("event_id"),
            )

    def incidents(self) -> Iterator[tuple]:
        for t, body in self.period_events("incident.opened", "incident.updated", "incident.closed"):
            type_, ident = body["type"], body.get("incident_id")
            if type_ == "incident.opened":
                self.remember(body, "incident_id", "kind")
                opened, content, who = body, body.get("reason"), body.get("by")
            elif type_ == "incident.updated":
                opened = self.opened("incident.opened", "incident_id", ident)
                account = body.get("account")
                content = self.fields(account, "by")
                who = account.get("by") if isinstance(account, dict) else None
            else:
                opened = self.opened("incident.opened", "incident_id", ident)
                content, who = body.get("summary"), body.get("by")
            lane_id = body.get("lane_id")
            kind = opened.get("kind")
            yield (
                t, lane_id, self.lane(lane_id).name, ident, INCIDENT_ACTION_ZH.get(type_), type_,
                zh(INCIDENT_KINDS, kind), kind, render(content), render(who),
            )

    def approvals(self) -> Iterator[tuple]:
        for t, body in self.period_events(*APPROVAL_EVENT_ZH):
            if body.get("drill"):
                continue  # on 演练
            yield self._approval_row(t, body)

    def _approval_row(self, t: datetime, body: dict) -> tuple:
        type_ = body["type"]
        lane_id = body.get("lane_id")
        if lane_id == "_site" and body.get("lane"):
            lane_id = body["lane"]  # refused for a lane that is not configured
        reason = body.get("reason")
        if type_ == "approval.accepted":
            reason = None
            detail = "；".join(x for x in (
                f"有效期 {self.time_text(body.get('valid_from'))} 至 {self.time_text(body.get('valid_until'))}",
                f"可抬杆 {body.get('max_lifts')} 次",
                f"车牌 {body['plate']}" if body.get("plate") else None,
            ) if x)
        elif type_ == "approval.refused":
            detail = "；".join(x for x in (body.get("message"), f"来源 {body['source']}" if body.get("source")
                                           else None) if x) or None
        else:
            detail = self.fields(body, "approval_id", "reason", "passage_id")
        return (
            t, lane_id, self.lane(lane_id).name, APPROVAL_EVENT_ZH[type_], type_, body.get("approval_id"),
            zh(TRIGGER_ZH, body.get("trigger")), zh(APPROVAL_REASON_ZH, reason), reason, detail,
        )

    def hours(self) -> Iterator[tuple]:
        """Customs' orders over a lane's open hours (R2): open or close it now, or clear that."""
        for t, body in self.period_events("hours.ordered"):
            lane_id = body.get("lane_id")
            if body.get("clear"):
                code = "clear"
            else:
                code = "open" if body.get("open") else "close"
            yield (
                t, lane_id, self.lane(lane_id).name, HOURS_ORDER_ZH[code], code,
                None if body.get("clear") else self.time_text(body.get("until")) or "另行通知",
                render(body.get("reason")), render(body.get("source")), render(body.get("by")), body.get("event_id"),
            )

    def drills(self) -> Iterator[tuple]:
        """Each drill's start and end, and between them what happened during it: its
        passages, alarms, lifts and approvals, by time; each row with its drill's start."""
        current: dict[str, datetime | None] = {}  # lane -> start of the drill running there
        before = self.period.start.isoformat()
        for lane_id in self.lanes:
            row = self.db.execute(
                "SELECT ts, type FROM events WHERE type IN ('drill.started', 'drill.ended') AND lane_id = ?"
                " AND ts < ? ORDER BY ts DESC LIMIT 1", (lane_id, before)).fetchone()
            if row is not None and row[1] == "drill.started":
                current[lane_id] = self.local(row[0])  # a drill that began before the period
        events = self.period_events("drill.started", "drill.ended")
        during = self.period_events("alarm.raised", "barrier.lifted", *APPROVAL_EVENT_ZH, drill=True)
        passages = ((row[0], {"type": "passage", "row": row, "outcome": outcome})
                    for outcome, row in self.passages(drill=True))
        acks = self.acknowledgements()
        # At one second: a drill's start, then a passage, then what happened in it.
        for t, body in heapq.merge(events, passages, during, key=lambda r: r[0]):
            type_ = body["type"]
            if type_ == "passage":
                yield self._drill_passage(current, body["row"])
                continue
            lane_id = body.get("lane_id")
            if type_ == "drill.started":
                current[lane_id] = t
            started = current.get(lane_id)
            if type_ == "drill.ended":
                current[lane_id] = None
            person, pid = render(body.get("by")), body.get("passage_id")
            if type_ in ("drill.started", "drill.ended"):
                content = render(body.get("note"))
            elif type_ == "alarm.raised":
                ack_ts, ack = acks.get(body.get("event_id"), (None, {}))
                content = "；".join(x for x in (
                    zh(ALARM_ZH, body.get("alarm")), self.fields(body, "alarm", "passage_id"),
                    f"确认：{self.time_text(ack_ts)} {ack.get('by') or ''}".rstrip() if ack_ts else "未确认",
                    ack.get("note") or None) if x)
                person = render(ack.get("by"))
            elif type_ == "barrier.lifted":
                auth = body.get("authorisation") or {}
                content = "；".join(x for x in (
                    zh(AUTH_ZH, auth.get("kind")), auth.get("id"), zh(LIFT_REASON_ZH, body.get("reason"))) if x) or None
            else:
                row = self._approval_row(t, body)
                content = "；".join(str(x) for x in (row[5], row[6], row[7], row[9]) if x) or None
            yield (
                t, lane_id, self.lane(lane_id).name, started, DRILL_RECORD_ZH.get(type_) or APPROVAL_EVENT_ZH.get(type_),
                type_, person, content, pid, body.get("event_id"),
            )

    def _drill_passage(self, current: dict[str, datetime | None], row: tuple) -> tuple:
        """A drill passage's row on 演练, from its row of the passages sheet."""
        (t, closed, lane_id, name, kind, direction, card, plate, kg, decision, _decision_code, instruction, form,
         _hint, outcome_text, _outcome, auth_text, _auth, auth_id, why, _reason, note, pid) = row
        content = "；".join(x for x in (
            kind and f"{kind}{direction or ''}", card and f"IC卡 {card}", plate and f"车牌 {plate}",
            kg is not None and f"毛重 {_number_text(kg)} kg", decision and f"海关指令 {decision}",
            instruction and f"放行指令 {instruction}", form and f"核放单 {form}", outcome_text,
            auth_text and f"{auth_text} {auth_id or ''}".rstrip(), why, note,
            closed and f"离开 {closed.isoformat(' ')}" if isinstance(closed, datetime) else None,
        ) if x)
        return t, lane_id, name, current.get(lane_id), DRILL_RECORD_ZH["passage"], "passage", None, content, pid, None

    def handovers(self) -> Iterator[tuple]:
        def carried(items: Any) -> str | None:
            if isinstance(items, list):
                return f"{len(items)}项" + (f"：{render(items)}" if items else "")
            return render(items)

        for t, body in self.period_events("shift.handover"):
            yield (
                t, render(body.get("outgoing")), render(body.get("incoming")), render(body.get("notes")),
                carried(body.get("open_alarms")), carried(body.get("open_incidents")),
                carried(body.get("open_tickets")),
            )

    def duty(self) -> Iterator[tuple]:
        """Shift-start and shift-end checks and video-monitoring notes (R13)."""
        for t, body in self.period_events("shift.check", "video.note"):
            lane_id = body.get("lane_id")
            if body["type"] == "shift.check":
                code, content = body.get("phase"), body.get("remarks")
                devices = body.get("devices")
                if isinstance(devices, dict):
                    devices = {k: HEALTH_ZH.get(v, v) if isinstance(v, str) else v for k, v in devices.items()}
            else:
                code, content, devices = "video.note", body.get("note"), None
            yield (
                t, lane_id, self.lane(lane_id).name, zh(DUTY_ZH, code), code, render(body.get("guard")),
                render(devices), render(content),
            )

    def equipment(self) -> Iterator[tuple]:
        """Daily rows by the day they describe (journaled the day after, or later)."""
        first, last = self.period.start.isoformat(), self.period.end.isoformat()
        until = (self.period.end + timedelta(days=8)).isoformat()  # written the day after, or later
        for ts, body in self.events("equipment.daily", until=until):
            day = str(body.get("date") or "")[:10]
            if not first <= day <= last:
                continue
            self.tick()
            lane_id = body.get("lane_id")
            device = body.get("device")
            availability = _scalar(body.get("availability"))
            if isinstance(availability, (int, float)):
                availability = round(availability * 100, 4)  # a share of the day, shown in per cent
            yield (
                day, lane_id, self.lane(lane_id).name, zh(DEVICE_ZH, device), device, availability,
                _scalar(body.get("faults")), _scalar(body.get("faulty_s")), _scalar(body.get("frames_dropped")),
                _scalar(body.get("checks")), self.local(ts),
            )

    def tickets(self) -> Iterator[tuple]:
        """Fault tickets (故障处理单) step by step: reported, notified, diagnosing, fixed, closed."""
        for t, body in self.period_events("ticket.opened", "ticket.advanced"):
            ident = body.get("ticket_id")
            if body["type"] == "ticket.opened":
                self.remember(body, "ticket_id", "device", "lane_id")
                opened = body
                action, state, code = "开单", zh(TICKET_STATE_ZH, "reported"), "reported"
                content = "；".join(x for x in (render(body.get("reason")), self.fields(
                    {"passage_id": body.get("passage_id")})) if x) or None
                source = zh(TICKET_SOURCE_ZH, body.get("source"))
            else:
                opened = self.opened("ticket.opened", "ticket_id", ident)
                action, code, source = "流转", body.get("to"), None
                state = f"{zh(TICKET_STATE_ZH, body.get('from')) or ''}→{zh(TICKET_STATE_ZH, code) or ''}"
                content = self.fields(body, "ticket_id", "from", "to", "by")
            device = opened.get("device")
            yield (
                t, ident, opened.get("lane_id") or body.get("lane_id"), zh(DEVICE_ZH, device), action, state, code,
                render(body.get("by")), content, source,
            )


def _scalar(value: Any) -> Any:
    """Numbers stay numbers (sortable in xlsx); anything else becomes text."""
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return value
    return render(value)


#: The parts besides the passages and their views, by name: how a reader gives their rows.
RECORD_PARTS: dict[str, Callable[[LedgerReader], Iterable[tuple]]] = {
    "告警": LedgerReader.alarms,
    "事件记录": LedgerReader.incidents,
    "审批": LedgerReader.approvals,
    HOURS: LedgerReader.hours,
    "交接班": LedgerReader.handovers,
    "值班记录": LedgerReader.duty,
    "设备台账": LedgerReader.equipment,
    "故障处理单": LedgerReader.tickets,
    DRILLS: LedgerReader.drills,
}
#: Event types a reader reads (a copy of a journal for the ledger needs these, and the
#: ``passages`` table). ``barrier.lifted`` only during drills; ``alarm.acknowledged``,
#: ``emergency.account`` whenever given.
READ_TYPES = (
    "alarm.raised", "alarm.acknowledged", "incident.opened", "incident.updated", "incident.closed",
    *APPROVAL_EVENT_ZH, "hours.ordered", "shift.handover", "shift.check", "video.note", "equipment.daily",
    "ticket.opened", "ticket.advanced", "emergency.account", "drill.started", "drill.ended", "barrier.lifted",
)


@contextlib.contextmanager
def open_journal(source: Any) -> Iterator[sqlite3.Connection]:
    """A connection inside one read transaction: a ``Journal`` or a path gets a connection
    of its own (safe beside the daemon's writes, WAL); a connection is used as it is."""
    if isinstance(source, sqlite3.Connection):
        db, own = source, False
    else:
        path = Path(str(getattr(source, "path", source)))
        if not path.is_file():
            raise LedgerError(f"no journal at {path}")
        try:
            db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA busy_timeout=5000")
            db.execute("PRAGMA query_only=ON")
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open journal {path}: {exc}") from exc
        own = True
    began = not db.in_transaction
    try:
        if began:
            db.execute("BEGIN")
        yield db
    except sqlite3.Error as exc:
        raise LedgerError(f"journal unreadable: {exc}") from exc
    finally:
        if began and db.in_transaction:
            db.execute("ROLLBACK")
        if own:
            db.close()


# --------------------------------------------------------------------------------------
# Writers


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")


def _publish(tmp: Path, final: Path) -> None:
    """Whole files only: flushed to disk, then renamed over the final name."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)


_FORMULA_START = frozenset("=+-@\t\r")


def _csv_row(values: Iterable[Any]) -> list[Any]:
    """``_csv_value`` of each value, with text, None and times inline (no call per value)."""
    return [
        ("'" + v if v[:1] in _FORMULA_START else v) if (kind := type(v)) is str
        else v if v is None
        else v.isoformat(" ") if kind is datetime
        else _csv_value(v)
        for v in values
    ]


def _csv_value(value: Any) -> Any:
    """CSV text of a value (csv.writer itself writes None as empty): the hot path of csv."""
    kind = type(value)
    if kind is str:
        return "'" + value if value[:1] in _FORMULA_START else value  # a spreadsheet must not run it
    if kind is datetime:
        return value.isoformat(" ")  # whole seconds, site time: 2026-11-13 09:00:00
    if kind is float:
        return _number_text(value)
    return value


class _CsvOut:
    """One CSV file per part that has one; the passages file is ``out`` itself."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.files: dict[str, tuple[Path, Path, Any, Any]] = {}

    def path(self, part: Part) -> Path:
        if part.name == PASSAGES:
            return self.out
        return self.out.with_name(f"{self.out.stem}-{part.name}{self.out.suffix or '.csv'}")

    def open(self, part: Part, ready: bool = False) -> Callable[[tuple], None] | None:
        """The writer of ``part``'s rows (None: not a CSV part); ``ready``: rows whose
        values are CSV text already (``LedgerReader.passages(text=True)``)."""
        if not part.csv:
            return None
        final = self.path(part)
        tmp = _tmp(final)
        # UTF-8 with a BOM: the BOM written once by hand, as the "utf-8-sig" codec would,
        # whose encoder is Python code run on every write.
        f = open(tmp, "w", encoding="utf-8", newline="")
        f.write("\ufeff")
        writer = csv.writer(f)
        writer.writerow([c.header for c in part.columns])
        self.files[part.name] = (final, tmp, f, writer)
        row = writer.writerow
        return row if ready else lambda values: row(_csv_row(values))

    def close(self, summary: list[tuple[str, Any]]) -> list[Path]:
        for _, tmp, f, _ in self.files.values():
            f.close()
        for final, tmp, _, _ in self.files.values():
            _publish(tmp, final)
        return [final for final, *_ in self.files.values()]

    def abort(self) -> None:
        for _, tmp, f, _ in self.files.values():
            f.close()
            with contextlib.suppress(OSError):
                tmp.unlink()


class _XlsxSheet:
    """Rows of one part; past Excel's row limit they continue in "name(2)", …"""

    def __init__(self, out: _XlsxOut, part: Part) -> None:
        from openpyxl.utils import get_column_letter

        self.out = out
        self.part = part
        self.last_column = get_column_letter(len(part.columns))
        self.sheets = 0
        self.ws: Any = None
        self.n = 0
        self._next_sheet()

    def _next_sheet(self) -> None:
        self.finish()
        self.sheets += 1
        title = self.part.name if self.sheets == 1 else f"{self.part.name}({self.sheets})"
        self.ws = self.out.sheet(title, self.part.columns, self.part.freeze)
        self.n = 0

    def finish(self) -> None:
        """Filter buttons on the header, over every row written (set before the save)."""
        if self.ws is not None:
            self.ws.auto_filter.ref = f"A1:{self.last_column}{self.n + 1}"

    def __call__(self, values: tuple) -> None:
        from openpyxl.cell import WriteOnlyCell
        from openpyxl.utils.exceptions import IllegalCharacterError

        if self.n >= XLSX_MAX_ROWS - 1:
            self._next_sheet()
        row: list[Any] = list(values)
        for i, v in enumerate(row):
            if isinstance(v, str) and v.startswith("="):
                cell = WriteOnlyCell(self.ws, value=v)
                cell.data_type = "s"  # text, never a formula
                row[i] = cell
        try:
            self.ws.append(row)
        except IllegalCharacterError:
            from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

            self.ws.append([ILLEGAL_CHARACTERS_RE.sub("", v) if isinstance(v, str) else v for v in row])
        self.n += 1


class _XlsxOut:
    """One workbook in openpyxl's write-only mode: rows go to disk as they come."""

    def __init__(self, out: Path) -> None:
        try:
            from openpyxl import Workbook
        except ImportError as exc:  # pragma: no cover - openpyxl is a dependency
            raise LedgerError("xlsx needs openpyxl (pip install openpyxl)") from exc
        self.out = out
        self.wb = Workbook(write_only=True)
        self.tmp = _tmp(out)
        self.parts: list[_XlsxSheet] = []

    def sheet(self, title: str, columns: tuple[Column, ...], freeze: str | None) -> Any:
        """A new sheet with its column widths, frozen panes and a bold header row."""
        from openpyxl.cell import WriteOnlyCell
        from openpyxl.styles import Alignment, Font, PatternFill
        from openpyxl.utils import get_column_letter

        ws = self.wb.create_sheet(title)
        for i, col in enumerate(columns, 1):
            ws.column_dimensions[get_column_letter(i)].width = col.width
        if freeze:
            ws.freeze_panes = freeze
        bold, fill, center = Font(bold=True), PatternFill("solid", fgColor="DDEBF7"), Alignment(horizontal="center")
        header = []
        for col in columns:
            cell = WriteOnlyCell(ws, value=col.header)
            cell.font, cell.fill, cell.alignment = bold, fill, center
            header.append(cell)
        ws.append(header)
        return ws

    def open(self, part: Part, ready: bool = False) -> _XlsxSheet:
        assert not ready, "xlsx takes values, not CSV text"
        sheet = _XlsxSheet(self, part)
        self.parts.append(sheet)
        return sheet

    def close(self, summary: list[tuple[str, Any]]) -> list[Path]:
        for part in self.parts:
            part.finish()
        ws = self.sheet(NOTES, (Column("项目", 18), Column("内容", 60)), "A2")
        for key, value in summary:
            ws.append([key, value])
        self.wb.save(str(self.tmp))
        _publish(self.tmp, self.out)
        return [self.out]

    def abort(self) -> None:
        for ws in self.wb.worksheets:  # finish each streamed sheet and drop its temporary file
            with contextlib.suppress(Exception):
                ws.close()
                ws._writer.cleanup()
        with contextlib.suppress(OSError):
            self.tmp.unlink()


# --------------------------------------------------------------------------------------
# Export


def default_output(out: Path, config: SiteConfig, period: Period, fmt: str) -> Path:
    """``out`` itself, or the period's file name inside ``out`` if that is a directory."""
    return out / period.filename(config.site.id, fmt) if out.is_dir() else out


class LedgerWriter(Protocol):
    """Where a ledger's parts go (``open_writer``)."""

    def open(self, part: Part, ready: bool = False) -> Callable[[tuple], None] | None:
        """The writer of ``part``'s rows; None: the format has no such part (csv)."""

    def close(self, summary: list[tuple[str, Any]]) -> list[Path]:
        """Publish every file (with the notes ``summary``); the files written."""

    def abort(self) -> None:
        """Leave nothing behind."""


def open_writer(fmt: str, out: Path) -> LedgerWriter:
    """The writer of a ledger in ``fmt`` to ``out`` (csv: ``out`` is the passages file and
    the other CSV parts go beside it). Files appear at ``close`` or not at all (``abort``)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be csv or xlsx, not {fmt!r}")
    try:
        return _CsvOut(out) if fmt == "csv" else _XlsxOut(out)
    except OSError as exc:
        raise LedgerError(f"cannot write {out}: {exc}") from exc


def parts_with(column: Column, parts: tuple[Part, ...] = PARTS) -> tuple[Part, ...]:
    """``parts`` with ``column`` in front of every part's columns (the zone's site)."""
    return tuple(Part(p.name, (column, *p.columns), p.csv, p.outcome, freeze="C2" if p.freeze == "B2" else p.freeze)
                 for p in parts)


def write_parts(writer: LedgerWriter, sources: list[tuple[str | None, LedgerReader]],
                parts: tuple[Part, ...] = PARTS, *, text: bool = False,
                passages_only: bool = False) -> dict[str, int]:
    """Every part's rows from ``sources`` into ``writer``; rows per part.

    ``sources``: one ``(None, reader)`` (a lane PC's ledger: rows as they are), or
    ``(key, reader)`` per site, whose rows are merged by time, each with its key in front
    (``parts`` then say that column, see ``parts_with``). ``text``: one source's passage rows
    as CSV text (the CSV writer's fast path). ``passages_only``: the passages file alone."""
    by_name = {p.name: p for p in parts}
    keyed = sources[0][0] is not None
    if not keyed and len(sources) != 1:
        raise ValueError("rows of several sources need a key each")

    def rows_of(read: Callable[[LedgerReader], Iterable[Any]], key: Callable[[Any], Any]) -> Iterable[Any]:
        if not keyed:
            return read(sources[0][1])
        return _merged([(k, read(r)) for k, r in sources], key)

    counts: dict[str, int] = {PASSAGES: 0}
    main = writer.open(by_name[PASSAGES], ready=text)
    assert main is not None
    views = {p.outcome: (p.name, None if passages_only else writer.open(p, ready=text))
             for p in parts if p.outcome is not None}
    for name, _ in views.values():
        counts[name] = 0
    for item in rows_of(lambda r: r.passages(text), lambda x: x[1][0]):
        outcome, row = item[1] if keyed else item
        if keyed:
            row = (item[0], *row)
        main(row)
        counts[PASSAGES] += 1
        if outcome in views:
            name, view = views[outcome]
            counts[name] += 1
            if view is not None:
                view(row)
    if passages_only:
        return counts
    for name, read in RECORD_PARTS.items():
        append = writer.open(by_name[name])
        if append is None:
            continue  # not a part of the CSV layout
        counts[name] = 0
        for item in rows_of(read, lambda row: row[0]):
            append((item[0], *item[1]) if keyed else item)
            counts[name] += 1
    return counts


def _sortable(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat(" ")
    return "" if value is None else str(value)


def _merged(sources: list[tuple[str, Iterable[Any]]], key: Callable[[Any], Any]) -> Iterator[tuple[str, Any]]:
    """Rows of every source in time order (each source's rows come in time order), as
    (its key, row)."""
    def tagged(site: str, rows: Iterable[Any]) -> Iterator[tuple[str, Any]]:
        for row in rows:
            yield site, row

    return heapq.merge(*(tagged(s, rows) for s, rows in sources), key=lambda t: _sortable(key(t[1])))


def export(
    journal: Any,
    config: SiteConfig,
    start: date,
    end: date,
    fmt: str,
    out: str | os.PathLike[str],
    *,
    stop: threading.Event | None = None,
    generated_at: datetime | None = None,
) -> LedgerExport:
    """Write the ledger of site-local days ``start``..``end`` (inclusive) to ``out``.

    ``journal``: a ``Journal``, a journal file path, or an ``sqlite3.Connection`` (used as
    is: from another thread only if nothing else uses it). ``fmt``: ``csv`` or ``xlsx``.
    Files appear whole or not at all. Raises ``LedgerError`` (``LedgerCancelled`` once
    ``stop`` is set), ``ValueError`` for a bad period or format.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be csv or xlsx, not {fmt!r}")
    period = Period(start, end)
    out_path = default_output(Path(out), config, period, fmt)
    if not out_path.parent.is_dir():
        raise LedgerError(f"no directory {out_path.parent}")
    tz = config.site.tz
    made = (generated_at or datetime.now(tz)).astimezone(tz)
    writer = open_writer(fmt, out_path)
    try:
        with open_journal(journal) as db:
            # Passage rows as CSV text, made where their kinds are known.
            counts = write_parts(writer, [(None, LedgerReader(db, config, period, stop))], text=fmt == "csv")
        summary: list[tuple[str, Any]] = [
            ("站点", config.site.id),
            ("站点名称", config.site.name),
            ("台账期间", f"{period.start.isoformat()} 至 {period.end.isoformat()}（含首尾两日）"),
            ("时区", f"{config.site.timezone}（表中时间均为该时区当地时间）"),
            ("生成时间", made.replace(tzinfo=None, microsecond=0)),
            *((f"{name}（行数）", n) for name, n in counts.items()),
        ]
        files = writer.close(summary)
    except BaseException as exc:
        writer.abort()
        if isinstance(exc, OSError):
            raise LedgerError(f"cannot write {out_path}: {exc}") from exc
        raise
    return LedgerExport(period, fmt, out_path, files, counts)


# --------------------------------------------------------------------------------------
# CLI (CONTRACT 7)

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def parse_day(text: str) -> date:
    """A day as the CLI and the API take it (``2026-11-27``); argparse's type error otherwise."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date like 2026-11-27, got {text!r}") from None


_day = parse_day  # the name the zone CLI imported


def period_for(today: date, start: date | None, end: date | None, days: int = DEFAULT_DAYS) -> Period:
    """The CLI's period: both dates as given; one of them: 15 days from or to it; none:
    the 15 days ending today."""
    if start is not None and end is not None:
        return Period(start, end)
    if start is not None:
        return Period.starting(start, days)
    return Period.ending(end if end is not None else today, days)


def add_ledger_commands(ledger: Any) -> None:
    """Register ``export`` on an existing ``ledger`` subparsers group."""
    p = ledger.add_parser(
        "export",
        help="checkpoint ledger (卡口登记台账) of a period, csv or xlsx (R14)",
        description="Write every passage of a period, with holds, manual and emergency lifts, alarms, incidents, "
        "approvals and handovers. Default period: the 15 days ending today (site time).",
    )
    p.add_argument("--config", required=True)
    p.add_argument("--from", dest="start", type=parse_day, metavar="YYYY-MM-DD", help="first day (site-local)")
    p.add_argument("--to", dest="end", type=parse_day, metavar="YYYY-MM-DD", help="last day, included")
    p.add_argument("--format", choices=FORMATS, help="default: the suffix of --out")
    p.add_argument("--out", required=True, help="file (csv: the passages file, other parts beside it) or directory")
    p.set_defaults(func=cmd_export)


def add_subcommands(subparsers: Any) -> Any:
    """Register ``ledger`` (with ``export``) on the top-level subparsers; returns the
    ``ledger`` group so other ledger commands can join it."""
    ledger = subparsers.add_parser("ledger", help="checkpoint ledger (R14)").add_subparsers(
        dest="ledger_cmd", required=True
    )
    add_ledger_commands(ledger)
    return ledger


def cmd_export(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(format_problems(exc.problems), file=sys.stderr)
        return EXIT_USAGE
    out = Path(args.out)
    fmt = args.format or out.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        print("say --format csv or --format xlsx (or end --out in .csv or .xlsx)", file=sys.stderr)
        return EXIT_USAGE
    try:
        period = period_for(datetime.now(config.site.tz).date(), args.start, args.end)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    try:
        result = export(config.journal.path, config, period.start, period.end, fmt, out)
    except LedgerError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_FAILURE
    parts = ", ".join(f"{name} {n}" for name, n in result.rows.items() if name != PASSAGES)
    print(f"{TITLE} {period}: {result.passages} passages ({parts})")
    for path in result.files:
        print(path)
    return EXIT_OK


# --------------------------------------------------------------------------------------
# Scheduled ledger


@dataclass
class LedgerScheduler:
    """Writes each complete period's ledger into ``ledger.dir`` by itself (R14).

    Periods are ``every_days`` site-local days long, counted from ``ledger.first_day`` (or
    the day of the journal's first event). A period is due ``SETTLE`` after its last day
    ended; every due period not yet written is written, oldest first, so a daemon that was
    down catches up. What was written is the ``ledger.exported`` events of lane ``_site``
    (one per period and format, journaled once the file is in place): a period with one is
    never written again. Exports run in the worker process (``gatectl.worker``), on their
    own connection, at a lower CPU priority than the lanes.
    """

    site: Site
    poll_s: float = 300.0
    _stop: threading.Event = field(default_factory=threading.Event)

    @property
    def config(self):
        return self.site.config.ledger

    def anchor(self) -> date:
        if self.config.first_day is not None:
            return self.config.first_day
        db = self.site.journal.db
        firsts = [
            row[0]
            for lane in [*self.site.lanes, "_site"]
            for row in db.execute("SELECT ts FROM events WHERE lane_id = ? AND seq = 1", (lane,))
        ]
        tz = self.site.tz
        if not firsts:
            return self.site.now().astimezone(tz).date()
        return min(datetime.fromisoformat(ts).astimezone(tz).date() for ts in firsts)

    def written(self) -> set[tuple[str, str, str]]:
        """(period_from, period_to, format) of every ledger already written."""
        done = set()
        for (body,) in self.site.journal.db.execute("SELECT body FROM events WHERE type = 'ledger.exported'"):
            e = json.loads(body)
            done.add((e.get("period_from"), e.get("period_to"), e.get("format")))
        return done

    def periods(self, now: datetime) -> list[Period]:
        """Every period that is complete and settled at ``now``, oldest first."""
        anchor, days = self.anchor(), self.config.every_days
        local = now.astimezone(self.site.tz)
        out = []
        start = anchor
        while True:
            period = Period.starting(start, days)
            due = datetime.combine(period.end + timedelta(days=1), time(0), self.site.tz) + SETTLE
            if due > local:
                return out
            out.append(period)
            start = period.end + timedelta(days=1)

    def due(self, now: datetime) -> list[tuple[Period, str]]:
        done = self.written()
        return [
            (p, fmt)
            for p in self.periods(now)
            for fmt in self.config.formats
            if (p.start.isoformat(), p.end.isoformat(), fmt) not in done
        ]

    def next_due(self, now: datetime) -> datetime:
        """When the period running at ``now`` will be due."""
        anchor, days = self.anchor(), self.config.every_days
        local = now.astimezone(self.site.tz)
        elapsed = max(0, (local.date() - anchor).days)
        end = anchor + timedelta(days=(elapsed // days + 1) * days - 1)
        due = datetime.combine(end + timedelta(days=1), time(0), self.site.tz) + SETTLE
        if due <= local:  # the current period's end is settled already (just after midnight)
            due = datetime.combine(end + timedelta(days=days + 1), time(0), self.site.tz) + SETTLE
        return due

    async def run_once(self) -> list[dict]:
        """Write every due ledger; returns the ``ledger.exported`` events journaled."""
        directory = self.config.dir
        if directory is None:
            return []
        written = []
        now = self.site.now()
        for period, fmt in await self.site.journal.read(lambda db: self.due(now)):
            path = Path(directory) / period.filename(self.site.config.site.id, fmt)
            try:
                await asyncio.to_thread(Path(directory).mkdir, parents=True, exist_ok=True)
                # In the worker process, not a thread: an export holds the interpreter for
                # tens of milliseconds at a time, and the lanes share it (gatectl.worker).
                result = await asyncio.to_thread(
                    worker().call, export,
                    (self.site.journal.path, self.site.config, period.start, period.end, fmt, path),
                    {"stop": STOP, "generated_at": self.site.now()}, stop=self._stop,
                )
            except asyncio.CancelledError:
                self._stop.set()  # the worker gives up at its next check
                raise
            except (LedgerError, OSError) as exc:
                log.error("ledger not written", period=str(period), format=fmt, path=str(path), error=str(exc))
                break  # try again at the next poll
            stamped = await self.site.record(SITE_LANE, ev.LedgerExported(
                period_from=period.start.isoformat(),
                period_to=period.end.isoformat(),
                path=str(result.path),
                format=fmt,
                rows=result.passages,
                files=[str(p) for p in result.files],
                sheets=result.rows,
            ))
            log.info("ledger written", period=str(period), format=fmt, path=str(result.path), rows=result.passages)
            written.append(ev.encode(stamped))
        return written

    async def run(self) -> None:
        """For ``site.add_task``: never returns (a finished task would stop the site)."""
        if self.config.dir is None:
            log.info("no ledger.dir: the ledger is written only by `gatectl ledger export`")
            await asyncio.Event().wait()
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a ledger problem must not stop the lanes
                log.error("ledger scheduler failed", error=repr(exc))
            now = self.site.now()
            wait = (self.next_due(now) - now).total_seconds()
            await asyncio.sleep(min(max(wait, 1.0), self.poll_s))


#: Lane id of site-wide events (the ledger's own ``ledger.exported``).
SITE_LANE = "_site"


__all__ = [
    "DRILLS",
    "FORMATS",
    "HOURS",
    "PARTS",
    "PASSAGES",
    "PASSAGE_COLUMNS",
    "READ_TYPES",
    "RECORD_PARTS",
    "SETTLE",
    "TITLE",
    "Column",
    "LedgerCancelled",
    "LedgerError",
    "LedgerExport",
    "LedgerReader",
    "LedgerScheduler",
    "LedgerWriter",
    "Part",
    "Period",
    "add_ledger_commands",
    "add_subcommands",
    "cmd_export",
    "export",
    "open_journal",
    "open_writer",
    "parse_day",
    "parts_with",
    "period_for",
    "write_parts",
]
