"""The zone central's HTTP API and screen (CONTRACT 9).

Every request but ``GET /`` (the screen's page and its files) and ``/api/v1/health`` needs
``Authorization: Bearer <token>`` of a configured user: 401 without or with an unknown
token, 403 when the user's role may not do it. ``GET /api/v1/stream`` (the screen's
server-sent events) also takes the token as ``?token=``, since a browser's EventSource
cannot send headers. Reads go to PostgreSQL through a small async connection pool; every
number in a query string has a range, bodies have a size cap (``http.max_body_bytes``).

Relays: ``POST /api/v1/commands`` (customs) and ``POST /api/v1/approvals`` (any role) pass a
signed command or approval to the lane PC named by ``site_id``, on its ``cmd/...`` topic,
unchanged but for the ``site_id`` wrapper. The central judges no signature: the lane PC
alone accepts or refuses, and journals its answer (which comes back as an event). Each
relay is recorded in ``relays`` with the user who sent it (the actor), and answered 202
once the broker acknowledged it, 503 if the broker is not reachable.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import uuid
from datetime import date, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import structlog
from aiohttp import web
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from gatectl.central.ingest import Central
from gatectl.central.screen import Screen, setup_screen
from gatectl.central.queries import alarm_rows, completeness_rows
from gatectl.users import ROLES, User, Users

log = structlog.get_logger("gatectl.central.api")

CENTRAL = web.AppKey("central", Central)
POOL = web.AppKey("pool", AsyncConnectionPool)
USERS = web.AppKey("users", Users)
USER = web.RequestKey("user", User)
ANY = frozenset(ROLES) - {"camera"}
LEDGER_ROLES = frozenset({"customs", "park"})
OPEN_PATHS = ("/api/v1/health",)
MAX_LIMIT = 10_000
COMMAND_TOPICS = {"lane-hours": "cmd/lane-hours", "spot-check": "cmd/spot-checks"}


def error(status: int, reason: str, **extra: Any) -> web.Response:
    return web.json_response({"error": reason, **extra}, status=status)


@web.middleware
async def authenticate(request: web.Request, handler):
    path = request.path
    if path in OPEN_PATHS or path == "/" or path.startswith("/static/"):
        return await handler(request)
    header = request.headers.get("Authorization")
    if header is None and path == "/api/v1/stream" and request.query.get("token"):
        header = f"Bearer {request.query['token']}"
    result = request.app[USERS].authenticate(header)
    if result.user is None:
        return error(401, result.reason or "unauthorised")
    request[USER] = result.user
    return await handler(request)


def require(request: web.Request, roles: frozenset[str]) -> User:
    user: User = request[USER]
    if user.role not in roles:
        raise web.HTTPForbidden(text=json.dumps({"error": f"role {user.role} may not do this",
                                                 "allowed": sorted(roles)}), content_type="application/json")
    return user


def _int(request: web.Request, name: str, lo: int, hi: int, default: int | None) -> int | None:
    raw = request.query.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise web.HTTPBadRequest(text=json.dumps({"error": f"{name} must be a whole number"}),
                                 content_type="application/json") from None
    if not lo <= value <= hi:
        raise web.HTTPBadRequest(text=json.dumps({"error": f"{name} must be {lo}..{hi}"}),
                                 content_type="application/json")
    return value


async def _rows(request: web.Request, sql: str, args: tuple | dict = ()) -> list[tuple]:
    async with request.app[POOL].connection() as conn:
        cur = await conn.execute(sql, args)
        return await cur.fetchall()


# ---------------------------------------------------------------------- reads


async def health(request: web.Request) -> web.Response:
    c = request.app[CENTRAL]
    ok = c.db_ok and c.mqtt_connected
    return web.json_response({"status": "ok" if ok else "degraded", "zone_id": c.config.zone.id,
                              "database": c.db_ok, "broker": c.mqtt_connected, "queued": c.queue.qsize(),
                              "stored": c.counters["stored"]}, status=200 if ok else 503)


async def sites(request: web.Request) -> web.Response:
    c = request.app[CENTRAL]
    rows = await _rows(request, "SELECT prefix, site_id, online, status_at, last_event_at FROM sites ORDER BY prefix")
    out = {}
    for prefix, site_id, online, status_at, last in rows:
        out[prefix] = {"site_id": site_id or c.site_of(prefix), "prefix": prefix,
                       "online": c.online.get(prefix, online),
                       "status_at": status_at.isoformat() if status_at else None,
                       "last_event_at": last.isoformat() if last else None}
    for prefix, online in c.online.items():  # seen on the broker, not yet in the database
        out.setdefault(prefix, {"site_id": c.site_of(prefix), "prefix": prefix, "online": online,
                                "status_at": None, "last_event_at": None})
    return web.json_response({"sites": sorted(out.values(), key=lambda s: s["site_id"])})


async def lanes(request: web.Request) -> web.Response:
    c = request.app[CENTRAL]
    rows = await _rows(request, "SELECT site_id, lane_id, state FROM lanes WHERE lane_id <> '_site'")
    out = {(s, ln): st for s, ln, st in rows}
    out.update(c.states)
    return web.json_response({"lanes": [{"site_id": s, "lane_id": ln, "state": st}
                                        for (s, ln), st in sorted(out.items()) if ln != "_site"]})


async def events(request: web.Request) -> web.Response:
    limit = _int(request, "limit", 1, MAX_LIMIT, 1000)
    since = _int(request, "since_seq", 0, 2**62, None)
    where, args = [], []
    for key, column in (("site", "site_id"), ("lane", "lane_id"), ("type", "type")):
        value = request.query.get(key)
        if value:
            if len(value) > 128:
                return error(400, f"{key} is too long")
            where.append(f"{column} = %s")
            args.append(value)
    if since is not None:
        where.append("seq > %s")
        args.append(since)
    sql = "SELECT body FROM events" + (" WHERE " + " AND ".join(where) if where else "")
    sql += " ORDER BY site_id, lane_id, seq LIMIT %s"
    rows = await _rows(request, sql, (*args, limit))
    return web.json_response({"events": [r[0] for r in rows]})


async def completeness(request: web.Request) -> web.Response:
    return web.json_response({"lanes": await completeness_rows(request.app[POOL])})


async def alarms(request: web.Request) -> web.Response:
    open_only = request.query.get("open", "").lower() in ("1", "true", "yes")
    return web.json_response({"alarms": await alarm_rows(request.app[POOL], open_only)})


async def ledger(request: web.Request) -> web.Response:
    require(request, LEDGER_ROLES)
    from gatectl.central.ledger import export_zone
    from gatectl.ledger import period_for

    c = request.app[CENTRAL]
    fmt = request.query.get("format", "xlsx")
    if fmt not in ("csv", "xlsx"):
        return error(400, "format must be csv or xlsx")
    try:
        start = date.fromisoformat(request.query["from"]) if request.query.get("from") else None
        end = date.fromisoformat(request.query["to"]) if request.query.get("to") else None
        period = period_for(datetime.now(c.config.zone.tz).date(), start, end)
    except ValueError as exc:
        return error(400, f"from and to are dates like 2026-11-27: {exc}")
    if (period.end - period.start).days > 366:
        return error(400, "a ledger covers at most 366 days")
    tmp = Path(tempfile.mkdtemp(prefix="gatectl-zone-ledger-"))
    out = tmp / f"{period.filename(c.config.zone.id, fmt)}"
    try:
        result = await asyncio.to_thread(export_zone, c.config, period, fmt, out, csv_single=fmt == "csv")
        body = result.path.read_bytes()
    finally:
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()
    ctype = "text/csv; charset=utf-8" if fmt == "csv" else \
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    log.info("zone ledger served", user=request[USER].name, period=str(period), format=fmt)
    return web.Response(body=body, headers={
        "Content-Type": ctype,
        "Content-Disposition": f"attachment; filename*=UTF-8''{_quote(out.name)}"})


def _quote(name: str) -> str:
    from urllib.parse import quote

    return quote(name)


# ---------------------------------------------------------------------- relays


async def _body(request: web.Request) -> dict:
    try:
        body = json.loads(await request.text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise web.HTTPBadRequest(text=json.dumps({"error": f"body is not JSON: {exc}"}),
                                 content_type="application/json") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text=json.dumps({"error": "body must be a JSON object"}),
                                 content_type="application/json")
    return body


async def _relay(request: web.Request, user: User, site_id: Any, topic_suffix: str, kind: str,
                 payload: dict) -> web.Response:
    c = request.app[CENTRAL]
    if not isinstance(site_id, str) or not site_id:
        return error(422, "site_id is required")
    prefix = c.prefix_of(site_id)
    if prefix is None:
        return error(404, f"unknown site {site_id!r}")
    topic = f"{prefix}/{topic_suffix}"
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    try:
        await c.relay(topic, data)
    except (aiomqtt.MqttError, TimeoutError) as exc:
        return error(503, f"not relayed: the broker is not reachable ({exc})")
    relay_id = uuid.uuid4()
    async with request.app[POOL].connection() as conn:
        await conn.execute("INSERT INTO relays (relay_id, actor, role, site_id, topic, kind, body)"
                           " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                           (relay_id, user.name, user.role, site_id, topic, kind, Jsonb(payload)))
    log.info("relayed", kind=kind, site=site_id, topic=topic, by=user.name, role=user.role)
    return web.json_response({"status": "relayed", "relay_id": str(relay_id), "site_id": site_id, "topic": topic,
                              "by": user.name,
                              "note": "the lane PC judges the signature; its answer comes back as an event"},
                             status=202)


async def commands(request: web.Request) -> web.Response:
    """A signed command of CONTRACT 8 for one lane PC (customs only)."""
    user = require(request, frozenset({"customs"}))
    body = await _body(request)
    command = body.get("command")
    if set(body) - {"site_id", "command"}:
        return error(422, "expected {\"site_id\", \"command\"}")
    if not isinstance(command, dict):
        return error(422, "command must be a signed command object")
    kind = command.get("command")
    if kind not in COMMAND_TOPICS:
        return error(422, f"command.command must be one of {', '.join(COMMAND_TOPICS)}")
    for key in ("command_id", "lane_id", "issued_at"):
        if not isinstance(command.get(key), str) or not command[key]:
            return error(422, f"command.{key} is required")
    if not isinstance(command.get("signatures"), list) or not command["signatures"]:
        return error(422, "an unsigned command is never relayed: command.signatures is empty")
    return await _relay(request, user, body.get("site_id"), COMMAND_TOPICS[kind], kind, command)


async def approvals(request: web.Request) -> web.Response:
    """A signed approval (CONTRACT 4) plus ``site_id``, relayed without ``site_id``."""
    user = require(request, ANY)
    body = await _body(request)
    site_id = body.pop("site_id", None)
    if not isinstance(body.get("approval_id"), str) or not isinstance(body.get("lane_id"), str):
        return error(422, "an approval has approval_id and lane_id")
    if not isinstance(body.get("signatures"), list) or not body["signatures"]:
        return error(422, "an unsigned approval is never relayed: signatures is empty")
    return await _relay(request, user, site_id, "cmd/approvals", "approval", body)


# ---------------------------------------------------------------------- app


def make_app(central: Central, pool: AsyncConnectionPool) -> web.Application:
    cfg = central.config
    app = web.Application(middlewares=[authenticate], client_max_size=cfg.http.max_body_bytes)
    app[CENTRAL] = central
    app[POOL] = pool
    app[USERS] = Users.of(cfg.users)
    app.router.add_get("/api/v1/health", health)
    app.router.add_get("/api/v1/sites", sites)
    app.router.add_get("/api/v1/lanes", lanes)
    app.router.add_get("/api/v1/events", events)
    app.router.add_get("/api/v1/completeness", completeness)
    app.router.add_get("/api/v1/alarms", alarms)
    app.router.add_get("/api/v1/ledger", ledger)
    app.router.add_post("/api/v1/commands", commands)
    app.router.add_post("/api/v1/approvals", approvals)
    setup_screen(app, Screen(central, pool))
    return app


async def start_api(central: Central) -> tuple[web.AppRunner, AsyncConnectionPool]:
    cfg = central.config
    pool = AsyncConnectionPool(cfg.database.url, min_size=1, max_size=cfg.database.pool_size, open=False,
                               kwargs={"autocommit": True, "application_name": "gatectl-central-api"})
    await pool.open(wait=False)
    runner = web.AppRunner(make_app(central, pool), access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    await web.TCPSite(runner, cfg.http.host, cfg.http.port).start()
    return runner, pool
