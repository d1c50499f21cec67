"""CONTRACT 5 against a real Mosquitto: every journaled event on its lane's topic in seq
order, alarms on ``alarms``, retained lane states and status, and nothing lost when the
broker is killed under traffic (R12: anomalies reach customs and park management)."""

from __future__ import annotations

import asyncio
import random

from structlog.testing import capture_logs

from simulators.site import FLEET, INTRUDERS

from .conftest import BONDED, BONDED_OUT, PREFIX, mqtt_yaml, wait_until
from journaling import record

LANES = ["B1-IN", "B2-OUT"]


def first_copies(seqs: list[int]) -> list[int]:
    """The seqs in the order their first copy arrived (at least once: repeats allowed)."""
    seen: set[int] = set()
    out = []
    for s in seqs:
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def has_all(col, h, lanes=LANES) -> bool:
    return all(set(col.seqs(lane)) >= set(range(1, h.site.journal.last_seq(lane) + 1)) for lane in lanes)


async def test_events_in_seq_order_per_lane_with_alarms_states_and_status(brokers, collectors, sites) -> None:
    """R12: two lanes with traffic at once (released, held, a forced passage) and a
    site-wide record: each lane's topic carries exactly its journal, seq 1..n in order,
    the journal's bodies as they are; every alarm also on ``alarms``; a late subscriber
    finds the retained status and each lane's state; a clean stop says offline and leaves
    the cursors saved at the journal's end."""
    broker = await brokers()
    col = await collectors(broker.port)
    h = await sites(broker.port, [BONDED, BONDED_OUT])
    await wait_until(lambda: col.payloads(f"{PREFIX}/status") == [b"online"])

    b1, b2 = h.sim.lane("B1-IN"), h.sim.lane("B2-OUT")

    async def lane_one() -> None:
        assert await b1.drive(FLEET[0]) == "passed"
        assert await b1.drive(FLEET[7], wait_for_lift_s=1.5) == "backed_out"  # scripted hold
        assert await b1.force_through(INTRUDERS[0]) == "forced"

    async def lane_two() -> None:
        assert await b2.drive(FLEET[1]) == "passed"
        assert await b2.drive(FLEET[2]) == "passed"

    await asyncio.gather(lane_one(), lane_two())
    record(h.site, "_site", "note.recorded", {"text": "交接班记录已写入"})
    lanes = [*LANES, "_site"]
    await wait_until(lambda: has_all(col, h, lanes) and h.link.depth() == 0)

    for lane in lanes:
        journal = h.journal(lane)
        assert len(journal) > (0 if lane == "_site" else 10)
        assert col.seqs(lane) == list(range(1, len(journal) + 1)), lane
        assert col.events(lane) == journal, lane
    alarms = [m.json() for m in col.on(f"{PREFIX}/alarms")]
    journal_alarms = [e for lane in LANES for e in h.journal(lane) if e["type"].startswith("alarm.")]
    assert "forced_passage" in [a["alarm"] for a in alarms]
    assert sorted((a["lane_id"], a["seq"]) for a in alarms) == sorted((a["lane_id"], a["seq"]) for a in journal_alarms)

    # A subscriber arriving now gets the retained status and lane states at once.
    late = await collectors(broker.port)
    await wait_until(lambda: all(late.on(f"{PREFIX}/lanes/{lane}/state") for lane in LANES)
                     and late.on(f"{PREFIX}/status"))
    assert [(m.payload, m.retain) for m in late.on(f"{PREFIX}/status")] == [(b"online", True)]
    for lane in LANES:
        state = late.on(f"{PREFIX}/lanes/{lane}/state")[-1]
        assert state.retain
        snap = state.json()
        assert snap["lane_id"] == lane and snap["kind"] == "bonded" and "devices" in snap
    # The live subscriber saw the state change as the lanes worked, not just once.
    assert len({m.payload for m in col.on(f"{PREFIX}/lanes/B1-IN/state")}) > 3

    await h.stop()
    await wait_until(lambda: col.payloads(f"{PREFIX}/status")[-1:] == [b"offline"])
    assert h.saved_cursors() == {lane: h.site.journal.last_seq(lane) for lane in lanes}


async def test_broker_killed_under_traffic_then_every_event_arrives(brokers, collectors, sites) -> None:
    """Reliability: Mosquitto is SIGKILLed while vehicles keep coming on two lanes and
    restarted on the same port; the events journaled meanwhile wait in the journal and all
    arrive after the reconnect, none missing (compared with the journal), each lane's
    first copies in seq order. One ERROR for the outage, one INFO when it is over."""
    broker = await brokers(passwords={"collector": "c-pw", "gatectl": "g-pw"})
    col = await collectors(broker.port, username="collector", password="c-pw")
    with capture_logs() as logs:
        h = await sites(broker.port, [BONDED, BONDED_OUT],
                        extra=mqtt_yaml(broker.port, username="gatectl", password="g-pw"))
        await wait_until(lambda: h.link.connected)
        stop_traffic = asyncio.Event()
        traffic = asyncio.create_task(h.sim.run_traffic(stop_traffic, random.Random(7)))
        total = lambda: sum(h.site.journal.last_seq(lane) for lane in LANES)  # noqa: E731

        # Kill at an instant when the subscriber holds everything journaled so far, so
        # whatever it lacks later was journaled during the outage (no await in between).
        await wait_until(lambda: total() >= 15 and has_all(col, h))
        broker.kill()
        at_kill = total()
        await wait_until(lambda: total() >= at_kill + 10)
        assert not h.link.connected and h.link.depth() >= 10

        # Same port again. A killed broker forgets subscriptions, so the link's account
        # comes back only once our subscriber is in again.
        broker.set_passwords({"collector": "c-pw"})
        await broker.start()
        await wait_until(col.subscribed.is_set)
        broker.set_passwords({"collector": "c-pw", "gatectl": "g-pw"})
        broker.reload()
        await wait_until(lambda: h.link.connected)
        await wait_until(lambda: total() >= at_kill + 20)  # more traffic after the return
        stop_traffic.set()
        await traffic
        await wait_until(lambda: has_all(col, h) and h.link.depth() == 0)

    for lane in LANES:
        journal = h.journal(lane)
        got = col.seqs(lane)
        assert set(got) == {e["seq"] for e in journal}, lane
        assert first_copies(got) == [e["seq"] for e in journal] == list(range(1, len(journal) + 1)), lane
        by_seq = {e["seq"]: e for e in col.events(lane)}
        assert [by_seq[e["seq"]] for e in journal] == journal
    journal_alarms = {(e["lane_id"], e["seq"]) for lane in LANES for e in h.journal(lane) if e["type"] == "alarm.raised"}
    assert {(a["lane_id"], a["seq"]) for a in map(lambda m: m.json(), col.on(f"{PREFIX}/alarms"))} == journal_alarms

    mine = [entry for entry in logs if entry.get("event", "").startswith("mqtt link")]
    assert [e["event"] for e in mine if e["log_level"] == "error"] == ["mqtt link down"]
    assert [e["event"] for e in mine if e["event"] == "mqtt link restored"] == ["mqtt link restored"]
    assert h.link.outages == 1


async def test_backlog_waits_in_the_journal_across_a_daemon_restart(brokers, collectors, sites) -> None:
    """The journal is the outbox: a daemon that stopped with its cursor saved and comes
    back while the broker is away counts the events it journals as backlog (``depth()``),
    warns past the threshold, and once the broker is back publishes exactly the events
    after the saved cursor: nothing the broker acknowledged before is sent again, nothing
    after it is missing."""
    broker = await brokers(passwords={"collector": "c-pw", "gatectl": "g-pw"})
    col = await collectors(broker.port, username="collector", password="c-pw")
    h = await sites(broker.port, [BONDED], extra=mqtt_yaml(broker.port, username="gatectl", password="g-pw"))
    lane = h.sim.lane("B1-IN")
    assert await lane.drive(FLEET[0]) == "passed"
    await wait_until(lambda: h.journal("B1-IN", "barrier.lowered") != [])
    await wait_until(lambda: has_all(col, h, ["B1-IN"]) and h.link.depth() == 0)
    await h.stop()
    before = h.site.journal.last_seq("B1-IN")
    assert h.saved_cursors() == {"B1-IN": before}

    broker.kill()
    with capture_logs() as logs:
        h2 = await sites.again(h, backlog_warning=5)
        assert await lane.drive(FLEET[1]) == "passed"
        await wait_until(lambda: h2.site.journal.last_seq("B1-IN") > before + 5)
        assert h2.link.depth() == h2.site.journal.last_seq("B1-IN") - before
        await wait_until(lambda: any(e["event"] == "mqtt backlog large" for e in logs))

        broker.set_passwords({"collector": "c-pw"})
        await broker.start()
        await wait_until(col.subscribed.is_set)
        broker.set_passwords({"collector": "c-pw", "gatectl": "g-pw"})
        broker.reload()
        await wait_until(lambda: has_all(col, h2, ["B1-IN"]) and h2.link.depth() == 0)
        await wait_until(lambda: any(e["event"] == "mqtt backlog back to normal" for e in logs))

    assert col.seqs("B1-IN") == list(range(1, h2.site.journal.last_seq("B1-IN") + 1))
    assert col.events("B1-IN") == h2.journal("B1-IN")
    warnings = [e for e in logs if e["event"] == "mqtt backlog large"]
    assert len(warnings) == 1 and warnings[0]["log_level"] == "warning"


async def test_cursor_write_failing_is_logged_once_and_delivery_goes_on(brokers, collectors, sites) -> None:
    """A journal that refuses the cursor write (as a full disk does) costs no event: the
    link goes on from its cursor in memory, warns once, says when writes work again, and
    the saved cursor catches up."""
    broker = await brokers()
    col = await collectors(broker.port)
    h = await sites(broker.port, cursor_save_interval=0)
    journal = h.site.journal
    for op in ("INSERT", "UPDATE"):
        journal.run(lambda tx, op=op: tx.db.execute(
            f"CREATE TRIGGER refuse_{op.lower()} BEFORE {op} ON mqtt_cursor"
            " BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END")).result()
    with capture_logs() as logs:
        for n in range(3):
            record(h.site, "_site", "note.recorded", {"n": n})
            await wait_until(lambda n=n: len(col.events("_site")) == n + 1)
        assert [e["n"] for e in col.events("_site")] == [0, 1, 2]
        # The cursor moves on the broker's acknowledgement, which may trail the delivery.
        await wait_until(lambda: h.link.cursor("_site") == 3 and h.link.depth() == 0)
        journal.run(lambda tx: tx.db.execute("DROP TRIGGER refuse_insert")).result()
        journal.run(lambda tx: tx.db.execute("DROP TRIGGER refuse_update")).result()
        record(h.site, "_site", "note.recorded", {"n": 3})
        await wait_until(lambda: any(e["event"] == "mqtt cursor saved again" for e in logs))
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == [
        "mqtt cursor not saved; delivery goes on, a restart re-publishes"]
    assert h.saved_cursors()["_site"] == 4
    assert h.link.connected and h.link.outages == 0
