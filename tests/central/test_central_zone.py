"""The zone's own alarms, users and roles, relays to lane PCs, the zone ledger and the
zone's screen, through real lane PCs, Mosquitto and PostgreSQL (R8, R10, R12, R14, R17)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import aiomqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from openpyxl import load_workbook

from gatectl.approvals import public_key_b64, sign
from gatectl.central.ledger import ZONE_PARTS
from gatectl.ledger import PASSAGE_COLUMNS
from simulators.site import FLEET

from .conftest import wait_for

pytestmark = pytest.mark.timeout(240)
TZ = ZoneInfo("Asia/Shanghai")
CUSTOMS = Ed25519PrivateKey.generate()
CHROMIUM = os.environ.get("GATECTL_CHROMIUM", "/usr/bin/chromium")


def approval(approval_id: str) -> dict:
    now = datetime.now(TZ)
    return sign({
        "approval_id": approval_id, "lane_id": "B1-IN", "trigger": "remote", "reason": "equipment_fault",
        "detail": "地磅通讯中断", "requested_by": {"org": "某某物流有限公司", "name": "张三"},
        "verified_by": {"org": "运维单位", "name": "李四"}, "approved_by": {"org": "昆明海关", "name": "王五"},
        "countersigned_by": None, "plate": None, "valid_from": (now - timedelta(minutes=1)).isoformat(),
        "valid_until": (now + timedelta(hours=1)).isoformat(), "max_lifts": 1, "signatures": [],
    }, "customs", CUSTOMS)


async def test_zone_alarms_roles_relays_ledger_and_screen(zone, central_in_process, tmp_path):
    """R12: card_on_two_lanes (one card in passages of two sites at once),
    instruction_replay (one release instruction lifting on two sites), site_offline (a lane
    PC's status goes offline): stored, listed, published on gatectl-zone/kmzb/alarms.
    Roles: 401 without or with an unknown token, 403 for the wrong role. Relays: a signed
    approval relayed to its lane PC lifts there (the lane judged it); a command is relayed
    only for customs. R14: the zone ledger has the lane ledger's columns plus the site."""
    a = await zone.lane_pc("site-a", start=False)
    b = await zone.lane_pc("site-b", start=False)
    key = public_key_b64(CUSTOMS.public_key())
    for pc in (a, b):
        text = pc.config_path.read_text(encoding="utf-8")
        pc.config_path.write_text(text.replace("\nauthorities:", f"\ntrust:\n  customs: [\"{key}\"]\n\nauthorities:"),
                                  encoding="utf-8")
        pc.start()
    await asyncio.gather(a.ready(), b.ready())
    central = await central_in_process(zone.zone_yaml())
    alarms_seen: list[dict] = []

    async def watch() -> None:
        async with aiomqtt.Client("127.0.0.1", zone.broker.port) as client:
            await client.subscribe("gatectl-zone/kmzb/alarms", qos=1)
            async for m in client.messages:
                alarms_seen.append(json.loads(m.payload))

    watcher = asyncio.create_task(watch())
    try:
        # One card at both sites at once; one release instruction given to both sites.
        shared = FLEET[0]
        for pc in (a, b):
            pc.sim.authority.script(shared.card, "release", instruction_id="CMD-SHARED-1")
        await asyncio.gather(a.drive("B1-IN", shared), b.drive("B1-IN", shared))
        await zone.complete()

        async def zone_alarms(kind: str):
            status, body = await central.get("/api/v1/alarms?open=true")
            return [x for x in body["alarms"] if x["alarm"] == kind and x["source"] == "zone"]

        card = (await wait_for(lambda: zone_alarms("card_on_two_lanes")))[0]
        assert card["card"] == shared.card and card["site_ids"] == ["site-a", "site-b"]
        replay = (await wait_for(lambda: zone_alarms("instruction_replay")))[0]
        assert replay["authorisation"] == {"kind": "release_instruction", "id": "CMD-SHARED-1"}

        # Roles.
        assert (await central.get("/api/v1/alarms", None))[0] == 401
        async with __import__("aiohttp").ClientSession() as s:
            async with s.get(central.base + "/api/v1/sites", headers={"Authorization": "Bearer nope"}) as r:
                assert r.status == 401
        assert (await central.get("/api/v1/health", None))[0] == 200
        assert (await central.get("/api/v1/ledger", "viewer"))[0] == 403
        assert (await central.get("/api/v1/ledger", "guard"))[0] == 403
        command = {"command": "spot-check", "command_id": "c1", "lane_id": "B1-IN",
                   "issued_at": datetime.now(TZ).isoformat(), "hold_next": 1,
                   "signatures": [{"role": "customs", "sig": "AAAA"}]}
        assert (await central.post("/api/v1/commands", {"site_id": "site-a", "command": command}, "park"))[0] == 403
        assert (await central.post("/api/v1/commands", {"site_id": "site-a", "command": command}, None))[0] == 401
        status, body = await central.post("/api/v1/commands", {"site_id": "site-a", "command": command}, "customs")
        assert status == 202 and body["by"] == "海关监控中心" and body["topic"] == "gatectl/site-a/cmd/spot-checks"
        unsigned = {**command, "signatures": []}
        assert (await central.post("/api/v1/commands", {"site_id": "site-a", "command": unsigned}, "customs"))[0] == 422
        assert (await central.post("/api/v1/commands", {"site_id": "nowhere", "command": command}, "customs"))[0] == 404

        # A signed approval relayed by a guard: the lane PC judges and lifts (remote, R17).
        doc = approval("AP-ZONE-1")
        opens = a.sim.lane("B1-IN").opens
        status, body = await central.post("/api/v1/approvals", {**doc, "site_id": "site-a"}, "guard")
        assert status == 202 and body["by"] == "王保安"
        await wait_for(lambda: _events(central, "site-a", "approval.accepted"))
        await wait_for(lambda: _async(a.sim.lane("B1-IN").opens > opens))
        tampered = {**approval("AP-ZONE-2"), "max_lifts": 5, "site_id": "site-b"}  # changed after signing
        assert (await central.post("/api/v1/approvals", tampered, "viewer"))[0] == 202
        refused = await wait_for(lambda: _events(central, "site-b", "approval.refused"))
        assert refused[0]["reason"] == "bad_signature"

        # site_offline: lane PC b stops (its status goes offline).
        b.stop()
        offline = (await wait_for(lambda: zone_alarms("site_offline")))[0]
        assert offline["site_ids"] == ["site-b"]
        status, body = await central.get("/api/v1/sites")
        assert {s["site_id"]: s["online"] for s in body["sites"]} == {"site-a": True, "site-b": False}
        await wait_for(lambda: _async({x["alarm"] for x in alarms_seen} >= {"card_on_two_lanes", "instruction_replay",
                                                                            "site_offline"}))

        # The zone ledger: the lane ledger's columns with the site in front, one row per passage.
        today = datetime.now(TZ).date().isoformat()
        status, data = await central.get(f"/api/v1/ledger?from={today}&to={today}&format=csv", "park")
        assert status == 200
        rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))
        assert rows[0] == ["站点", *(c.header for c in PASSAGE_COLUMNS)]
        ids = {r[-1]: r[0] for r in rows[1:]}
        expected = {pid: "site-a" for pid in a.journal_passages()} | {pid: "site-b" for pid in b.journal_passages()}
        assert ids == expected
        status, data = await central.get(f"/api/v1/ledger?from={today}&to={today}&format=xlsx", "customs")
        book = load_workbook(io.BytesIO(data), read_only=True)
        assert [p.name for p in ZONE_PARTS if p.name in book.sheetnames] == [p.name for p in ZONE_PARTS]
        out = tmp_path / "zone.xlsx"
        from gatectl.cli import main

        assert await asyncio.to_thread(main, ["central", "ledger", "export", "--config",
                                              str(zone.tmp / "zone-central-1.yaml"), "--from", today, "--to",
                                              today, "--out", str(out)]) == 0
        assert out.exists()

        # The zone's screen, in headless Chromium: lanes of both sites, the open zone alarms.
        await _screen(central, tmp_path)
    finally:
        watcher.cancel()


async def _async(value):
    return value


async def _events(central, site: str, type_: str) -> list[dict]:
    status, body = await central.get(f"/api/v1/events?site={site}&type={type_}")
    return body["events"]


async def _screen(central, tmp_path) -> None:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 800})
            await page.goto(central.base + "/#token=tok-viewer")
            await page.wait_for_selector("[data-lane='site-a/B1-IN']", timeout=15000)
            await page.wait_for_selector("[data-lane='site-b/B1-IN']", timeout=15000)
            await page.wait_for_selector("[data-alarm='card_on_two_lanes']", timeout=15000)
            text = await page.inner_text("body")
            assert "一卡多站同时通行" in text and "站点离线" in text and "离线" in text
            shot = os.environ.get("GATECTL_ZONE_SCREENSHOT")
            await page.screenshot(path=shot or str(tmp_path / "zone.png"), full_page=True)
            await page.goto(central.base + "/")
            await page.evaluate("localStorage.clear()")
            bad = await browser.new_page()
            await bad.goto(central.base + "/#token=wrong")
            await bad.wait_for_selector("#login:not([hidden])", timeout=15000)
        finally:
            await browser.close()
