"""The zone ledger (R14 for the whole zone): the lane ledger's sheets and columns, with the
site in front, for every lane of every site, from the central's PostgreSQL.

The lane ledger (``gatectl.ledger``) is the one definition of what each part holds and how
a row reads; the zone ledger uses its public API rather than say it twice. For each site,
the period's passages (the fold records: plate, kind and drill mark included) and the
events the lane ledger reads (``READ_TYPES``) are copied from PostgreSQL into a temporary
journal-shaped SQLite file, a ``LedgerReader`` runs over it, and ``write_parts`` merges the
rows of all sites by time, each with its site id, into the lane ledger's writer (xlsx: one
workbook; csv: the passages file and one file per part beside it). The sheets are the lane
ledger's, 演练 and 开放时间指令 included. Lane names, kinds and directions come from each
lane's retained state.

    gatectl central ledger export --config zone.yaml [--from D] [--to D] --format xlsx --out PATH

``ZoneLedgerScheduler`` writes each complete period into ``ledger.dir`` by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sqlite3
import sys
import tempfile
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psycopg
import structlog

from gatectl import ledger as lane_ledger
from gatectl.central.config import ZoneConfig, load_zone_config
from gatectl.lane.passage import COLUMNS as PASSAGE_FIELDS
from gatectl.ledger import PASSAGES, Column, LedgerError, LedgerReader, Part, Period, period_for

log = structlog.get_logger("gatectl.central.ledger")

SITE = Column("站点", 14)
#: Event types read whatever their time (acknowledgements and accounts given later).
ANY_TIME = ("alarm.acknowledged", "emergency.account")
#: Read only when journaled during a drill (a lift is on the ledger only then).
DRILL_ONLY = ("barrier.lifted",)
ZONE_PARTS: tuple[Part, ...] = lane_ledger.parts_with(SITE)


@dataclass
class ZoneLedgerExport:
    period: Period
    format: str
    path: Path
    files: list[Path]
    rows: dict[str, int]
    sites: list[str]


def _journal_copy(pg: psycopg.Connection, site: str, period: Period, path: Path) -> None:
    """One site's period as a journal-shaped SQLite file the lane ledger's reader reads."""
    db = sqlite3.connect(path)
    try:
        cols = list(PASSAGE_FIELDS)
        db.executescript(f"""
            CREATE TABLE events (lane_id TEXT, seq INTEGER, event_id TEXT, type TEXT, ts TEXT, body TEXT,
                                 PRIMARY KEY (lane_id, seq));
            CREATE INDEX events_type ON events (type, ts);
            CREATE TABLE passages ({', '.join(cols)});
            CREATE INDEX passages_opened ON passages (opened_at);
        """)
        lo = datetime.combine(period.start - timedelta(days=2), datetime.min.time()).astimezone()
        hi = datetime.combine(period.end + timedelta(days=9), datetime.min.time()).astimezone()
        with pg.cursor(name=f"ledger_p_{site}") as cur:
            cur.itersize = 5000
            cur.execute("SELECT record FROM passages WHERE site_id = %s AND opened_at >= %s AND opened_at < %s",
                        (site, lo, hi))
            db.executemany(f"INSERT INTO passages ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                           ([_sqlite(r.get(c)) for c in cols] for (r,) in cur))
        types = [t for t in lane_ledger.READ_TYPES if t not in DRILL_ONLY]
        with pg.cursor(name=f"ledger_e_{site}") as cur:
            cur.itersize = 5000
            cur.execute(
                "SELECT lane_id, seq, event_id::text, type, body->>'ts', body::text FROM events WHERE site_id = %s"
                " AND (type = ANY(%s) AND (ts >= %s AND ts < %s OR type = ANY(%s))"
                "      OR type = ANY(%s) AND ts >= %s AND ts < %s AND body->'drill' = 'true')",
                (site, types, lo, hi, list(ANY_TIME), list(DRILL_ONLY), lo, hi))
            db.executemany("INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?, ?)", cur)
        # Before the period: the last drill start or end of each lane (a drill under way).
        cur = pg.execute(
            "SELECT DISTINCT ON (lane_id) lane_id, seq, event_id::text, type, body->>'ts', body::text FROM events"
            " WHERE site_id = %s AND type IN ('drill.started', 'drill.ended') AND ts < %s ORDER BY lane_id, ts DESC",
            (site, lo))
        db.executemany("INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?, ?)", cur)
        db.commit()
    finally:
        db.close()


def _sqlite(value: Any) -> Any:
    return int(value) if isinstance(value, bool) else value


def _site_config(config: ZoneConfig, site: str, lanes: list[tuple[str, dict | None]]) -> Any:
    """What the lane ledger's reader needs of a site config, from the lanes' retained states."""
    return SimpleNamespace(
        site=SimpleNamespace(id=site, name=site, tz=config.zone.tz, timezone=config.zone.timezone),
        lanes=[SimpleNamespace(id=lane, name=(st or {}).get("name") or lane, kind=(st or {}).get("kind"),
                               direction=(st or {}).get("direction") or "in") for lane, st in lanes if lane != "_site"],
        administrative_vehicles=[], staff=[],
    )


def export_zone(config: ZoneConfig, period: Period, fmt: str, out: str | Path, *,
                csv_single: bool = False) -> ZoneLedgerExport:
    """Write the zone ledger of zone-local days ``period`` to ``out`` (a file, or a
    directory: named by period). ``csv_single``: only the passages CSV."""
    if fmt not in lane_ledger.FORMATS:
        raise ValueError(f"format must be csv or xlsx, not {fmt!r}")
    out_path = Path(out)
    if out_path.is_dir():
        out_path = out_path / period.filename(config.zone.id, fmt)
    if not out_path.parent.is_dir():
        raise LedgerError(f"no directory {out_path.parent}")
    try:
        pg = psycopg.connect(config.database.url, connect_timeout=10, application_name="gatectl-central-ledger")
    except psycopg.Error as exc:
        raise LedgerError(f"database unreachable: {exc}") from exc
    tmp = Path(tempfile.mkdtemp(prefix="gatectl-zone-ledger-"))
    readers: list[tuple[str | None, LedgerReader]] = []
    conns: list[sqlite3.Connection] = []
    try:
        with pg.transaction():  # one snapshot: every part of every site agrees
            pg.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            lanes: dict[str, list] = {}
            for site, lane, state in pg.execute("SELECT site_id, lane_id, state FROM lanes ORDER BY 1, 2"):
                lanes.setdefault(site, []).append((lane, state))
            for site in sorted(lanes):
                path = tmp / f"{site}.db"
                _journal_copy(pg, site, period, path)
                db = sqlite3.connect(path)
                conns.append(db)
                readers.append((site, LedgerReader(db, _site_config(config, site, lanes[site]), period, None)))
        writer = lane_ledger.open_writer(fmt, out_path)
        try:
            counts = lane_ledger.write_parts(writer, readers, ZONE_PARTS, passages_only=csv_single)
            made = datetime.now(config.zone.tz).replace(tzinfo=None, microsecond=0)
            files = writer.close([
                ("园区", config.zone.id), ("园区名称", config.zone.name), ("站点", "、".join(lanes)),
                ("台账期间", f"{period.start.isoformat()} 至 {period.end.isoformat()}（含首尾两日）"),
                ("时区", f"{config.zone.timezone}（表中时间均为该时区当地时间）"), ("生成时间", made),
                *((f"{name}（行数）", n) for name, n in counts.items()),
            ])
        except BaseException:
            writer.abort()
            raise
    finally:
        for db in conns:
            db.close()
        pg.close()
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()
    return ZoneLedgerExport(period, fmt, out_path, files, counts, sorted(lanes))


# --------------------------------------------------------------------------------------
# CLI and schedule


def cmd_export(args: argparse.Namespace) -> int:
    from gatectl.config import ConfigError, format_problems

    try:
        config = load_zone_config(args.config)
    except ConfigError as exc:
        print(format_problems(exc.problems), file=sys.stderr)
        return 2
    out = Path(args.out)
    fmt = args.format or (out.suffix.lstrip(".") if out.suffix in (".csv", ".xlsx") else None)
    if fmt is None:
        print("say --format csv or xlsx (or end --out with .csv or .xlsx)", file=sys.stderr)
        return 2
    try:
        period = period_for(datetime.now(config.zone.tz).date(), args.start, args.end)
        result = export_zone(config, period, fmt, out)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except LedgerError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    print(f"wrote {result.path} ({period}; {result.rows[PASSAGES]} passages of {len(result.sites)} site(s))")
    return 0


class ZoneLedgerScheduler:
    """Each complete period (``ledger.every_days`` zone-local days from ``first_day``) into
    ``ledger.dir``, once, a settling half hour after it ended. Only files that are not
    there yet are written, so several instances and restarts write each period once
    (an instance that loses the race writes the same file again, atomically)."""

    def __init__(self, config: ZoneConfig, check_s: float = 300.0) -> None:
        self.config = config
        self.check_s = check_s

    def due(self, now: datetime, first_event: date | None) -> list[Period]:
        cfg = self.config.ledger
        first = cfg.first_day or first_event
        if cfg.dir is None or first is None:
            return []
        out = []
        start = first
        while True:
            period = Period.starting(start, cfg.every_days)
            ends = datetime.combine(period.end + timedelta(days=1), datetime.min.time(), self.config.zone.tz)
            if ends + lane_ledger.SETTLE > now:
                break
            if any(not (cfg.dir / period.filename(self.config.zone.id, f)).exists() for f in cfg.formats):
                out.append(period)
            start = period.end + timedelta(days=1)
        return out

    async def run(self) -> None:
        cfg = self.config.ledger
        if cfg.dir is None:
            return
        while True:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._once)
            await asyncio.sleep(self.check_s)

    def _once(self) -> None:
        cfg = self.config.ledger
        assert cfg.dir is not None
        cfg.dir.mkdir(parents=True, exist_ok=True)
        with psycopg.connect(self.config.database.url, connect_timeout=10) as pg:
            row = pg.execute("SELECT min(ts) FROM events").fetchone()
        first = row[0].astimezone(self.config.zone.tz).date() if row and row[0] else None
        for period in self.due(datetime.now(self.config.zone.tz), first):
            for fmt in cfg.formats:
                target = cfg.dir / period.filename(self.config.zone.id, fmt)
                if not target.exists():
                    result = export_zone(self.config, period, fmt, target)
                    log.info("zone ledger written", path=str(result.path), period=str(period),
                             passages=result.rows[PASSAGES])


__all__ = ["ZONE_PARTS", "ZoneLedgerExport", "ZoneLedgerScheduler", "export_zone", "cmd_export"]
