"""The screen's server side without a browser: the page and its files, the event stream
(state first, lane views on change, each journaled event, heartbeats, bounded queues,
clean up on disconnect and on shutdown), pending approvals, emergency accounts owed."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import timedelta

import aiohttp
import pytest

from gatectl.api import SITE_KEY, make_app
from gatectl.journal import Entry
from gatectl.lane.commands import CommitAuthorisation
from gatectl.screen import SCREEN_KEY, STATIC_DIR, Client, Screen, setup_routes

from .conftest import AUTH, ScreenSite, wait_until
from journaling import write


class Stream:
    """An SSE client reading one event (or comment) at a time."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp

    async def next(self, timeout: float = 10.0) -> tuple[str, object]:
        """The next event as (name, data), or ("comment", text)."""
        event, data = None, []
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.resp.content.readline()
                if not raw:
                    raise EOFError("stream ended")
                line = raw.decode().rstrip("\n")
                if line == "":
                    if event is not None or data:
                        return event or "message", json.loads("\n".join(data))
                    continue
                if line.startswith(":"):
                    return "comment", line[1:].strip()
                field, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if field == "event":
                    event = value
                elif field == "data":
                    data.append(value)

    async def until(self, name: str, predicate=lambda d: True, timeout: float = 15.0):
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            got, data = await self.next(timeout=max(end - loop.time(), 0.01))
            if got == name and predicate(data):
                return data


async def open_stream(session: aiohttp.ClientSession, url: str) -> Stream:
    resp = await session.get(url + "/api/v1/stream")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    return Stream(resp)


async def test_page_and_files_are_served_locally(screen_site: ScreenSite) -> None:
    """CONTRACT 6: GET / is the guard's screen; everything it needs comes from the lane PC."""
    async with aiohttp.ClientSession() as s:
        async with s.get(screen_site.url + "/") as r:
            assert r.status == 200 and r.content_type == "text/html"
            html = await r.text()
            assert "default-src 'self'" in r.headers["Content-Security-Policy"]
        assert 'lang="zh-CN"' in html and "/static/screen.js" in html and "/static/screen.css" in html
        for name in ("screen.js", "screen.css"):
            async with s.get(f"{screen_site.url}/static/{name}") as r:
                assert r.status == 200
    for path in STATIC_DIR.iterdir():
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), f"{path.name} refers outside"
        assert "innerHTML" not in text, f"{path.name}: daemon text goes in as textContent only"


async def test_stream_sends_state_then_lane_changes_and_journaled_events(screen_site: ScreenSite) -> None:
    """R12: the screen first gets everything, then each change, pushed."""
    r = screen_site
    # Devices report their health once they have opened: let that settle first.
    await wait_until(lambda: all(d["health"] == "ok" for v in r.screen.lanes() for d in v["devices"]))
    async with aiohttp.ClientSession() as s:
        stream = await open_stream(s, r.url)
        name, state = await stream.next()
        assert name == "state"
        assert [lane["lane_id"] for lane in state["lanes"]] == ["B1-IN", "N1-OUT"]
        b1 = state["lanes"][0]
        assert b1["state"] == "idle" and b1["barrier"] == "down" and b1["vehicle_present"] is False
        assert {d["name"] for d in b1["devices"]} == {"card_reader", "weighbridge", "io1"}
        assert state["labels"]["state"]["idle"] == "空闲" and state["labels"]["alarm"]["forced_passage"] == "闯卡"
        assert state["token_configured"] is True and state["site"]["id"]
        assert state["passages"] == [] and state["emergency_owed"] == [] and state["approvals"] == []

        status, _ = await r.post("/api/v1/lanes/B1-IN/spot-checks", {"hold_next": 2})
        assert status == 200
        batch = await stream.until("journal", lambda d: any(e["type"] == "spot_check.ordered" for e in d))
        ev = next(e for e in batch if e["type"] == "spot_check.ordered")
        assert ev["lane_id"] == "B1-IN" and ev["zh"] and ev["event_id"]
        lanes = await stream.until("lanes", lambda d: any(v["spot_checks"]["hold_next"] == 2 for v in d["lanes"]))
        assert [v["lane_id"] for v in lanes["lanes"]] == ["B1-IN"]  # only what changed

        lane = r.sim.lane("B1-IN")
        lane.set_loop("arrival", True)
        await stream.until("lanes", lambda d: any(v["vehicle_present"] and v["state"] == "present" for v in d["lanes"]))
        await stream.until("passages", lambda d: d["passages"] and d["passages"][0]["closed_at"] is None)
        stream.resp.close()


@pytest.mark.parametrize("screen_options", [{"heartbeat_s": 0.2}])
async def test_heartbeats_and_a_gone_browser_is_forgotten(screen_site: ScreenSite) -> None:
    r = screen_site
    async with aiohttp.ClientSession() as s:
        stream = await open_stream(s, r.url)
        assert (await stream.next())[0] == "state"
        assert await stream.next() == ("comment", "heartbeat")
        assert len(r.screen.clients) == 1
        stream.resp.close()
    await wait_until(lambda: not r.screen.clients)


async def test_a_client_that_falls_behind_gets_one_fresh_state_instead(screen_site: ScreenSite) -> None:
    """A stuck browser cannot grow memory: its queue is bounded, then replaced by a state."""
    client = Client(max_items=3, max_bytes=1000)
    client.resync = False
    for i in range(3):
        client.push(b"x" * 10)
    assert len(client.items) == 3 and client.bytes == 30 and not client.resync
    client.push(b"y")
    assert (len(client.items), client.bytes, client.resync, client.overflows) == (0, 0, True, 1)
    client.push(b"z")  # while a state is due, nothing queues
    assert len(client.items) == 0
    by_bytes = Client(max_items=100, max_bytes=50)
    by_bytes.resync = False
    by_bytes.push(b"a" * 40)
    by_bytes.push(b"b" * 20)
    assert by_bytes.resync and by_bytes.bytes == 0

    r = screen_site
    async with aiohttp.ClientSession() as s:
        stream = await open_stream(s, r.url)
        assert (await stream.next())[0] == "state"
        await wait_until(lambda: len(r.screen.clients) == 1)
        (live,) = r.screen.clients
        for _ in range(live.max_items + 1):  # more than it may hold, before it reads any
            live.push(b"event: lanes\ndata: {}\n\n")
        assert live.resync and not live.items
        assert (await stream.next())[0] == "state"
        stream.resp.close()


async def test_shutdown_ends_open_streams(screen_site: ScreenSite) -> None:
    """An open stream does not hold the daemon's stop for the server's 60 s shutdown timeout."""
    r = screen_site
    async with aiohttp.ClientSession() as s:
        stream = await open_stream(s, r.url)
        assert (await stream.next())[0] == "state"
        async with asyncio.timeout(15):
            await r.runner.cleanup()
        with pytest.raises((EOFError, aiohttp.ClientError)):
            while True:
                await stream.next(timeout=5)
    assert not r.screen.clients


def store(site, approval_id: str, start: timedelta, end: timedelta, max_lifts: int = 1) -> None:
    now = site.now()
    doc = {"approval_id": approval_id, "lane_id": "B1-IN", "trigger": "panel", "reason": "equipment_fault",
           "detail": "地磅通讯中断", "approved_by": {"org": "昆明海关", "name": "王五"}, "plate": "云A12345"}
    site.journal.store_approval(approval_id, "B1-IN", "panel", max_lifts, now + start, now + end,
                                json.dumps(doc, ensure_ascii=False), now).result()


async def test_pending_approvals_are_those_in_their_window_with_lifts_left(screen_site: ScreenSite) -> None:
    """R10, R17: GET /api/v1/approvals?pending=1."""
    r = screen_site
    hour = timedelta(hours=1)
    store(r.site, "AP-OPEN", -hour, hour, max_lifts=2)
    store(r.site, "AP-USED", -hour, hour)
    store(r.site, "AP-EXPIRED", -2 * hour, -hour)
    store(r.site, "AP-LATER", hour, 2 * hour)
    now = r.site.now()
    for approval_id, max_lifts in (("AP-USED", 1), ("AP-OPEN", 2)):
        write(r.site.journal, "B1-IN", [Entry.of("approval.used", now, {
            "approval_id": approval_id, "use": 1, "max_lifts": max_lifts, "trigger": "panel"})],
            authorisation=CommitAuthorisation("approval", f"{approval_id}#1", None, now))
    status, body = await r.get("/api/v1/approvals?pending=1")
    assert status == 200
    (pending,) = body["approvals"]
    assert (pending["approval_id"], pending["lifts_used"], pending["lifts_left"], pending["status"]) == ("AP-OPEN", 1, 1, "pending")
    assert pending["detail"] == "地磅通讯中断" and pending["approved_by"]["name"] == "王五" and "signatures" not in pending
    status, body = await r.get("/api/v1/approvals")
    assert {a["approval_id"]: a["status"] for a in body["approvals"]} == {
        "AP-OPEN": "pending", "AP-USED": "used_up", "AP-EXPIRED": "expired", "AP-LATER": "not_yet_valid",
    }
    # POST on the same path is still the API's own (accept an approval), token and all.
    async with aiohttp.ClientSession() as s, s.post(r.url + "/api/v1/approvals", data=b"{}") as resp:
        assert resp.status == 401


async def test_emergency_release_is_owed_an_account_until_one_is_given(screen_site: ScreenSite) -> None:
    """R11: the screen lists emergency releases without an account, and drops them once given."""
    r = screen_site
    lane = r.sim.lane("B1-IN")
    async with aiohttp.ClientSession() as s:
        stream = await open_stream(s, r.url)
        assert (await stream.next())[0] == "state"
        await lane.press("emergency")
        await wait_until(lambda: lane.barrier.position == "up")
        for loop, on in [("safety", True), ("exit", True), ("safety", False), ("exit", False)]:
            lane.set_loop(loop, on)
            await asyncio.sleep(r.sim.min_dwell_s)
        owed = await stream.until("passages", lambda d: d["emergency_owed"])
        (p,) = owed["emergency_owed"]
        assert p["lane_id"] == "B1-IN" and p["outcome"] == "emergency" and p["account_owed"]
        assert owed["passages"][0]["passage_id"] == p["passage_id"] and owed["passages"][0]["account_owed"]
        status, body = await r.post("/api/v1/lanes/B1-IN/emergency-accounts", {
            "passage_id": p["passage_id"], "vehicle_type": "救护车", "plate": "云A120JJ", "note": "", "by": "张丽"})
        assert status == 200, body
        done = await stream.until("passages", lambda d: not d["emergency_owed"])
        assert not done["passages"][0]["account_owed"]
        stream.resp.close()


async def test_make_app_setup_wires_the_screen_and_subscribes_it(screen_site: ScreenSite) -> None:
    """The wiring the daemon uses: make_app(site, gatectl.screen.setup_routes)."""
    app = make_app(screen_site.site, setup_routes)
    screen = app[SCREEN_KEY]
    assert isinstance(screen, Screen) and screen.site is app[SITE_KEY]
    paths = {(route.method, route.resource.canonical) for route in app.router.routes()}
    assert {("GET", "/"), ("GET", "/api/v1/stream"), ("GET", "/api/v1/approvals"), ("POST", "/api/v1/approvals")} <= paths
    screen._lanes_dirty = False
    status, _ = await screen_site.post("/api/v1/lanes/B1-IN/spot-checks", {"hold_next": 1})
    assert status == 200
    await wait_until(lambda: screen._lanes_dirty)  # it heard the journaled spot_check.ordered
