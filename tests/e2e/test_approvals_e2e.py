"""Approvals through the daemon: manual lifts only under a signed customs approval (R10),
remote release (R17), emergency vehicles (R11). Real simulators, real local API."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastsite import BONDED, fast_site

from gatectl.api import start_api
from gatectl.approvals import public_key_b64, sign
from gatectl.config import load_config
from gatectl.service import Site
from simulators.site import LaneSpec, free_tcp_port

from .conftest import wait_until

TZ = ZoneInfo("Asia/Shanghai")
CUSTOMS = Ed25519PrivateKey.generate()
PARK = Ed25519PrivateKey.generate()
STRANGER = Ed25519PrivateKey.generate()
NON_BONDED = LaneSpec("N1-OUT", "非保税出区", "non_bonded", "out", "K003", exit_loop=False)
TOKEN = {"Authorization": "Bearer demo-token"}


def approval(lane: str = "B1-IN", trigger: str = "panel", max_lifts: int = 1, start: float = -60, end: float = 3600,
             **extra) -> dict:
    now = datetime.now(TZ)
    doc = {
        "approval_id": extra.pop("approval_id", f"AP-{trigger}-{lane}-{max_lifts}-{int(start)}"),
        "lane_id": lane,
        "trigger": trigger,
        "reason": "equipment_fault",
        "detail": "地磅通讯中断",
        "requested_by": {"org": "某某物流有限公司", "name": "张三"},
        "verified_by": {"org": "运维单位", "name": "李四"},
        "approved_by": {"org": "昆明海关", "name": "王五"},
        "countersigned_by": None,
        "plate": None,
        "valid_from": (now + timedelta(seconds=start)).isoformat(),
        "valid_until": (now + timedelta(seconds=end)).isoformat(),
        "max_lifts": max_lifts,
        "signatures": [],
    }
    doc.update(extra)
    return doc


class Daemon:
    """The daemon's lane services and API in this process; restartable on the same journal."""

    def __init__(self, config_path: Path) -> None:
        self.config = load_config(config_path)
        self.api = f"http://{self.config.local_api.listen}"
        self.site: Site | None = None

    async def start(self) -> None:
        self.site = Site(self.config)
        self.runner = await start_api(self.site)
        self.stop_event = asyncio.Event()
        self.task = asyncio.create_task(self.site.run(self.stop_event))
        await wait_until(lambda: self.site.running)

    async def stop(self) -> None:
        self.stop_event.set()
        await self.task
        await self.runner.cleanup()

    async def post(self, path: str, body, headers=TOKEN) -> tuple[int, dict]:
        data = body if isinstance(body, (bytes, str)) else json.dumps(body, ensure_ascii=False)
        async with aiohttp.ClientSession() as s, s.post(self.api + path, data=data, headers=headers) as r:
            return r.status, await r.json()

    def events(self, lane: str, type_: str) -> list[dict]:
        assert self.site is not None
        return [e for e in self.site.journal.events(lane) if e["type"] == type_]


@pytest.fixture
async def site(tmp_path: Path):
    sim = fast_site(tmp_path, [BONDED, NON_BONDED])
    await sim.start()
    path = sim.write_config(
        tmp_path / "site.yaml",
        journal_path=str(tmp_path / "gatectl.db"),
        api_listen=f"127.0.0.1:{free_tcp_port()}",
        trust={"customs": [public_key_b64(CUSTOMS)], "park": [public_key_b64(PARK)]},
    )
    daemon = Daemon(path)
    await daemon.start()
    try:
        yield sim, daemon
    finally:
        if not daemon.task.done():
            await daemon.stop()
        await sim.stop()


async def drive_through(lane, exit_loop: bool = True) -> None:
    steps = [("safety", True), ("arrival", False), ("exit", True), ("safety", False), ("exit", False)]
    for loop, on in steps:
        if loop == "exit" and not exit_loop:
            continue
        lane.set_loop(loop, on)
        await asyncio.sleep(0.15)


async def test_refused_approvals_lift_nothing_each_with_its_reason(site) -> None:
    """R10: unsigned, unknown key, changed after signing, expired, not yet valid, wrong
    lane, missing park signature or countersignature on non_bonded, and POSTs without or
    with a wrong token: each refused with its reason, nothing lifts, refusals journaled."""
    sim, daemon = site
    tampered = sign(approval(approval_id="AP-T"), "customs", CUSTOMS)
    tampered["max_lifts"] = 5
    cases = {
        "unsigned": approval(approval_id="AP-U"),
        "unknown_key": sign(approval(approval_id="AP-K"), "customs", STRANGER),
        "bad_signature": tampered,
        "expired": sign(approval(approval_id="AP-E", start=-7200, end=-3600), "customs", CUSTOMS),
        "not_yet_valid": sign(approval(approval_id="AP-N", start=3600, end=7200), "customs", CUSTOMS),
        "unknown_lane": sign(approval(lane="X9-IN", approval_id="AP-L"), "customs", CUSTOMS),
        "missing_countersignature": sign(
            sign(approval(lane="N1-OUT", approval_id="AP-C"), "customs", CUSTOMS), "park", PARK),
        "missing_park_signature": sign(
            approval(lane="N1-OUT", approval_id="AP-P", countersigned_by={"org": "园区管理方", "name": "赵六"}),
            "customs", CUSTOMS),
    }
    for reason, doc in cases.items():
        status, body = await daemon.post("/api/v1/approvals", doc)
        assert status == 422 and body["status"] == "refused" and body["reason"] == reason, (reason, body)
    good = sign(approval(approval_id="AP-G"), "customs", CUSTOMS)
    status, _ = await daemon.post("/api/v1/approvals", good, headers={})
    assert status == 401
    status, _ = await daemon.post("/api/v1/approvals", good, headers={"Authorization": "Bearer nope"})
    assert status == 403
    lane = sim.lane("B1-IN")
    await lane.press("manual_lift")
    await wait_until(lambda: daemon.events("B1-IN", "manual_lift.refused") != [])
    assert lane.opens == 0 and sim.lane("N1-OUT").opens == 0
    refused = daemon.events("B1-IN", "approval.refused")
    assert {e["reason"] for e in refused} >= {"unsigned", "unknown_key", "bad_signature", "expired", "not_yet_valid"}
    assert daemon.events("B1-IN", "approval.accepted") == []


async def test_panel_approval_lifts_exactly_once_across_a_restart(site) -> None:
    """R10, S1, S7: a valid panel approval (max_lifts 1) accepted, the daemon restarted, then
    the guard's button lifts once; a second press is refused as exhausted."""
    sim, daemon = site
    doc = sign(approval(approval_id="AP-20261127-0001"), "customs", CUSTOMS)
    status, body = await daemon.post("/api/v1/approvals", doc)
    assert status == 200 and body["status"] == "accepted", body
    await daemon.stop()
    await daemon.start()
    lane = sim.lane("B1-IN")
    lane.set_loop("arrival", True)
    await lane.press("manual_lift")
    await wait_until(lambda: lane.barrier.position == "up")
    await drive_through(lane)
    await wait_until(lambda: lane.barrier.position == "down")
    await lane.press("manual_lift")
    await wait_until(lambda: daemon.events("B1-IN", "manual_lift.refused") != [])
    assert lane.opens == 1
    assert daemon.events("B1-IN", "manual_lift.refused")[0]["reason"] == "approval_exhausted"
    closed = daemon.events("B1-IN", "passage.closed")
    assert [c["outcome"] for c in closed] == ["manual"]
    assert closed[0]["authorisation"] == {"kind": "approval", "id": "AP-20261127-0001#1", "approval_id": "AP-20261127-0001"}
    # A repeated POST of the same approval after its use is refused as exhausted.
    status, body = await daemon.post("/api/v1/approvals", doc)
    assert status == 422 and body["reason"] == "exhausted"


async def test_remote_approval_lifts_once_and_non_bonded_needs_both_signatures(site) -> None:
    """R17: a remote approval lifts once on acceptance; on a non_bonded lane it needs the
    park countersignature and signature too (R10)."""
    sim, daemon = site
    doc = approval(lane="N1-OUT", trigger="remote", max_lifts=1, approval_id="AP-R1",
                   countersigned_by={"org": "园区管理方", "name": "赵六"})
    doc = sign(sign(doc, "customs", CUSTOMS), "park", PARK)
    lane = sim.lane("N1-OUT")
    lane.set_loop("arrival", True)
    status, body = await daemon.post("/api/v1/approvals", doc)
    assert status == 200, body
    await wait_until(lambda: lane.barrier.position == "up")
    await drive_through(lane, exit_loop=False)
    await wait_until(lambda: lane.barrier.position == "down")
    await asyncio.sleep(0.5)
    assert lane.opens == 1
    assert [c["outcome"] for c in daemon.events("N1-OUT", "passage.closed")] == ["manual"]


async def test_cli_approval_add_reaches_the_running_daemon(site, tmp_path: Path) -> None:
    """R10: `gatectl approval add` checks the file and hands it to the running daemon."""
    sim, daemon = site
    key = tmp_path / "customs.key"
    assert subprocess.run([sys.executable, "-m", "gatectl", "keys", "new", "--out", str(key)],
                          capture_output=True, text=True).returncode == 0
    file = tmp_path / "ap.json"
    file.write_text(json.dumps(approval(approval_id="AP-CLI"), ensure_ascii=False), encoding="utf-8")
    signed = subprocess.run(
        [sys.executable, "-m", "gatectl", "approval", "sign", "--key", str(key), "--role", "customs", str(file)],
        capture_output=True, text=True)
    assert signed.returncode == 0, signed.stderr
    # That key is not in trust: refused at once, with the reason.
    cfg = tmp_path / "site.yaml"
    out = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "gatectl", "approval", "add", "--config", str(cfg), str(file)],
        capture_output=True, text=True)
    assert out.returncode == 1 and "unknown_key" in out.stderr, out.stderr
    file.write_text(json.dumps(sign(approval(approval_id="AP-CLI2"), "customs", CUSTOMS), ensure_ascii=False),
                    encoding="utf-8")
    out = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "gatectl", "approval", "add", "--config", str(cfg), str(file)],
        capture_output=True, text=True)
    assert out.returncode == 0 and "accepted: AP-CLI2" in out.stdout, (out.stdout, out.stderr)
    assert [e["approval_id"] for e in daemon.events("B1-IN", "approval.accepted")] == ["AP-CLI2"]


async def test_emergency_release_then_the_guards_account(site) -> None:
    """R11: the emergency button lifts with no approval and alarms; the guard's account of
    it (vehicle type, plate) is added afterwards through the API."""
    sim, daemon = site
    lane = sim.lane("B1-IN")
    lane.set_loop("arrival", True)
    await lane.press("emergency")
    await wait_until(lambda: lane.barrier.position == "up")
    await drive_through(lane)
    await wait_until(lambda: daemon.events("B1-IN", "passage.closed") != [])
    closed = daemon.events("B1-IN", "passage.closed")[0]
    assert closed["outcome"] == "emergency"
    assert [a["alarm"] for a in daemon.events("B1-IN", "alarm.raised")] == ["emergency_release"]
    body = {"passage_id": closed["passage_id"], "vehicle_type": "消防车", "plate": "云A119XF", "by": "王保安"}
    status, result = await daemon.post("/api/v1/lanes/B1-IN/emergency-accounts", body)
    assert status == 200, result
    account = daemon.events("B1-IN", "emergency.account")
    assert account[0]["vehicle_type"] == "消防车" and account[0]["passage_id"] == closed["passage_id"]
    status, result = await daemon.post("/api/v1/lanes/B1-IN/emergency-accounts", {**body, "passage_id": "nope"})
    assert status == 422 and result["reason"] == "unknown_passage"
