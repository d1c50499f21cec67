"""Fixtures for the guard's screen: the simulated site and the daemon with the screen
wired in, and headless Chromium (Debian's ``chromium``) driven through Playwright.

The alarm acknowledgement routes (``GET /api/v1/alarms?open=1``,
``POST /api/v1/alarms/{event_id}/ack``) belong to another module (``gatectl.records``);
the tests wire it when it is there, and otherwise register :func:`alarms_standin`, a
minimal stand-in of that contract that lives only here.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from gatectl.api import SITE_KEY, error, json_body, start_api
from gatectl.config import load_config
from gatectl.screen import Screen
from gatectl.service import Site
from gatectl.users import token_sha256
from simulators.site import LaneSpec, SimulatedSite, free_tcp_port
from journaling import record

BONDED = LaneSpec("B1-IN", "保税货物进区1号", "bonded", "in", "K001")
NON_BONDED = LaneSpec("N1-OUT", "非保税出区", "non_bonded", "out", "K003", exit_loop=False)
TOKEN = "demo-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: The guard's own token (CONTRACT 8 users): records made with it are the guard's.
GUARD = ("王保安", "guard-token")

CHROMIUM = os.environ.get("GATECTL_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


async def wait_until(predicate: Callable[[], bool], timeout: float = 15.0, step: float = 0.02) -> None:
    """Poll until ``predicate()`` holds; fail the test if it never does."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(step)


# ------------------------------------------------------------------ alarms contract


def real_alarm_routes(site: Site) -> Callable[[web.Application], None] | None:
    """The product's alarm routes, when gatectl has them (``gatectl.records.Records``),
    wired as its docstring says; None before that module exists, or with
    GATECTL_SCREEN_ALARMS_STANDIN=1 (to exercise the stand-in)."""
    if os.environ.get("GATECTL_SCREEN_ALARMS_STANDIN") == "1":
        return None
    try:
        module = importlib.import_module("gatectl.records")
    except ImportError:
        return None
    records = module.Records(site)
    site.add_task(records.run, "records")
    return records.setup_routes


def alarms_standin(app: web.Application) -> None:
    """Test-only stand-in for the alarm acknowledgement contract: open alarms are
    ``alarm.raised`` events without an ``alarm.acknowledged`` naming them; an ack is
    journaled through ``Site.record`` as ``alarm.acknowledged`` {alarm_event_id, alarm,
    by, note}."""
    site: Site = app[SITE_KEY]
    if any(r.resource is not None and r.resource.canonical == "/api/v1/alarms" for r in app.router.routes()):
        return  # the product has them now

    def acks() -> dict[str, dict]:
        cur = site.journal.db.execute("SELECT body FROM events WHERE type = 'alarm.acknowledged'")
        out = {}
        for (body,) in cur.fetchall():
            ev = json.loads(body)
            out[ev["alarm_event_id"]] = ev
        return out

    def alarms() -> list[dict]:
        cur = site.journal.db.execute("SELECT body FROM events WHERE type = 'alarm.raised' ORDER BY ts")
        return [json.loads(body) for (body,) in cur.fetchall()]

    async def list_alarms(request: web.Request) -> web.Response:
        done = acks()
        out = []
        for a in alarms():
            ack = done.get(a["event_id"])
            if request.query.get("open") == "1" and ack:
                continue
            out.append({**a, "acknowledged_at": ack["ts"] if ack else None, "acknowledged_by": ack["by"] if ack else None})
        return web.json_response({"alarms": out})

    async def ack(request: web.Request) -> web.Response:
        event_id = request.match_info["event_id"]
        body = await json_body(request)
        alarm = next((a for a in alarms() if a["event_id"] == event_id), None)
        if alarm is None:
            return error(404, f"no alarm {event_id!r}")
        if event_id in acks():
            return error(409, "already acknowledged")
        by = body.get("by")
        if not isinstance(by, str) or not by.strip():
            return error(422, "by is required")
        ev = record(site, alarm["lane_id"], "alarm.acknowledged", {
            "alarm_event_id": event_id, "alarm": alarm["alarm"], "by": by.strip(), "note": body.get("note") or "",
        })
        return web.json_response({"event_id": event_id, "acknowledged_at": ev["ts"], "by": by.strip()})

    app.router.add_get("/api/v1/alarms", list_alarms)
    app.router.add_post("/api/v1/alarms/{event_id}/ack", ack)


# ------------------------------------------------------------------ the site


@dataclass
class ScreenSite:
    sim: SimulatedSite
    site: Site
    screen: Screen
    url: str
    runner: web.AppRunner
    alarms_real: bool
    tasks: list = field(default_factory=list)

    def events(self, lane: str, type_: str | None = None) -> list[dict]:
        return [e for e in self.site.journal.events(lane) if type_ is None or e["type"] == type_]

    async def post(self, path: str, body: dict, headers: dict | None = AUTH) -> tuple[int, dict]:
        async with aiohttp.ClientSession() as s, s.post(self.url + path, json=body, headers=headers or {}) as r:
            return r.status, await r.json()

    async def open_alarm_ids(self) -> set[str]:
        """Event ids of GET /api/v1/alarms?open=1 (a list, or {"alarms": [...]})."""
        status, body = await self.get("/api/v1/alarms?open=1")
        assert status == 200, body
        items = body if isinstance(body, list) else body.get("alarms", body.get("items", []))
        return {a["event_id"] for a in items}

    async def get(self, path: str) -> tuple[int, dict]:
        async with aiohttp.ClientSession() as s, s.get(self.url + path) as r:
            return r.status, await r.json()


@pytest.fixture
def screen_options() -> dict:
    """Keyword arguments for ``Screen`` (tests override, e.g. a short heartbeat)."""
    return {}


@pytest.fixture
async def screen_site(tmp_path: Path, screen_options: dict):
    sim = SimulatedSite(tmp_path, [BONDED, NON_BONDED], travel_s=0.3, speed=5.0, weigh_interval_s=0.05)
    await sim.start()
    port = free_tcp_port()
    cfg = sim.write_config(tmp_path / "site.yaml", journal_path=str(tmp_path / "gatectl.db"),
                           api_listen=f"127.0.0.1:{port}", token=TOKEN)
    text = cfg.read_text(encoding="utf-8")
    anchor = next(line for line in text.splitlines(keepends=True) if line.startswith("  token: "))
    cfg.write_text(text.replace(anchor, anchor + f"  users: [{{name: {GUARD[0]}, role: guard, "
                                                 f"token_sha256: {token_sha256(GUARD[1])}}}]\n"), encoding="utf-8")
    site = Site(load_config(cfg))
    screen = Screen(site, **screen_options)
    site.subscribe(screen.on_events)
    real = real_alarm_routes(site)
    runner = await start_api(site, screen.setup_routes, real or alarms_standin)
    stop = asyncio.Event()
    task = asyncio.create_task(site.run(stop))
    try:
        await wait_until(lambda: site.running)
        # Every device has reported its health: the lanes' views are settled.
        await wait_until(lambda: all(d.get("health") is not None for lane in site.lanes.values()
                                     for d in lane.snapshot()["devices"].values()))
        yield ScreenSite(sim, site, screen, f"http://127.0.0.1:{port}", runner, real is not None)
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
        await runner.cleanup()
        await sim.stop()


# ------------------------------------------------------------------ the browser


def chromium_missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium; or set GATECTL_CHROMIUM)"
    try:
        importlib.import_module("playwright.async_api")
    except ImportError:
        return "the playwright Python package is not installed (pip install '.[test]')"
    return None


@pytest.fixture
async def page(tmp_path: Path):
    reason = chromium_missing()
    if reason:
        pytest.skip(reason)
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = await browser.new_context(viewport={"width": 1920, "height": 1080}, locale="zh-CN")
            pg = await context.new_page()
            pg.set_default_timeout(15_000)
            messages: list[str] = []
            pg.on("console", lambda m: messages.append(f"{m.type}: {m.text}"))
            pg.on("pageerror", lambda e: messages.append(f"pageerror: {e}"))
            failed: list[str] = []
            pg.on("response", lambda resp: failed.append(f"{resp.status} {resp.url}") if resp.status >= 400 else None)
            pg.console_messages = messages  # type: ignore[attr-defined]
            pg.failed_responses = failed  # type: ignore[attr-defined]
            yield pg
        finally:
            await browser.close()


def keep_screenshot(path: Path) -> None:
    """With GATECTL_SCREENSHOT_DOCS=1, copy a screenshot to docs/screen.png for the README."""
    if os.environ.get("GATECTL_SCREENSHOT_DOCS") == "1":
        target = Path(__file__).resolve().parents[2] / "docs" / "screen.png"
        shutil.copyfile(path, target)
