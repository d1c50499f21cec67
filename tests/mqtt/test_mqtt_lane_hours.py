"""Customs' lane-hours command over MQTT (CONTRACT 8), signed end to end: a real Mosquitto,
the daemon's link, and the simulated site."""

from __future__ import annotations

import json

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gatectl.approvals import public_key_b64
from signed import command, signed
from simulators.site import FLEET, SCRIPT

from .conftest import PREFIX, wait_until

CUSTOMS = Ed25519PrivateKey.generate()
RELEASED = next(v for v in FLEET if SCRIPT[v.card] == "release")  # type: ignore[index]


def dumps(doc) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode()


async def test_r2_signed_lane_hours_over_mqtt_close_the_lane_once_and_junk_is_counted_not_journaled(
    brokers, collectors, sites
) -> None:
    """R2 over MQTT (CONTRACT 8): a customs-signed ``lane-hours`` on ``cmd/lane-hours``
    closes the lane: ``hours.ordered`` journaled once (source ``mqtt``, ``by`` the officer
    the signed body names), the retained lane state says ``open: false`` with the order, and
    a released lorry is held ``closed_hours``. The same ``command_id`` again is refused as
    ``replayed``; unsigned ones are refused as ``unsigned``: each counted, journaled only
    in aggregate (one ``command.refused`` with the count per reason and interval, never one
    each). A second signed command clears the order and the state says open again."""
    broker = await brokers()
    col = await collectors(broker.port)
    h = await sites(broker.port, trust={"customs": [public_key_b64(CUSTOMS)]}, refused_interval=1.0)
    await wait_until(lambda: h.link.connected)
    topic = f"{PREFIX}/cmd/lane-hours"
    state_topic = f"{PREFIX}/lanes/B1-IN/state"

    close = signed("lane-hours", "B1-IN", CUSTOMS, open=False, until=None, reason="根据海关要求关闭",
                   by="海关监控中心")
    await col.publish(topic, dumps(close))
    await wait_until(lambda: h.journal("B1-IN", "hours.ordered") != [])
    unsigned = 8
    for _ in range(unsigned):
        await col.publish(topic, dumps(command("lane-hours", "B1-IN", clear=True)))
    await col.publish(topic, dumps(close))  # the same command_id again
    order = {"open": False, "until": None, "reason": "根据海关要求关闭", "by": "海关监控中心"}
    await wait_until(lambda: any(m.json().get("hours_order") == order and m.json()["open"] is False
                                 for m in col.on(state_topic)))

    lane = h.sim.lane("B1-IN")
    h.sim.authority.script(RELEASED.card, "release")
    assert await lane.drive(RELEASED, wait_for_lift_s=1.5) == "backed_out"
    await wait_until(lambda: len(h.journal("B1-IN", "passage.closed")) == 1)
    assert [e["reason"] for e in h.journal("B1-IN", "passage.held")] == ["closed_hours"]

    counts = h.site.orders.refusals.counts
    await wait_until(lambda: counts[("command", "unsigned")] == unsigned and counts[("command", "replayed")] == 1)
    await wait_until(lambda: sum(r["count"] for r in h.journal("_site", "command.refused")) == unsigned + 1)
    refused = h.journal("_site", "command.refused")
    assert {r["reason"] for r in refused} == {"unsigned", "replayed"}
    assert len(refused) < unsigned + 1  # aggregated: fewer records than refused messages
    assert all(r["topic"] == topic and r["source"] == "mqtt" for r in refused)
    ordered = h.journal("B1-IN", "hours.ordered")
    assert [(o["open"], o["by"], o["source"]) for o in ordered] == [(False, "海关监控中心", "mqtt")]

    await col.publish(topic, dumps(signed("lane-hours", "B1-IN", CUSTOMS, clear=True, by="海关监控中心")))
    await wait_until(lambda: len(h.journal("B1-IN", "hours.ordered")) == 2)
    await wait_until(lambda: (lambda s: s["open"] is True and s["hours_order"] is None)(
        col.on(state_topic)[-1].json()))
    assert h.link.commands["lane_hours"] == 2 and h.link.commands["refused"] == unsigned + 1
    assert await lane.drive(RELEASED) == "passed"
