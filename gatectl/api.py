"""Local HTTP API (CONTRACT section 6): health, lane states, journaled events, orders.

Every POST needs ``Authorization: Bearer <local_api.token>``: 401 without, 403 wrong, and
with no token configured every POST is refused. Invalid input is answered 4xx with the
reason in JSON and changes nothing.
"""

from __future__ import annotations

import hmac
import json

from aiohttp import web

from gatectl.service import Site

SITE_KEY = web.AppKey("site", Site)


def make_app(site: Site, *setups) -> web.Application:
    """The local API; each of ``setups`` is a ``setup_routes(app)`` adding a module's routes."""
    app = web.Application(middlewares=[require_token])
    app[SITE_KEY] = site
    app.router.add_get("/api/v1/health", health)
    app.router.add_get("/api/v1/lanes", lanes)
    app.router.add_get("/api/v1/events", events)
    app.router.add_post("/api/v1/lanes/{lane}/spot-checks", spot_checks)
    app.router.add_post("/api/v1/approvals", approvals)
    app.router.add_post("/api/v1/lanes/{lane}/emergency-accounts", emergency_accounts)
    for setup in setups:
        setup(app)
    return app


def error(status: int, reason: str, **extra) -> web.Response:
    return web.json_response({"error": reason, **extra}, status=status)


@web.middleware
async def require_token(request: web.Request, handler):
    if request.method in ("POST", "PUT", "PATCH", "DELETE"):
        token = request.app[SITE_KEY].config.local_api.token
        given = request.headers.get("Authorization", "")
        if token is None:
            return error(403, "no local_api.token is configured: this API accepts no changes")
        if not given.startswith("Bearer "):
            return error(401, "missing bearer token", hint="Authorization: Bearer <local_api.token>")
        if not hmac.compare_digest(given[len("Bearer "):].encode(), token.encode()):
            return error(403, "wrong bearer token")
    return await handler(request)


async def json_body(request: web.Request) -> dict:
    try:
        body = json.loads(await request.text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": f"body is not JSON: {exc}"}), content_type="application/json"
        ) from exc
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text=json.dumps({"error": "body must be a JSON object"}), content_type="application/json")
    return body


async def health(request: web.Request) -> web.Response:
    site = request.app[SITE_KEY]
    lanes = {lane.id: lane.view["state"] for lane in site.lanes.values()}
    body = {"status": "ok" if site.running else "starting", "site_id": site.config.site.id, "lanes": lanes}
    return web.json_response(body, status=200 if site.running else 503)


async def lanes(request: web.Request) -> web.Response:
    site = request.app[SITE_KEY]
    return web.json_response({"lanes": [lane.snapshot() for lane in site.lanes.values()]})


#: The most events one ``GET /api/v1/events`` answers (the rest: ask again from the last seq).
EVENTS_MAX = 10_000
EVENTS_DEFAULT = 1_000


def _int_param(request: web.Request, name: str, default: int | None, low: int, high: int) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if len(raw) > 20 or not raw.lstrip("-").isdigit():
        raise web.HTTPBadRequest(text=json.dumps({"error": f"{name} must be a whole number"}),
                                 content_type="application/json")
    value = int(raw)
    if not low <= value <= high:
        raise web.HTTPBadRequest(text=json.dumps({"error": f"{name} must be within {low}..{high}"}),
                                 content_type="application/json")
    return value


async def events(request: web.Request) -> web.Response:
    """GET /api/v1/events?lane=&since_seq=&limit=: journaled events as stored, ``seq``
    order per lane, at most ``limit`` (1..10 000, default 1 000). Read on a reader thread
    and answered as the stored JSON, never parsed again."""
    site = request.app[SITE_KEY]
    lane = request.query.get("lane") or None
    since = _int_param(request, "since_seq", None, 0, 2**62)
    limit = _int_param(request, "limit", EVENTS_DEFAULT, 1, EVENTS_MAX)
    if lane is not None and lane not in site.lanes and lane != "_site":
        return error(404, f"unknown lane {lane!r}")
    journal = site.journal

    def page(db) -> bytes:
        bodies = [body for _, _, body in journal.event_rows(lane, since, limit, db=db)]
        return ('{"events":[' + ",".join(bodies) + "]}").encode()

    return web.Response(body=await journal.read(page), content_type="application/json")


async def spot_checks(request: web.Request) -> web.Response:
    """R7: customs spot checks: {"hold_next": N} | {"fraction": 0.1} | {"clear": true}."""
    site = request.app[SITE_KEY]
    lane_id = request.match_info["lane"]
    if lane_id not in site.lanes:
        return error(404, f"unknown lane {lane_id!r}")
    body = await json_body(request)
    try:
        result = await site.orders.spot_check(lane_id, body, source="local_api")
    except ValueError as exc:
        return error(422, str(exc))
    return web.json_response(result)


async def approvals(request: web.Request) -> web.Response:
    """R10, R17: accept (200) or refuse (422, with the reason) a signed approval."""
    site = request.app[SITE_KEY]
    raw = await request.read()
    result = await site.orders.approval(raw, source="local_api")
    return web.json_response(result, status=200 if result["status"] == "accepted" else 422)


async def emergency_accounts(request: web.Request) -> web.Response:
    """R11: the guard's account of an emergency release: passage_id, vehicle_type, plate, note."""
    site = request.app[SITE_KEY]
    if request.match_info["lane"] not in site.lanes:
        return error(404, f"unknown lane {request.match_info['lane']!r}")
    body = await json_body(request)
    result = await site.orders.emergency_account(body, lane_id=request.match_info["lane"])
    return web.json_response(result, status=200 if result["status"] == "accepted" else 422)


async def start_api(site: Site, *setups) -> web.AppRunner:
    runner = web.AppRunner(make_app(site, *setups), access_log=None)
    await runner.setup()
    api = site.config.local_api
    await web.TCPSite(runner, api.host, api.port).start()
    return runner
