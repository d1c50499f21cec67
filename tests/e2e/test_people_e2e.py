"""The lane's people at work through the real daemon and real HTTP (CONTRACT 8): a plate
camera posting plates, customs closing and opening a lane, park management running a
drill. The daemon is built as ``gatectl run`` builds it (``gatectl.daemon.assemble``) on
the simulated site, with a user of each role; the cameras are the simulator's
(``simulators.plate_camera``), reading every plate right here so that outcomes are exact.

Lanes: ``B1-IN`` (bonded, ``http-json`` authority, camera), ``E1-IN`` (9610, ``gather-xml``
authority, camera), ``N1-IN`` (non-bonded, no camera).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastsite import fast_site

from gatectl.api import start_api
from gatectl.approvals import public_key_b64
from gatectl.config import load_config
from gatectl.daemon import assemble
from gatectl.service import Site
from signed import signed
from simulators.authority_gather import GatherAuthoritySimulator
from simulators.site import LaneSpec, SimulatedSite, Vehicle, free_tcp_port

from .conftest import wait_until

TZ = ZoneInfo("Asia/Shanghai")
B1 = LaneSpec("B1-IN", "保税货物进区1号", "bonded", "in", "K001", plate_camera=True)
E1 = LaneSpec("E1-IN", "跨境电商9610进区", "ecommerce_9610", "in", "K002", plate_camera=True)
N1 = LaneSpec("N1-IN", "非保税进区", "non_bonded", "in", "K003", exit_loop=False)
TRUCK = Vehicle("0100E2850E", "云A12345", 31250)
OTHER = Vehicle("06008E6D5D", "云A7K208", 18800)
CUSTOMS_KEY = Ed25519PrivateKey.generate()
FULL = "demo-token"
USERS = {
    "guard": ("王保安", "guard-token"),
    "customs": ("海关查验科", "customs-token"),
    "park": ("园区管理办", "park-token"),
    "camera": ("识别相机", "camera-token"),
}


@dataclass
class Daemon:
    sim: SimulatedSite
    site: Site
    gather: GatherAuthoritySimulator
    api: str
    config_path: Path
    stop_site: Any = None

    async def call(self, method: str, path: str, body: Any = None, role: str | None = None,
                   token: str | None = None) -> tuple[int, Any]:
        token = USERS[role][1] if role is not None else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = None if body is None else json.dumps(body, ensure_ascii=False).encode()
        if data is not None:
            headers["Content-Type"] = "application/json"
        async with aiohttp.ClientSession() as s, s.request(method, self.api + path, data=data, headers=headers) as r:
            text = await r.text()
            with contextlib.suppress(ValueError):
                return r.status, json.loads(text)
            return r.status, text

    def events(self, lane: str, type_: str | None = None) -> list[dict]:
        return [e for e in self.site.journal.events(lane) if type_ is None or e["type"] == type_]

    async def lane(self, lane_id: str) -> dict:
        status, body = await self.call("GET", "/api/v1/lanes")
        assert status == 200
        return next(v for v in body["lanes"] if v["lane_id"] == lane_id)

    async def metric(self, name: str, **labels: str) -> float:
        status, text = await self.call("GET", "/metrics")
        assert status == 200
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            if line.startswith(f"{name}{{{want}}} "):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"{name}{{{want}}} not in /metrics")

    def refused(self, surface: str, reason: str) -> int:
        return self.site.orders.refusals.counts[(surface, reason)]


@pytest.fixture
async def d(tmp_path: Path) -> AsyncIterator[Daemon]:
    sim = fast_site(tmp_path, [B1, E1, N1], camera_miss_rate=0.0, camera_misread_rate=0.0)
    await sim.start()
    gather = GatherAuthoritySimulator()
    await gather.start()
    port = free_tcp_port()
    path = sim.write_config(tmp_path / "site.yaml", journal_path=str(tmp_path / "gatectl.db"),
                            api_listen=f"127.0.0.1:{port}", token=FULL, users=USERS,
                            trust={"customs": [public_key_b64(CUSTOMS_KEY)]})
    text = path.read_text(encoding="utf-8")
    text = text.replace("authorities:\n", "authorities:\n  logistics:\n    protocol: gather-xml\n"
                        f"    host: 127.0.0.1\n    port: {gather.port}\n    area_id: \"5301000001\"\n"
                        "    timeout_ms: 1000\n    release_codes: [\"^00\"]\n", 1)
    lane_e1 = text.index('  - id: "E1-IN"')
    text = text[:lane_e1] + text[lane_e1:].replace("    authority: customs\n", "    authority: logistics\n", 1)
    path.write_text(text, encoding="utf-8")
    site, setups = assemble(load_config(path))
    runner = await start_api(site, *setups)
    stop = asyncio.Event()
    task = asyncio.create_task(site.run(stop))
    try:
        await wait_until(lambda: site.running)
        async def stop_site() -> None:
            stop.set()
            await asyncio.gather(task, return_exceptions=True)

        yield Daemon(sim, site, gather, f"http://127.0.0.1:{port}", path, stop_site)
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
        await runner.cleanup()
        await gather.stop()
        await sim.stop()


async def drive_watching(d: Daemon, lane_id: str, vehicle: Vehicle, **kw: Any) -> tuple[str, list[dict]]:
    """Drive ``vehicle`` through ``lane_id`` while reading ``GET /api/v1/lanes`` as the
    guard's screen does; the outcome and every passage the lane showed meanwhile."""
    seen: list[dict] = []
    trip = asyncio.create_task(d.sim.lane(lane_id).drive(vehicle, **kw))
    while not trip.done():
        passage = (await d.lane(lane_id))["passage"]
        if passage is not None:
            seen.append(passage)
        await asyncio.sleep(0.05)
    return await trip, seen


async def test_r3_contract8_the_cameras_plate_goes_to_both_authorities_the_passage_and_its_close(d) -> None:
    """R3 with plates (CONTRACT 8): the camera's read of a lorry on the arrival loop goes in
    the pass request (``plate`` in http-json, ``VE_NAME`` in GATHER_INFO), shows in the
    lane's passage, and is journaled (``plate.read`` with its confidence, the passage's
    ``passage.closed``), posted with the camera's own token. A guard's token on the plates
    route is 403; a lane without a camera answers 409 with the reason; junk plates are
    422; every refusal counted in ``gatectl_input_refused_total``, none journaled."""
    d.sim.authority.script(TRUCK.card, "release")
    outcome, seen = await drive_watching(d, "B1-IN", TRUCK)
    assert outcome == "passed"
    await wait_until(lambda: len(d.events("B1-IN", "passage.closed")) == 1)
    assert d.sim.authority.requests[-1]["plate"] == TRUCK.plate
    assert TRUCK.plate in {p["plate"] for p in seen}
    assert {p["lane_kind"] for p in seen} == {"bonded"}
    read = d.events("B1-IN", "plate.read")
    assert [r["plate"] for r in read] == [TRUCK.plate] and 0.88 <= read[0]["confidence"] <= 1.0
    assert d.events("B1-IN", "passage.closed")[0]["plate"] == TRUCK.plate
    camera = d.sim.lane("B1-IN").camera
    assert camera is not None and [(s.plate, s.status) for s in camera.reads] == [(TRUCK.plate, 200)]

    d.gather.script(OTHER.card, "release")
    assert await d.sim.lane("E1-IN").drive(OTHER) == "passed"
    await wait_until(lambda: len(d.events("E1-IN", "passage.closed")) == 1)
    assert d.gather.requests[-1]["ve_name"] == OTHER.plate
    assert d.events("E1-IN", "passage.closed")[0]["plate"] == OTHER.plate

    # Both lanes at rest (boom down, idle) before counting what the journal holds.
    for lane_id in ("B1-IN", "E1-IN"):
        await wait_until(lambda lane_id=lane_id: d.sim.lane(lane_id).barrier.position == "down"
                         and d.site.lanes[lane_id].view["state"] == "idle")
    await asyncio.sleep(0.3)
    before = len(d.site.journal.events())
    plate = {"plate": "云A00001", "confidence": 0.9, "captured_at": datetime.now(TZ).isoformat()}
    status, answer = await d.call("POST", "/api/v1/lanes/B1-IN/plates", plate, role="guard")
    assert status == 403 and answer["reason"] == "forbidden", answer
    status, answer = await d.call("POST", "/api/v1/lanes/N1-IN/plates", plate, role="camera")
    assert status == 409 and answer["reason"] == "no_plate_camera" and "plate_camera" in answer["error"], answer
    junk = [{"plate": ""}, {"plate": "云A12345", "confidence": 1.5}, {"plate": "云A12345", "lane": "x"},
            {"plate": "云A12345", "captured_at": (datetime.now(TZ) - timedelta(days=2)).isoformat()},
            {"plate": "   "}, {"plate": "X" * 17}]
    for body in junk:
        status, answer = await d.call("POST", "/api/v1/lanes/B1-IN/plates", body, role="camera")
        assert status == 422 and answer["reason"] == "invalid", (body, answer)
    # Read with no vehicle on the lane: taken, but nothing to journal.
    status, answer = await d.call("POST", "/api/v1/lanes/B1-IN/plates", plate, role="camera")
    assert status == 200 and answer == {"status": "accepted", "lane_id": "B1-IN", "plate": "云A00001",
                                        "passage_id": None}, answer
    assert len(d.site.journal.events()) == before
    assert d.refused("api", "no_plate_camera") == 1 and d.refused("api", "invalid") == len(junk)
    assert await d.metric("gatectl_input_refused_total", surface="api", reason="no_plate_camera") == 1
    assert await d.metric("gatectl_input_refused_total", surface="api", reason="invalid") == len(junk)


async def test_r2_customs_close_a_lane_by_api_a_lorry_is_held_then_the_order_is_cleared(d) -> None:
    """R2 (CONTRACT 8): customs close the lane by the local API with their own token; the
    lane shows ``open: false`` and the order with its ``by`` (the token's user), a released
    lorry is held ``closed_hours`` without asking the authority, and ``{"clear": true}``
    opens it again. ``hours.ordered`` is journaled with the user's name as ``by``. A guard
    may not order hours (403), nor a customs token in another's name (403), nor an order
    that ends in the past (422)."""
    d.sim.authority.script(TRUCK.card, "release")
    view = await d.lane("B1-IN")
    assert view["open"] is True and view["hours_order"] is None
    close = {"open": False, "until": None, "reason": "根据海关要求暂停作业"}
    assert (await d.call("POST", "/api/v1/lanes/B1-IN/hours", close, role="guard"))[0] == 403
    status, answer = await d.call("POST", "/api/v1/lanes/B1-IN/hours", {**close, "by": "李四"}, role="customs")
    assert status == 403 and answer["reason"] == "actor_mismatch", answer
    past = {**close, "until": (datetime.now(TZ) - timedelta(minutes=1)).isoformat()}
    status, answer = await d.call("POST", "/api/v1/lanes/B1-IN/hours", past, role="customs")
    assert status == 422 and answer["reason"] == "invalid" and "passed" in answer["error"], answer
    assert d.events("B1-IN", "hours.ordered") == []

    status, answer = await d.call("POST", "/api/v1/lanes/B1-IN/hours", close, role="customs")
    assert status == 200, answer
    order = {"open": False, "until": None, "reason": "根据海关要求暂停作业", "by": "海关查验科"}
    assert answer == {"lane_id": "B1-IN", "open": False, "hours_order": order}
    view = await d.lane("B1-IN")
    assert view["open"] is False and view["hours_order"] == order
    assert (await d.lane("N1-IN"))["open"] is True  # another lane: its own hours
    ordered = d.events("B1-IN", "hours.ordered")
    assert [(o["open"], o["by"], o["source"]) for o in ordered] == [(False, "海关查验科", "local_api")]

    asked = len(d.sim.authority.requests)
    assert await d.sim.lane("B1-IN").drive(TRUCK, wait_for_lift_s=1.5) == "backed_out"
    await wait_until(lambda: len(d.events("B1-IN", "passage.closed")) == 1)
    assert [h["reason"] for h in d.events("B1-IN", "passage.held")] == ["closed_hours"]
    assert len(d.sim.authority.requests) == asked and d.sim.lane("B1-IN").opens == 0

    status, answer = await d.call("POST", "/api/v1/lanes/B1-IN/hours", {"clear": True}, role="customs")
    assert status == 200 and answer == {"lane_id": "B1-IN", "open": True, "hours_order": None}, answer
    assert [(o["clear"], o["by"]) for o in d.events("B1-IN", "hours.ordered")] == [(False, "海关查验科"),
                                                                                   (True, "海关查验科")]
    assert await d.sim.lane("B1-IN").drive(TRUCK) == "passed"
    await wait_until(lambda: len(d.events("B1-IN", "passage.closed")) == 2)
    assert [c["outcome"] for c in d.events("B1-IN", "passage.closed")] == ["held", "passed"]
    assert d.refused("api", "forbidden") == 1 and d.refused("api", "actor_mismatch") == 1


async def test_r2_signed_hours_over_the_api_once_in_the_officers_name(d) -> None:
    """R2 (CONTRACT 8): the customs-signed lane-hours body is taken by the same route
    from any user (the signature is the authority), once per ``command_id``; the order's
    ``by`` is the officer the signed body names."""
    command = signed("lane-hours", "B1-IN", CUSTOMS_KEY, open=False, reason="海关远程关闭", by="海关监控中心")
    status, answer = await d.call("POST", "/api/v1/lanes/B1-IN/hours", command, role="camera")
    assert status == 200 and answer["status"] == "accepted" and answer["open"] is False, answer
    assert answer["hours_order"]["by"] == "海关监控中心"
    status, answer = await d.call("POST", "/api/v1/lanes/B1-IN/hours", command, role="customs")
    assert status == 409 and answer["reason"] == "replayed", answer
    assert [(o["by"], o["source"]) for o in d.events("B1-IN", "hours.ordered")] == [("海关监控中心", "local_api")]


async def test_r12_a_drill_by_park_marks_what_happens_during_it_and_nothing_after(d) -> None:
    """R12 with drills (CONTRACT 8): park management start a drill on a lane with their
    token; the lane shows it (``drill``: by, note, since) and every event journaled until
    they end it carries ``"drill": true``, a lorry's passage included; after the end,
    nothing does. A guard may not start one (403); starting one during a drill is 409.
    After a restart the lane still shows who started the drill under way."""
    d.sim.authority.script(TRUCK.card, "release")
    start = {"start": True, "note": "消防应急处置演练"}
    assert (await d.call("POST", "/api/v1/lanes/B1-IN/drills", start, role="guard"))[0] == 403
    status, answer = await d.call("POST", "/api/v1/lanes/B1-IN/drills", start, role="park")
    assert status == 200, answer
    drill = answer["drill"]
    assert drill["by"] == "园区管理办" and drill["note"] == "消防应急处置演练"
    assert datetime.fromisoformat(drill["since"]).tzinfo is not None
    assert (await d.lane("B1-IN"))["drill"] == drill and (await d.lane("E1-IN"))["drill"] is None
    status, answer = await d.call("POST", "/api/v1/lanes/B1-IN/drills", start, role="park")
    assert status == 409 and answer["reason"] == "drill_state", answer

    assert await d.sim.lane("B1-IN").drive(TRUCK) == "passed"
    await wait_until(lambda: len(d.events("B1-IN", "passage.closed")) == 1)
    status, answer = await d.call("POST", "/api/v1/lanes/B1-IN/drills", {"start": False, "note": "演练结束"},
                                  role="park")
    assert status == 200 and answer["drill"] is None, answer
    assert await d.sim.lane("B1-IN").drive(TRUCK) == "passed"
    await wait_until(lambda: len(d.events("B1-IN", "passage.closed")) == 2)

    events = d.events("B1-IN")
    types = [e["type"] for e in events]
    begin, end = types.index("drill.started"), types.index("drill.ended")
    during, after = events[begin:end + 1], events[end + 1:]
    assert "passage.closed" in {e["type"] for e in during} and "passage.closed" in {e["type"] for e in after}
    assert all(e.get("drill") is True for e in during), [e["type"] for e in during if not e.get("drill")]
    assert not any("drill" in e for e in after)
    assert [(e["by"], e["note"]) for e in events if e["type"].startswith("drill.")] == [
        ("园区管理办", "消防应急处置演练"), ("园区管理办", "演练结束")]

    # A drill under way across a restart: its starter, note and start still shown.
    status, answer = await d.call("POST", "/api/v1/lanes/B1-IN/drills", start, role="park")
    assert status == 200
    shown = answer["drill"]
    await d.stop_site()
    again = Site(load_config(d.config_path))
    try:
        assert again.lanes["B1-IN"].snapshot()["drill"] == shown
    finally:
        again.journal.close()
