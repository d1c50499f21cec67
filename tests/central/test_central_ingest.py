"""The zone central through real Mosquitto, real PostgreSQL and real lane PCs (R12, R14):
every event of every lane once, gaps filled by replay, backfill, restarts, shared
instances, a database restart, and the passages folded as the lanes fold them."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid

import aiomqtt
import pytest

from simulators.site import FLEET, free_tcp_port

from .conftest import wait_for, wait_until

pytestmark = pytest.mark.timeout(240)


async def traffic(pc, n: int, offset: int = 0) -> list[str]:
    return [await pc.drive("B1-IN", FLEET[(offset + i) % 7]) for i in range(n)]


async def test_every_event_once_from_two_lane_pcs(zone, central_in_process):
    """R12/R14: two lane PCs, the central: the stored event ids equal the union of the
    journals; a re-published event is not stored twice; junk is counted, not stored; the
    zone's passages are the lanes' own (same ids, cards, outcomes)."""
    a = await zone.lane_pc("site-a")
    b = await zone.lane_pc("site-b")
    central = await central_in_process(zone.zone_yaml())
    await asyncio.gather(traffic(a, 2), traffic(b, 2, offset=2))
    await zone.complete()
    c = central.central
    assert zone.passages("site-a") == {k: v for k, v in a.journal_passages().items()}
    assert zone.passages("site-b") == {k: v for k, v in b.journal_passages().items()}

    # The broker delivering an event again, and junk on an events topic.
    async with aiohttp_free_client(zone.broker.port) as client:
        db_event = (await central.get("/api/v1/events?site=site-a&lane=B1-IN&limit=1"))[1]["events"][0]
        await client.publish("gatectl/site-a/lanes/B1-IN/events", json.dumps(db_event).encode(), qos=1)
        await client.publish("gatectl/site-a/lanes/B1-IN/events", b"{not json", qos=1)
        await client.publish("gatectl/site-a/lanes/B1-IN/events",
                             json.dumps({**db_event, "event_id": str(uuid.uuid4()), "lane_id": "X"}).encode(), qos=1)
    try:
        await wait_until(lambda: c.counters["duplicates"] >= 1 and sum(c.junk.values()) >= 2, 15)
    except AssertionError:
        raise AssertionError(f"counters {dict(c.counters)}, junk {dict(c.junk)}") from None
    assert zone.rows_of(db_event["event_id"]) == 1
    await zone.complete()
    assert c.junk["malformed"] == 1 and c.junk["wrong_topic"] == 1

    status, body = await central.get("/api/v1/completeness")
    assert status == 200
    lanes = {(r["site_id"], r["lane_id"]): r for r in body["lanes"]}
    for pc in (a, b):
        row = lanes[(pc.site_id, "B1-IN")]
        assert row["missing"] == 0 and row["contiguous_seq"] == row["max_seq"] > 10
    status, body = await central.get("/api/v1/sites")
    assert {s["site_id"]: s["online"] for s in body["sites"]} == {"site-a": True, "site-b": True}
    status, body = await central.get("/api/v1/lanes")
    assert {(x["site_id"], x["lane_id"]) for x in body["lanes"]} == {("site-a", "B1-IN"), ("site-b", "B1-IN")}
    assert all(isinstance(x["state"].get("last_seq"), int) for x in body["lanes"])
    status, body = await central.get("/api/v1/events?site=site-b&lane=B1-IN&since_seq=3&limit=5")
    assert [e["seq"] for e in body["events"]] == [4, 5, 6, 7, 8]
    assert (await central.get("/api/v1/events?limit=10001"))[0] == 400


def aiohttp_free_client(port: int) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", port, identifier=f"test-{uuid.uuid4().hex[:8]}")


async def test_backfill_of_a_site_older_than_the_central_and_kill9_restart(zone):
    """A lane PC that published before the central existed is backfilled from its first
    event (cmd/replay, the retained last_seq); the central killed with -9 under traffic and
    started again loses nothing."""
    a = await zone.lane_pc("site-a")
    await traffic(a, 2)
    path = zone.zone_yaml()
    first = zone.central_process(path)
    await zone.complete()  # everything before the central came from the lane's journal
    moving = asyncio.create_task(traffic(a, 3, offset=1))
    await asyncio.sleep(2.0)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    await asyncio.sleep(1.0)
    zone.central_process(path)
    await moving
    await zone.complete()


async def test_two_instances_share_the_subscription_one_killed(zone):
    """Two instances in one shared group: events of one lane arrive split and out of order
    across them; one is killed with -9 under traffic; nothing is lost, nothing doubled."""
    a = await zone.lane_pc("site-a")
    b = await zone.lane_pc("site-b")
    one = zone.central_process(zone.zone_yaml("central-1", shared_group="central"))
    zone.central_process(zone.zone_yaml("central-2", shared_group="central", http_port=free_tcp_port()))
    moving = asyncio.gather(traffic(a, 3), traffic(b, 3, offset=3))
    await asyncio.sleep(3.0)
    one.send_signal(signal.SIGKILL)
    one.wait(10)
    await moving
    await zone.complete(90)


async def test_postgres_restarted_under_load(zone, postgres, central_in_process):
    """PostgreSQL stopped (immediate: like a crash) and started again while lanes work: the
    central holds events meanwhile, reconnects, and ends with every event once."""
    a = await zone.lane_pc("site-a")
    central = await central_in_process(zone.zone_yaml())
    moving = asyncio.create_task(traffic(a, 3))
    await asyncio.sleep(2.0)
    postgres.stop("immediate")
    await asyncio.sleep(2.0)
    postgres.start()
    await moving
    await zone.complete()
    # A batch whose COMMIT reached PostgreSQL just as it stopped was not acknowledged: the
    # central wrote it again and found it there, so it counts among the duplicates. Every
    # event is in the table once (``complete``); the central counted each at least once.
    counters = central.central.counters
    total = len(a.journal_ids())
    assert counters["stored"] <= total <= counters["stored"] + counters["duplicates"], counters
    assert (await wait_for(lambda: central.get("/api/v1/health", None)))[0] == 200
