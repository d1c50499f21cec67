"""The guard's screen (CONTRACT section 6: ``GET /``; R11, R12).

One page for the booth, served from ``gatectl/static`` (no build step, nothing from the
internet): every lane live (with its plate, the passage's kind on a shared lane, whether it
is open now, customs' hours order and a drill when the lane gives them), alarms with
acknowledgement, pending approvals, recent passages and the emergency-release accounts
still owed; and the guard's workstation (R13, R15, R8, R14): handover with the
carried-over items, shift checks, video notes, incident accounts and closing, fault
tickets and their progress, the ledger download (``docs/workstation.md``). This module
only reads: every change the page makes goes through the token-protected POST routes of
the local API (``gatectl.records``' routes, ``/api/v1/lanes/{lane}/emergency-accounts``),
in the name of the logged-in user.

Routes added by :func:`setup_routes`:

- ``GET /`` the page, ``GET /static/...`` its files;
- ``GET /api/v1/stream`` server-sent events (``text/event-stream``):

  * ``state`` first, and again after the client fell behind: everything the page shows
    (lanes, recent passages, emergency accounts owed, pending approvals, recent alarms,
    Chinese labels);
  * ``lanes``: the lanes whose view changed, at most every ``min_interval_s`` (0.25 s);
  * ``journal``: each batch of journaled events as written, each with ``zh``, a line in
    Chinese;
  * ``passages`` and ``approvals``: those lists again after an event changed them;
  * a ``: heartbeat`` comment after ``heartbeat_s`` (15 s) of silence.

  Each client has a bounded queue (items and bytes); a client that falls behind loses
  its queue and gets one fresh ``state`` instead, so a stuck browser cannot grow memory.
- ``GET /api/v1/approvals?pending=1`` accepted approvals inside their validity window
  with lifts left (without ``pending``: the latest 100, each with its ``status``).

Wiring: ``make_app(site, gatectl.screen.setup_routes)``; it subscribes to the site itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from gatectl import events as ev
from gatectl import labels as L
from gatectl.api import SITE_KEY, Query, QueryBool, query
from gatectl.records import lane_devices
from gatectl.service import Site

log = structlog.get_logger("gatectl.screen")

STATIC_DIR = Path(__file__).parent / "static"

#: Events that change the passages list or the emergency accounts owed.
PASSAGE_EVENTS = frozenset({"passage.opened", "passage.closed", "emergency.account", "card.read", "release.decided"})
APPROVAL_EVENTS = frozenset({"approval.accepted", "approval.used", "approval.expired", "authorisation.committed"})

RECENT_PASSAGES = 30
RECENT_ALARMS = 50
#: How far back (in alarm events) the screen looks for emergency releases without an account.
EMERGENCY_LOOKBACK = 500


def labels() -> dict[str, Any]:
    """Every Chinese label the page uses, from ``gatectl.labels``."""
    return {
        "state": L.STATES,
        "alarm": L.ALARMS,
        "kind": L.KINDS,
        "decision": L.DECISIONS,
        "outcome": L.OUTCOMES,
        "health": L.HEALTH,
        "device": L.DEVICES,
        "barrier": L.BARRIER_POSITIONS,
        "trigger": L.TRIGGERS,
        "reason": L.APPROVAL_REASONS,
        "hold": L.REASONS,
        "emergency_types": list(L.EMERGENCY_TYPES),
        "incident_kind": L.INCIDENT_KINDS,
        "ticket_state": L.TICKET_STATES,
        "ticket_source": L.TICKET_SOURCES,
        "party": L.PARTIES,
        "category": L.CATEGORIES,
        "duty": L.DUTY,
        "field": L.FIELDS,
        "role": L.ROLES,
        "verdict": L.CHECK_VERDICTS,
        "ledger_format": L.LEDGER_FORMATS,
        "lane_open": {"true": L.LANE_OPEN[True], "false": L.LANE_OPEN[False]},
        "hours": {"true": L.HOURS[True], "false": L.HOURS[False]},
        "drill": L.DRILL,
        "site_wide": L.SITE_WIDE,
    }


def describe_zh(body: dict) -> str:
    """One line in Chinese for a journaled event (its body), never raising on an odd one."""
    try:
        return L.describe(ev.decode(body))
    except Exception:  # noqa: BLE001 - a label must never break the stream
        return str(body.get("type") or "?")


def alarm_detail(body: dict) -> str:
    try:
        return L.alarm_detail(ev.decode(body).event)
    except Exception:  # noqa: BLE001
        return ""


def barrier_position(inputs: dict[str, bool]) -> str:
    up, down = bool(inputs.get("barrier_up")), bool(inputs.get("barrier_down"))
    if up and down:
        return "conflict"
    if up:
        return "up"
    if down:
        return "down"
    return "moving"


def sse(event: str, data: Any) -> bytes:
    """One server-sent event; JSON has no raw newlines, so one ``data:`` line."""
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=str)
    return f"event: {event}\ndata: {body}\n\n".encode()


class Client:
    """One connected browser: a queue bounded in items and bytes.

    When a push would overflow it, the queue is dropped and ``resync`` set: the writer
    sends one fresh ``state`` instead of everything missed.
    """

    def __init__(self, max_items: int, max_bytes: int) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.items: deque[bytes] = deque()
        self.bytes = 0
        self.resync = True  # the first thing a client gets is the whole state
        self.closing = False
        self.overflows = 0
        self.wake = asyncio.Event()

    def push(self, data: bytes) -> None:
        if self.closing or self.resync:
            return  # the state about to be sent already holds it
        if len(self.items) >= self.max_items or self.bytes + len(data) > self.max_bytes:
            self.items.clear()
            self.bytes = 0
            self.resync = True
            self.overflows += 1
        else:
            self.items.append(data)
            self.bytes += len(data)
        self.wake.set()

    def pop(self) -> bytes | None:
        if not self.items:
            return None
        data = self.items.popleft()
        self.bytes -= len(data)
        return data

    def close(self) -> None:
        self.closing = True
        self.items.clear()
        self.bytes = 0
        self.wake.set()


class Screen:
    """What the guard's screen shows, and the clients watching it."""

    def __init__(
        self,
        site: Site,
        *,
        min_interval_s: float = 0.25,
        poll_s: float = 1.0,
        heartbeat_s: float = 15.0,
        write_timeout_s: float = 30.0,
        queue_items: int = 256,
        queue_bytes: int = 1 << 20,
        max_clients: int = 16,
    ) -> None:
        self.site = site
        self.min_interval_s = min_interval_s
        self.poll_s = poll_s
        self.heartbeat_s = heartbeat_s
        self.write_timeout_s = write_timeout_s
        self.queue_items = queue_items
        self.queue_bytes = queue_bytes
        self.max_clients = max_clients
        self.clients: set[Client] = set()
        self._last_lanes: dict[str, str] = {}
        self._lanes_dirty = True
        self._passages_dirty = False
        self._approvals_dirty = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._stopped = False

    # ------------------------------------------------------------------ views

    def lane_view(self, lane) -> dict[str, Any]:
        """One lane as the page shows it: no counters that change every poll."""
        snap = lane.snapshot()
        inputs = snap.get("inputs") or {}
        faults = snap.get("faults") or {}
        devices = []
        for name, d in (snap.get("devices") or {}).items():
            health = d.get("health")
            devices.append({
                "name": name,
                "label": L.device(name),
                "health": health,
                "reason": d.get("health_reason") or faults.get(name),
            })
        return {
            "lane_id": snap["lane_id"],
            "name": snap.get("name"),
            "kind": snap.get("kind"),
            "direction": snap.get("direction"),
            "state": snap["state"],
            "display": snap.get("display"),
            "inputs": inputs,
            "has_exit_loop": lane.config.points.exit_loop is not None,
            "barrier": barrier_position(inputs),
            "vehicle_present": any(inputs.get(p) for p in ("arrival_loop", "safety_loop", "exit_loop")),
            "faults": faults,
            "passage": snap.get("passage"),
            "lift": snap.get("lift"),
            "devices": devices,
            "spot_checks": snap.get("spot_checks"),
            "open_now": snap.get("open_now"),
            # Passed on as the lane gives them (absent: not shown): whether it releases
            # automatically now, customs' standing hours order, a drill in progress.
            "open": snap.get("open", snap.get("open_now")),
            "hours_order": snap.get("hours_order"),
            "drill": snap.get("drill"),
            # What a shift check covers: the lane's devices as the records name them.
            "check_devices": lane_devices(lane.config),
        }

    @staticmethod
    def _lane_key(view: dict[str, Any]) -> str:
        return json.dumps(view, sort_keys=True, default=str)

    def lanes(self) -> list[dict[str, Any]]:
        return [self.lane_view(lane) for lane in self.site.lanes.values()]

    @staticmethod
    def _recent_bodies(db, type_: str, limit: int) -> list[dict]:
        """The latest events of one type, newest first (the (type, ts) index: flat cost).
        A damaged row is left out (the journal's readers report it)."""
        cur = db.execute("SELECT CAST(body AS BLOB) FROM events WHERE type = ? ORDER BY ts DESC LIMIT ?",
                         (type_, limit))
        out = []
        for (body,) in cur.fetchall():
            try:
                event = json.loads(body)
            except ValueError:  # not UTF-8 or not JSON
                continue
            if isinstance(event, dict):
                out.append(event)
        return out

    def _accounted(self, db) -> set[str]:
        return {e.get("passage_id") for e in self._recent_bodies(db, "emergency.account", EMERGENCY_LOOKBACK)}

    def _passages(self, db) -> dict[str, Any]:
        """Recent passages (newest first) and the emergency releases still owing an account."""
        journal = self.site.journal
        accounted = self._accounted(db)
        rows = journal.passages(None, RECENT_PASSAGES, db=db)
        recent = [self._passage_row(r, accounted) for r in rows]
        owed = []
        seen: set[str] = set()
        for e in self._recent_bodies(db, "alarm.raised", EMERGENCY_LOOKBACK):
            auth = e.get("authorisation") or {}
            pid = e.get("passage_id")
            if e.get("alarm") != "emergency_release" or auth.get("kind") != "emergency" or not pid:
                continue
            if pid in seen or pid in accounted:
                continue
            seen.add(pid)
            row = journal.passage(pid, db=db)
            if row is None or row.get("closed_at") is None or row.get("auth_kind") != "emergency":
                continue
            owed.append(self._passage_row(row, accounted))
        return {"passages": recent, "emergency_owed": owed}

    async def passages(self) -> dict[str, Any]:
        return await self.site.journal.read(self._passages)

    @staticmethod
    def _passage_row(row: dict, accounted: set[str]) -> dict[str, Any]:
        emergency = row.get("auth_kind") == "emergency" or row.get("outcome") == "emergency"
        return {
            "passage_id": row["passage_id"],
            "lane_id": row["lane_id"],
            "opened_at": row.get("opened_at"),
            "closed_at": row.get("closed_at"),
            "card": row.get("card"),
            "plate": row.get("plate"),
            "gross_weight_kg": row.get("gross_weight_kg"),
            "decision": row.get("decision"),
            "hint": row.get("hint"),
            "form_id": row.get("form_id"),
            "outcome": row.get("outcome"),
            "reason": row.get("reason"),
            "auth_kind": row.get("auth_kind"),
            "emergency": emergency,
            "account_owed": emergency and row.get("closed_at") is not None and row["passage_id"] not in accounted,
        }

    def _approvals(self, db, pending: bool, now: datetime) -> list[dict[str, Any]]:
        """Accepted approvals, newest first; ``pending``: only those usable now (inside
        their window, lifts left)."""
        journal = self.site.journal
        cur = db.execute(
            "SELECT approval_id, lane_id, trigger, max_lifts, valid_from, valid_until, document, accepted_at"
            " FROM approvals ORDER BY accepted_at DESC LIMIT ?",
            (100 if not pending else 1000,),
        )
        out = []
        for approval_id, lane_id, trigger, max_lifts, valid_from, valid_until, document, accepted_at in cur.fetchall():
            used = journal.approval_uses(approval_id, db)
            start, end = datetime.fromisoformat(valid_from), datetime.fromisoformat(valid_until)
            if now < start:
                status = "not_yet_valid"
            elif now >= end:
                status = "expired"
            elif used >= max_lifts:
                status = "used_up"
            else:
                status = "pending"
            if pending and status != "pending":
                continue
            try:
                doc = json.loads(document)
            except ValueError:
                doc = {}
            out.append({
                "approval_id": approval_id,
                "lane_id": lane_id,
                "trigger": trigger,
                "max_lifts": max_lifts,
                "lifts_used": used,
                "lifts_left": max(max_lifts - used, 0),
                "valid_from": valid_from,
                "valid_until": valid_until,
                "accepted_at": accepted_at,
                "status": status,
                "reason": doc.get("reason"),
                "detail": doc.get("detail"),
                "plate": doc.get("plate"),
                "requested_by": doc.get("requested_by"),
                "approved_by": doc.get("approved_by"),
            })
        return out

    async def approvals(self, pending: bool, now: datetime | None = None) -> list[dict[str, Any]]:
        now = now or self.site.now()
        return await self.site.journal.read(lambda db: self._approvals(db, pending, now))

    def _recent_alarms(self, db) -> list[dict[str, Any]]:
        """The latest alarms from the journal, newest first, with any acknowledgement the
        journal holds (an ``alarm.acknowledged`` event naming the alarm's event id)."""
        alarms = self._recent_bodies(db, "alarm.raised", RECENT_ALARMS)
        ids = {a["event_id"] for a in alarms}
        acks: dict[str, dict] = {}
        for ack in self._recent_bodies(db, "alarm.acknowledged", EMERGENCY_LOOKBACK):
            target = ack.get("alarm_event_id")
            if target in ids and target not in acks:
                acks[target] = ack
        out = []
        for a in alarms:
            ack = acks.get(a["event_id"])
            out.append({
                **a,
                "zh": L.zh(L.ALARMS, a.get("alarm")),
                "detail_zh": alarm_detail(a),
                "acknowledged_at": ack["ts"] if ack else None,
                "acknowledged_by": ack.get("by") if ack else None,
                "ack_note": ack.get("note") if ack else None,
            })
        return out

    async def recent_alarms(self) -> list[dict[str, Any]]:
        return await self.site.journal.read(self._recent_alarms)

    async def state(self, lanes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        cfg = self.site.config
        now = self.site.now()

        def read(db) -> dict[str, Any]:
            return {
                **self._passages(db),
                "approvals": self._approvals(db, True, now),
                "alarms": self._recent_alarms(db),
            }

        return {
            "site": {"id": cfg.site.id, "name": cfg.site.name},
            "server_time": now.isoformat(),
            "token_configured": cfg.local_api.token is not None or bool(cfg.local_api.users),
            "labels": labels(),
            "lanes": lanes if lanes is not None else self.lanes(),
            **await self.site.journal.read(read),
        }

    # ------------------------------------------------------------- pushing

    def on_events(self, written: list[ev.Stamped]) -> None:
        """Site subscriber: called with each batch of journaled events, in the loop."""
        if self._stopped:
            return
        try:
            types = {s.type for s in written}
            self._lanes_dirty = True
            if types & PASSAGE_EVENTS:
                self._passages_dirty = True
            if types & APPROVAL_EVENTS:
                self._approvals_dirty = True
            self._wake.set()
            if self.clients:
                self.broadcast(sse("journal", [{**ev.encode(s), "zh": L.describe(s)} for s in written]))
        except Exception as exc:  # noqa: BLE001 - the screen must never break a lane's write
            log.error("screen could not take events", error=repr(exc))

    def broadcast(self, data: bytes) -> None:
        for client in list(self.clients):
            client.push(data)

    async def run(self) -> None:
        """Send lane views when they change (at most every ``min_interval_s``), and the
        passages and approvals lists when an event changed them."""
        loop = asyncio.get_running_loop()
        last_poll = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_s):
                    await self._wake.wait()
            self._wake.clear()
            if not self.clients:
                continue  # dirty flags stay; a new client gets the whole state anyway
            try:
                now = loop.time()
                if self._lanes_dirty or now - last_poll >= self.poll_s:
                    self._lanes_dirty = False
                    last_poll = now
                    changed = []
                    for view in self.lanes():
                        key = self._lane_key(view)
                        if self._last_lanes.get(view["lane_id"]) != key:
                            self._last_lanes[view["lane_id"]] = key
                            changed.append(view)
                    if changed:
                        self.broadcast(sse("lanes", {"lanes": changed}))
                if self._passages_dirty:
                    self._passages_dirty = False
                    self.broadcast(sse("passages", await self.passages()))
                if self._approvals_dirty:
                    self._approvals_dirty = False
                    self.broadcast(sse("approvals", {"approvals": await self.approvals(pending=True)}))
            except Exception as exc:  # noqa: BLE001 - e.g. the journal closed during shutdown
                log.warning("screen update failed", error=repr(exc))
            await asyncio.sleep(self.min_interval_s)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """``GET /api/v1/stream``: server-sent events for one browser."""
        query(request, StreamQuery)
        if self._stopped:
            raise web.HTTPServiceUnavailable(text="shutting down")
        if len(self.clients) >= self.max_clients:
            raise web.HTTPServiceUnavailable(text=f"too many screens (max {self.max_clients})")
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await resp.prepare(request)
        client = Client(self.queue_items, self.queue_bytes)
        self.clients.add(client)
        self._wake.set()
        try:
            await self._write(resp, b"retry: 3000\n\n")
            while not client.closing:
                if client.resync:
                    client.resync = False
                    lanes = self.lanes()
                    if self.clients == {client}:
                        # No other screen to keep up to date: changes count from this state
                        # (set before the journal is read: a change meanwhile is a change).
                        self._last_lanes = {v["lane_id"]: self._lane_key(v) for v in lanes}
                    await self._write(resp, sse("state", await self.state(lanes)))
                    continue
                data = client.pop()
                if data is not None:
                    await self._write(resp, data)
                    continue
                client.wake.clear()
                try:
                    async with asyncio.timeout(self.heartbeat_s):
                        await client.wake.wait()
                except TimeoutError:
                    await self._write(resp, b": heartbeat\n\n")
        except (ConnectionError, TimeoutError):
            pass  # the browser went away, or stopped reading for write_timeout_s: forget it
        finally:
            client.close()
            self.clients.discard(client)
        return resp

    async def _write(self, resp: web.StreamResponse, data: bytes) -> None:
        async with asyncio.timeout(self.write_timeout_s):
            await resp.write(data)

    # --------------------------------------------------------------- routes

    async def index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(
            STATIC_DIR / "index.html",
            headers={
                "Cache-Control": "no-cache",
                "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
                "X-Content-Type-Options": "nosniff",
            },
        )

    async def approvals_route(self, request: web.Request) -> web.Response:
        q = query(request, ApprovalsQuery)
        return web.json_response({"approvals": await self.approvals(pending=q.pending)})

    async def _on_startup(self, app: web.Application) -> None:
        self._stopped = False
        self._task = asyncio.create_task(self.run(), name="screen")

    async def _on_shutdown(self, app: web.Application) -> None:
        # Long-lived streams would hold the server's shutdown for its whole timeout.
        self._stopped = True
        for client in list(self.clients):
            client.close()

    async def _on_cleanup(self, app: web.Application) -> None:
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def setup_routes(self, app: web.Application) -> None:
        app[SCREEN_KEY] = self
        app.router.add_get("/", self.index)
        app.router.add_static("/static/", STATIC_DIR, name="static")
        app.router.add_get("/api/v1/stream", self.stream)
        app.router.add_get("/api/v1/approvals", self.approvals_route)
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        app.on_cleanup.append(self._on_cleanup)


SCREEN_KEY = web.AppKey("screen", Screen)


class ApprovalsQuery(Query):
    pending: QueryBool = False


class StreamQuery(Query):
    pass


def setup_routes(app: web.Application) -> None:
    """Add the guard's screen to the local API app (a ``make_app`` setup)."""
    screen = Screen(app[SITE_KEY])
    app[SITE_KEY].subscribe(screen.on_events)
    screen.setup_routes(app)


__all__ = ["Client", "Screen", "SCREEN_KEY", "setup_routes", "labels", "describe_zh"]
