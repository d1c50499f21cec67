"""Inbound MQTT (CONTRACT 4 and 5): signed approvals on ``cmd/approvals`` (R10, R17) and
customs spot checks on ``cmd/spot-checks`` (R7) reach the lanes; anything invalid is
refused with its reason, journaled and published, and the link carries on."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gatectl.approvals import public_key_b64, sign
from signed import command, minutes_ago, signed
from simulators.site import FLEET

from .conftest import PREFIX, wait_until

TZ = ZoneInfo("Asia/Shanghai")
CUSTOMS = Ed25519PrivateKey.generate()


def approval(approval_id: str, lane: str = "B1-IN", trigger: str = "remote") -> dict:
    now = datetime.now(TZ)
    return {
        "approval_id": approval_id, "lane_id": lane, "trigger": trigger, "reason": "network_fault",
        "detail": "海关网络中断，远程放行",
        "requested_by": {"org": "某某物流有限公司", "name": "张三"},
        "verified_by": {"org": "运维单位", "name": "李四"},
        "approved_by": {"org": "昆明海关", "name": "王五"},
        "countersigned_by": None, "plate": None,
        "valid_from": (now - timedelta(minutes=1)).isoformat(),
        "valid_until": (now + timedelta(hours=1)).isoformat(),
        "max_lifts": 1, "signatures": [],
    }


def dumps(doc) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode()


async def drive_through(lane) -> None:
    for loop, on in [("safety", True), ("arrival", False), ("exit", True), ("safety", False), ("exit", False)]:
        lane.set_loop(loop, on)
        await asyncio.sleep(0.15)


async def test_approval_by_mqtt_is_accepted_and_lifts_once(brokers, collectors, sites) -> None:
    """R17 over MQTT: a customs-signed remote approval published on ``cmd/approvals`` is
    accepted and lifts once; an unsigned one is refused on its lane and one for a lane
    that does not exist is refused site-wide; each outcome journaled and published."""
    broker = await brokers()
    col = await collectors(broker.port)
    h = await sites(broker.port, trust={"customs": [public_key_b64(CUSTOMS)]})
    lane = h.sim.lane("B1-IN")
    await wait_until(lambda: h.link.connected)

    await col.publish(f"{PREFIX}/cmd/approvals", dumps(approval("AP-MQTT-0")))  # no signature
    await col.publish(f"{PREFIX}/cmd/approvals", dumps(sign(approval("AP-MQTT-X", lane="X9-IN"), "customs", CUSTOMS)))
    await col.publish(f"{PREFIX}/cmd/approvals", dumps(sign(approval("AP-MQTT-1"), "customs", CUSTOMS)))
    await wait_until(lambda: lane.barrier.position == "up")
    await drive_through(lane)
    await wait_until(lambda: h.journal("B1-IN", "passage.closed") != [])

    accepted = h.journal("B1-IN", "approval.accepted")
    assert [a["approval_id"] for a in accepted] == ["AP-MQTT-1"]
    refused = h.journal("B1-IN", "approval.refused")
    assert [(r["approval_id"], r["source"]) for r in refused] == [("AP-MQTT-0", "mqtt")]
    site_refused = h.journal("_site", "approval.refused")
    assert [(r["approval_id"], r["source"]) for r in site_refused] == [("AP-MQTT-X", "mqtt")]
    assert [c["outcome"] for c in h.journal("B1-IN", "passage.closed")] == ["manual"]
    lifted = h.journal("B1-IN", "barrier.lifted")
    assert len(lifted) == 1 and lane.opens == 1

    # Published like every journaled event, site-wide ones on site/events.
    await wait_until(lambda: [e["approval_id"] for e in col.events("B1-IN") if e["type"] == "approval.accepted"]
                     == ["AP-MQTT-1"])
    await wait_until(lambda: [e["approval_id"] for e in col.events("_site") if e["type"] == "approval.refused"]
                     == ["AP-MQTT-X"])
    assert h.link.commands["approvals"] == 3


async def test_signed_spot_check_by_mqtt_holds_the_next_vehicle_and_bad_commands_are_refused(
    brokers, collectors, sites
) -> None:
    """R7 over MQTT, signed end to end (CONTRACT 8): a customs-signed ``spot-check`` with
    ``hold_next`` 1 holds the next released lorry, the one after passes. Not JSON,
    unsigned, tampered, signed by an unknown key, too old, for another lane, the wrong
    command for the topic, a bad value, a retained one and the good one sent again are
    each refused with the reason, counted per surface and reason, journaled on ``_site``
    once per topic and reason with the count (never one by one), and published; the link
    stays up throughout."""
    broker = await brokers()
    col = await collectors(broker.port)
    topic = f"{PREFIX}/cmd/spot-checks"
    good = signed("spot-check", "B1-IN", CUSTOMS, hold_next=1)
    # Left retained on the broker before the daemon subscribes.
    await col.publish(topic, dumps(signed("spot-check", "B1-IN", CUSTOMS, clear=True)), retain=True)
    h = await sites(broker.port, trust={"customs": [public_key_b64(CUSTOMS)]}, refused_interval=0.3)
    await wait_until(lambda: h.link.connected)
    tampered = {**signed("spot-check", "B1-IN", CUSTOMS, hold_next=1), "hold_next": 5}
    stranger = Ed25519PrivateKey.generate()
    bad = [
        (b"\xff not json", "malformed"),
        (dumps(["B1-IN", 1]), "malformed"),
        (dumps(command("spot-check", "B1-IN", hold_next=1)), "unsigned"),
        (dumps(tampered), "bad_signature"),
        (dumps(signed("spot-check", "B1-IN", stranger, hold_next=1)), "unknown_key"),
        (dumps(signed("spot-check", "B1-IN", CUSTOMS, hold_next=1, issued_at=minutes_ago(11))), "expired"),
        (dumps(signed("spot-check", "Z9", CUSTOMS, hold_next=1)), "unknown_lane"),
        (dumps(signed("lane-hours", "B1-IN", CUSTOMS, clear=True)), "wrong_topic"),
        (dumps(signed("spot-check", "B1-IN", CUSTOMS, hold_next=-1)), "malformed"),
    ]
    for payload, _ in bad:
        await col.publish(topic, payload)
    await col.publish(topic, dumps(good))
    await wait_until(lambda: h.journal("B1-IN", "spot_check.ordered") != [])
    await col.publish(topic, dumps(good))  # the same command_id again
    ordered = h.journal("B1-IN", "spot_check.ordered")
    assert [(o["order"]["hold_next"], o["source"]) for o in ordered] == [(1, "mqtt")]

    lane = h.sim.lane("B1-IN")
    assert await lane.drive(FLEET[0], wait_for_lift_s=1.5) == "backed_out"
    assert await lane.drive(FLEET[0]) == "passed"
    await wait_until(lambda: len(h.journal("B1-IN", "passage.closed")) == 2)
    assert [c["outcome"] for c in h.journal("B1-IN", "passage.closed")] == ["held", "passed"]
    assert [e["reason"] for e in h.journal("B1-IN", "passage.held")] == ["spot_check"]

    expected = sorted([reason for _, reason in bad] + ["retained", "replayed"])
    await wait_until(lambda: sum(r["count"] for r in h.journal("_site", "command.refused")) == len(expected))
    refused = h.journal("_site", "command.refused")
    by_reason: dict[str, int] = {}
    for r in refused:
        by_reason[r["reason"]] = by_reason.get(r["reason"], 0) + r["count"]
    assert sorted(k for k, n in by_reason.items() for _ in range(n)) == expected
    assert all(r["source"] == "mqtt" and r["topic"] == topic and r["message"] for r in refused)
    assert len(refused) <= len(set(expected)) + 2  # aggregated: not one record per message
    assert h.link.commands["refused"] == len(expected) and h.link.commands["spot_checks"] == 1
    counts = h.site.orders.refusals.counts
    assert counts[("command", "malformed")] == 3 and counts[("command", "replayed")] == 1
    assert counts[("mqtt", "retained")] == 1
    await wait_until(lambda: any(e["type"] == "command.refused" for e in col.events("_site")))
    assert h.link.outages == 0 and h.link.connected
