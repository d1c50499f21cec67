"""The zone's screen (CONTRACT 9 ``GET /``): every lane of every site live, open alarms,
sites offline, completeness per lane. Chinese; one page from ``gatectl/central/static``.

``GET /api/v1/stream`` is server-sent events:

- ``state`` first (and again after the client fell behind): sites, lanes, completeness,
  open alarms and the Chinese labels;
- ``update`` at most every ``interval`` (0.5 s): the lanes, sites and completeness rows that
  changed since the last one;
- ``alarm`` at once: a new zone alarm, or a lane's ``alarm.raised``;
- a ``: heartbeat`` comment after 15 s of silence.

Each client has a bounded queue; one that falls behind loses it and gets a fresh ``state``,
so a stuck browser cannot grow the central's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from gatectl import labels
from gatectl.central.queries import alarm_rows, completeness_rows

log = structlog.get_logger("gatectl.central.screen")

STATIC = Path(__file__).parent / "static"
QUEUE_MAX = 64
HEARTBEAT_S = 15.0
ZONE_ALARMS_ZH = {
    "card_on_two_lanes": "一卡多站同时通行",
    "instruction_replay": "放行指令跨站重复使用",
    "site_offline": "站点离线",
}


def screen_labels() -> dict[str, Any]:
    return {
        "kind": labels.KINDS, "direction": labels.DIRECTIONS, "state": labels.STATES,
        "decision": labels.DECISIONS, "outcome": labels.OUTCOMES,
        "alarm": {**labels.ALARMS, **ZONE_ALARMS_ZH}, "health": labels.HEALTH,
    }


class Screen:
    def __init__(self, central: Any, pool: AsyncConnectionPool, interval: float = 0.5) -> None:
        self.central = central
        self.pool = pool
        self.interval = interval
        self.clients: set[asyncio.Queue] = set()
        self._lanes: dict[tuple[str, str], dict] = {}
        self._sites: dict[str, dict] = {}
        self._completeness = False
        self._task: asyncio.Task | None = None
        central.listen(self._on)

    def _on(self, kind: str, data: Any) -> None:
        if not self.clients:
            return
        if kind == "lanes":
            self._lanes.update(data)
        elif kind == "sites":
            self._sites[data["prefix"]] = data
        elif kind == "completeness":
            self._completeness = True
        elif kind == "alarm":
            self._broadcast("alarm", self._alarm_json(data))

    def _alarm_json(self, data: dict) -> dict:
        if data.get("source") == "lane":
            b = data["event"]
            return {"source": "lane", "alarm": b.get("alarm"), "site_id": b.get("site_id"), "site_ids": [b.get("site_id")],
                    "lane_id": b.get("lane_id"), "raised_at": b.get("ts"), "open": True, "event": b}
        return data

    def _broadcast(self, event: str, data: Any) -> None:
        text = f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False, default=str)}\n\n"
        for q in list(self.clients):
            try:
                q.put_nowait(text)
            except asyncio.QueueFull:
                with contextlib.suppress(asyncio.QueueEmpty):
                    while True:
                        q.get_nowait()
                q.put_nowait(None)  # fell behind: a fresh state instead

    async def _pump(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if not self.clients:
                continue
            update: dict[str, Any] = {}
            if self._lanes:
                update["lanes"] = [{"site_id": s, "lane_id": ln, "state": st} for (s, ln), st in self._lanes.items()
                                   if ln != "_site"]
                self._lanes = {}
            if self._sites:
                update["sites"] = [self._site(p) for p in self._sites]
                self._sites = {}
            if self._completeness:
                self._completeness = False
                with contextlib.suppress(Exception):
                    update["completeness"] = await completeness_rows(self.pool)
            if update:
                self._broadcast("update", update)

    def _site(self, prefix: str) -> dict:
        return {"prefix": prefix, "site_id": self.central.site_of(prefix), "online": self.central.online.get(prefix)}

    async def state(self) -> dict:
        c = self.central
        return {
            "zone": {"id": c.config.zone.id, "name": c.config.zone.name},
            "sites": [self._site(p) for p in sorted(c.online)],
            "lanes": [{"site_id": s, "lane_id": ln, "state": st} for (s, ln), st in sorted(c.states.items())
                      if ln != "_site"],
            "completeness": await completeness_rows(self.pool),
            "alarms": await alarm_rows(self.pool, True, 100),
            "labels": screen_labels(),
        }

    async def stream(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        q: asyncio.Queue = asyncio.Queue(maxsize=QUEUE_MAX)
        self.clients.add(q)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._pump(), name="central:screen")
        try:
            send: str | None = None
            while True:
                if send is None:
                    data = json.dumps(await self.state(), ensure_ascii=False, default=str)
                    await resp.write(f"event: state\ndata: {data}\n\n".encode())
                else:
                    await resp.write(send.encode())
                try:
                    send = await asyncio.wait_for(q.get(), HEARTBEAT_S)
                except TimeoutError:
                    send = ": heartbeat\n\n"
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.clients.discard(q)
        return resp


def setup_screen(app: web.Application, screen: Screen) -> None:
    async def index(_: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    async def stop(_: web.Application) -> None:
        if screen._task is not None:
            screen._task.cancel()

    app.router.add_get("/", index)
    app.router.add_static("/static/", STATIC)
    app.router.add_get("/api/v1/stream", screen.stream)
    app.on_shutdown.append(stop)
