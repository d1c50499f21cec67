"""Local HTTP API (CONTRACT section 6): health, lane states and journaled events."""

from __future__ import annotations

from aiohttp import web

from gatectl.service import Site

SITE_KEY = web.AppKey("site", Site)


def make_app(site: Site) -> web.Application:
    app = web.Application()
    app[SITE_KEY] = site
    app.router.add_get("/api/v1/health", health)
    app.router.add_get("/api/v1/lanes", lanes)
    app.router.add_get("/api/v1/events", events)
    return app


async def health(request: web.Request) -> web.Response:
    site = request.app[SITE_KEY]
    lanes = {lane.id: lane.core.state.value for lane in site.lanes.values()}
    body = {"status": "ok" if site.running else "starting", "site_id": site.config.site.id, "lanes": lanes}
    return web.json_response(body, status=200 if site.running else 503)


async def lanes(request: web.Request) -> web.Response:
    site = request.app[SITE_KEY]
    return web.json_response({"lanes": [lane.snapshot() for lane in site.lanes.values()]})


async def events(request: web.Request) -> web.Response:
    site = request.app[SITE_KEY]
    lane = request.query.get("lane") or None
    try:
        since = int(request.query["since_seq"]) if request.query.get("since_seq") else None
        limit = min(int(request.query.get("limit", "1000")), 10000)
    except ValueError:
        return web.json_response({"error": "since_seq and limit must be integers"}, status=400)
    if lane is not None and lane not in site.lanes:
        return web.json_response({"error": f"unknown lane {lane!r}"}, status=404)
    return web.json_response({"events": site.journal.events(lane, since, limit)})


async def start_api(site: Site) -> web.AppRunner:
    runner = web.AppRunner(make_app(site), access_log=None)
    await runner.setup()
    api = site.config.local_api
    tcp = web.TCPSite(runner, api.host, api.port)
    await tcp.start()
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The port actually listened on (the config may say 0 in tests)."""
    for s in runner.sites:
        server = getattr(s, "_server", None)
        if server is not None and server.sockets:
            return server.sockets[0].getsockname()[1]
    raise RuntimeError("API not listening")
