"""R14 on the lane PC's local API: the checkpoint ledger of a period as a download.

``GET /api/v1/ledger?from=YYYY-MM-DD&to=YYYY-MM-DD&format=xlsx|csv`` answers a freshly
exported ledger (``gatectl.ledger.export``) of site-local days ``from``..``to`` (both
included; one of them alone: the 15 days from or to it; neither: the 15 days ending today,
as the CLI). ``xlsx`` (the default) is the workbook; ``csv``, whose ledger is one file per
part, a zip of those files. Named ``卡口登记台账_{site}_{from}-{to}.xlsx|zip``.

- Who: ``Authorization: Bearer`` of the full-access token or a user of role guard, customs
  or park (401 without a token, 403 for another role); a wrong token is rate-limited per
  address like the POSTs.
- Bounds: at most ``MAX_DAYS`` (92) days; a bad date, a period ending before it starts or
  a longer one is 400 ``bad_query``. At most ``MAX_PENDING`` (2) downloads are prepared at
  once (one exporting, one waiting); more are 503 ``busy`` with ``Retry-After``.
- The export runs in the worker process (``gatectl.worker``), like the scheduled ledgers:
  the lanes' control loop is never held by it. A client that goes away stops it; the files
  live in a temporary directory removed once the answer is sent.

Wiring: ``make_app(site, ledger_download.setup_routes)`` (``gatectl.daemon`` adds it).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
import threading
import zipfile
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from aiohttp import web
from pydantic import Field, field_validator

from gatectl.api import AUTH_KEY, FULL, RATE_KEY, SITE_KEY, ApiRefused, Query, query
from gatectl.config import SiteConfig
from gatectl.ledger import DEFAULT_DAYS, Period, export, period_for
from gatectl.worker import STOP, worker

ROLES = ("guard", "customs", "park")
MAX_DAYS = 92
MAX_PENDING = 2
#: Bytes sent per write.
CHUNK = 256 * 1024
PENDING_KEY = web.AppKey("ledger_pending", list)
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


class LedgerQuery(Query):
    from_: date | None = Field(default=None, alias="from")
    to: date | None = None
    format: Literal["xlsx", "csv"] = "xlsx"

    @field_validator("from_", "to", mode="before")
    @classmethod
    def _day(cls, value: Any) -> Any:
        """Exactly ``YYYY-MM-DD`` (pydantic would take other shapes of a date too)."""
        if isinstance(value, str):
            try:
                if _DAY.fullmatch(value):
                    return date.fromisoformat(value)
            except ValueError:
                pass
            raise ValueError(f"expected a date like 2026-11-27, got {value[:40]!r}")
        return value


def prepare(journal_path: str, config: SiteConfig, start: date, end: date, fmt: str, directory: str, *,
            stop: threading.Event | None = None, generated_at: datetime | None = None) -> tuple[str, str]:
    """In the worker: export the ledger into ``directory``; the file to send (the workbook,
    or the CSV files zipped) and its download name."""
    period = Period(start, end)
    out = Path(directory) / period.filename(config.site.id, fmt)
    result = export(journal_path, config, start, end, fmt, out, stop=stop, generated_at=generated_at)
    if fmt == "xlsx":
        return str(result.path), result.path.name
    name = period.filename(config.site.id, "zip")
    archive = Path(directory) / name
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for path in result.files:
            z.write(path, path.name)
    return str(archive), name


def _authorise(request: web.Request) -> None:
    """The caller's token (GETs are not checked by the edge): a role of ``ROLES``."""
    app = request.app
    address = request.remote or "?"
    try:
        who = app[AUTH_KEY].identify(request.headers.get("Authorization"))
    except ApiRefused:
        wait = app[RATE_KEY].take(address)
        if wait > 0:
            raise ApiRefused(429, "rate_limited", "too many requests; slow down",
                             retry_after_s=max(1, round(wait + 0.5))) from None
        raise
    if who.role != FULL and who.role not in ROLES:
        raise ApiRefused(403, "forbidden", f"role {who.role} may not do this (allowed: {', '.join(ROLES)})")


async def ledger(request: web.Request) -> web.StreamResponse:
    _authorise(request)
    q = query(request, LedgerQuery)
    site = request.app[SITE_KEY]
    today = site.now().astimezone(site.tz).date()
    try:
        period = period_for(today, q.from_, q.to, DEFAULT_DAYS)
    except ValueError as exc:
        raise ApiRefused(400, "bad_query", f"query: {exc}") from None
    days = (period.end - period.start).days + 1
    if days > MAX_DAYS:
        raise ApiRefused(400, "bad_query", f"query: the period is {days} days; at most {MAX_DAYS}")
    pending = request.app[PENDING_KEY]
    if len(pending) >= MAX_PENDING:
        raise ApiRefused(503, "busy", "ledgers are being prepared; try again shortly", retry_after_s=10)
    stop = threading.Event()
    pending.append(stop)
    directory = await asyncio.to_thread(tempfile.mkdtemp, prefix="gatectl-ledger-")
    try:
        try:
            path, name = await asyncio.to_thread(
                worker().call, prepare,
                (str(site.journal.path), site.config, period.start, period.end, q.format, directory),
                {"stop": STOP, "generated_at": site.now()}, stop=stop)
        except asyncio.CancelledError:
            stop.set()  # the client went away: the worker gives up at its next check
            raise
        finally:
            pending.remove(stop)
        ctype = ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet" if q.format == "xlsx"
                 else "application/zip")
        response = web.StreamResponse(headers={
            "Content-Type": ctype,
            "Content-Disposition": f"attachment; filename=\"ledger.{q.format if q.format == 'xlsx' else 'zip'}\";"
                                   f" filename*=UTF-8''{quote(name)}",
            "Cache-Control": "no-store",
        })
        with open(path, "rb") as f:  # noqa: ASYNC230 - each read is one chunk, in a thread
            response.content_length = await asyncio.to_thread(lambda: Path(path).stat().st_size)
            await response.prepare(request)
            while chunk := await asyncio.to_thread(f.read, CHUNK):
                await response.write(chunk)
        await response.write_eof()
        return response
    finally:
        await asyncio.to_thread(shutil.rmtree, directory, True)


def setup_routes(app: web.Application) -> None:
    """Add ``GET /api/v1/ledger`` (pass to ``make_app`` / ``start_api``)."""
    app[PENDING_KEY] = []
    app.router.add_get("/api/v1/ledger", ledger)


__all__ = ["MAX_DAYS", "MAX_PENDING", "ROLES", "prepare", "setup_routes"]
