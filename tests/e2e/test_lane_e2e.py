"""The lane service against the simulators: real ptys, real Modbus TCP, real HTTP.

Each test drives vehicles the way drivers do (simulators/site.py) and checks what the
barrier did (pulses counted at the simulated IO module) and what the journal holds.
"""

from __future__ import annotations

import asyncio

import pytest

from simulators.site import Vehicle

from .conftest import NO_EXIT, Running, wait_until

TRUCK = Vehicle("0100E2850E", "云A12345", 31250)
SECOND = Vehicle("06008E6D5D", "云A67890", 18800)
NO_CARD = Vehicle(None, "云A00000", 9000)


def outcomes(r: Running, lane: str = "B1-IN") -> list[str]:
    return [e["outcome"] for e in r.events(lane, "passage.closed")]


async def test_released_vehicle_one_open_pulse_then_one_close_after_clear(running: Running) -> None:
    """R3, R4, S1, S3: a released vehicle gets exactly one lift; the barrier lowers once it cleared."""
    running.sim.authority.script(TRUCK.card, "release")
    lane = running.sim.lane("B1-IN")
    assert await lane.drive(TRUCK) == "passed"
    await wait_until(lambda: lane.barrier.position == "down")
    assert (lane.opens, lane.closes) == (1, 1)
    assert outcomes(running) == ["passed"]
    evs = running.events("B1-IN")
    types = [e["type"] for e in evs]
    # The journal has every step, in order, and the lower came after the vehicle cleared.
    for earlier, later in [
        ("passage.opened", "card.read"),
        ("card.read", "weight.stable"),
        ("weight.stable", "release.requested"),
        ("release.requested", "release.decided"),
        ("release.decided", "authorisation.committed"),
        ("authorisation.committed", "barrier.lifted"),
        ("barrier.lifted", "passage.closed"),
        ("passage.closed", "barrier.lowered"),
    ]:
        assert types.index(earlier) < types.index(later), (earlier, later)
    last_clear = max(
        e["seq"] for e in evs if e["type"] == "loop.changed" and e["loop"] == "exit_loop" and not e["occupied"]
    )
    lowered = next(e for e in evs if e["type"] == "barrier.lowered")
    assert lowered["seq"] > last_clear
    lifted = next(e for e in evs if e["type"] == "barrier.lifted")
    decided = next(e for e in evs if e["type"] == "release.decided")
    assert lifted["authorisation"] == {"kind": "release_instruction", "id": decided["instruction_id"]}
    assert next(e for e in evs if e["type"] == "weight.stable")["gross_weight_kg"] == 31250
    # Contract section 5: seq increases by one, event ids are unique.
    assert [e["seq"] for e in evs] == list(range(1, len(evs) + 1))
    assert len({e["event_id"] for e in evs}) == len(evs)
    # The authority was asked once, with the card and the stable weight.
    reqs = running.sim.authority.requests
    assert len(reqs) == 1 and reqs[0]["card_no"] == TRUCK.card and reqs[0]["gross_weight_kg"] == 31250


@pytest.mark.parametrize("decision", ["hold", "inspect", "deny"])
async def test_held_vehicle_no_pulse_inspection_text_then_held_after_back_out(running: Running, decision: str) -> None:
    """R5, R6, R3: a vehicle not released gets no lift, is sent to the inspection area, and
    its passage closes as held once it has backed out; the lane then takes the next one."""
    running.sim.authority.script(TRUCK.card, decision)
    running.sim.authority.script(SECOND.card, "release")
    lane = running.sim.lane("B1-IN")
    assert await lane.drive(TRUCK, wait_for_lift_s=1.5) == "backed_out"
    await wait_until(lambda: outcomes(running) == ["held"])
    assert lane.opens == 0 and lane.closes == 0
    held = running.events("B1-IN", "passage.held")
    assert len(held) == 1 and held[0]["reason"] == decision
    # A denied vehicle backs out; a held one goes to the inspection area, told so once.
    display = held[0]["display"]
    assert ("倒车" in display and "待检区" not in display) if decision == "deny" else display.count("待检区") == 1
    assert running.alarms("B1-IN") == []  # R16: a customs hold is no device alarm
    assert await lane.drive(SECOND) == "passed"
    await wait_until(lambda: len(outcomes(running)) == 2)
    assert outcomes(running) == ["held", "passed"] and lane.opens == 1


async def test_card_frame_repeated_one_request_one_lift(running: Running) -> None:
    """S8: the same card read again and again is one passage, one request, one lift."""
    running.sim.authority.script(TRUCK.card, "release")
    lane = running.sim.lane("B1-IN")
    lane.set_loop("arrival", True)
    lane.weigh(TRUCK.gross_kg)
    await asyncio.sleep(0.3)
    lane.reader.present(TRUCK.card, repeat=6)
    await wait_until(lambda: lane.barrier.position == "up")
    lane.reader.present(TRUCK.card, repeat=3)  # still in the field as it drives on
    for loop, on in [("safety", True), ("arrival", False), ("exit", True), ("safety", False), ("exit", False)]:
        if loop == "arrival":
            lane.weigh(0)
        lane.set_loop(loop, on)
        await asyncio.sleep(0.15)
    await wait_until(lambda: lane.barrier.position == "down")
    assert len(running.sim.authority.requests) == 1
    assert len(running.events("B1-IN", "card.read")) == 1
    assert (lane.opens, lane.closes) == (1, 1)
    assert outcomes(running) == ["passed"]


@pytest.mark.parametrize("authority_timeout_ms", [400])
async def test_authority_not_answering_no_lift(running: Running) -> None:
    """S5: the authority does not answer in time: nothing lifts, the vehicle is held, an alarm is raised."""
    running.sim.authority.silent = True
    lane = running.sim.lane("B1-IN")
    assert await lane.drive(TRUCK, wait_for_lift_s=2.0) == "backed_out"
    await wait_until(lambda: outcomes(running) == ["held"])
    assert lane.opens == 0
    assert "authority_unreachable" in running.alarms("B1-IN")
    closed = running.events("B1-IN", "passage.closed")[0]
    assert closed["reason"].startswith("authority_")


async def test_replayed_instruction_lifts_nothing(running: Running) -> None:
    """S1, CONTRACT 3: an instruction_id already used never lifts again and raises instruction_replay."""
    auth = running.sim.authority
    auth.script(TRUCK.card, "release", instruction_id="CMD-REUSED")
    auth.script(SECOND.card, "release", instruction_id="CMD-REUSED")
    lane = running.sim.lane("B1-IN")
    assert await lane.drive(TRUCK) == "passed"
    assert await lane.drive(SECOND, wait_for_lift_s=1.5) == "backed_out"
    await wait_until(lambda: len(outcomes(running)) == 2)
    assert lane.opens == 1
    assert "instruction_replay" in running.alarms("B1-IN")
    assert outcomes(running) == ["passed", "held"]


async def test_tailgater_raises_tailgating(running: Running) -> None:
    """S3: a second vehicle passing under the same lift raises a tailgating alarm."""
    running.sim.authority.script(TRUCK.card, "release")
    lane = running.sim.lane("B1-IN")
    result = await lane.drive(TRUCK, tailgate=NO_CARD)
    assert result == "passed+tailgater"
    await wait_until(lambda: "tailgating" in running.alarms("B1-IN"))
    await wait_until(lambda: lane.barrier.position == "down")
    assert running.alarms("B1-IN").count("tailgating") == 1
    assert lane.opens >= 1 and outcomes(running) == ["passed"]
    lifts = [e for e in running.events("B1-IN", "barrier.lifted") if e["reason"] == "lift"]
    assert len(lifts) == 1


async def test_forced_passage_raises_alarm(running: Running) -> None:
    """S4, R8: a vehicle through the barrier line with no lift raises forced_passage at once."""
    lane = running.sim.lane("B1-IN")
    assert await lane.force_through(NO_CARD) == "forced"
    await wait_until(lambda: "forced_passage" in running.alarms("B1-IN"))
    assert lane.opens == 0


@pytest.mark.parametrize("lane_specs", [[NO_EXIT]])
async def test_lane_without_exit_loop_passes_on_safety_clear(running: Running) -> None:
    """S3 on a lane without an exit loop: clearing the safety loop means passed, then lower."""
    running.sim.authority.script(TRUCK.card, "release")
    lane = running.sim.lane("N1-OUT")
    assert await lane.drive(TRUCK) == "passed"
    await wait_until(lambda: lane.barrier.position == "down")
    assert (lane.opens, lane.closes) == (1, 1)
    assert outcomes(running, "N1-OUT") == ["passed"]


async def test_manual_lift_refused_emergency_lifts(running: Running) -> None:
    """R10: the manual-lift button without an approval lifts nothing and is journaled.
    R11: the emergency button lifts at once, alarms, and the passage closes as emergency."""
    lane = running.sim.lane("B1-IN")
    await lane.press("manual_lift")
    await wait_until(lambda: running.events("B1-IN", "manual_lift.refused") != [])
    assert lane.opens == 0
    lane.set_loop("arrival", True)
    await lane.press("emergency")
    await wait_until(lambda: lane.barrier.position == "up")
    assert "emergency_release" in running.alarms("B1-IN")
    await asyncio.sleep(0.5)
    assert lane.barrier.position == "up"  # held up until the vehicle has cleared
    for loop, on in [("safety", True), ("arrival", False), ("exit", True), ("safety", False), ("exit", False)]:
        lane.set_loop(loop, on)
        await asyncio.sleep(0.15)
    await wait_until(lambda: lane.barrier.position == "down")
    assert outcomes(running) == ["emergency"] and lane.opens == 1
    lifted = running.events("B1-IN", "barrier.lifted")[0]
    assert lifted["authorisation"]["kind"] == "emergency"


async def test_api_health_lanes_events(running: Running) -> None:
    """CONTRACT 6: health is 200 once every lane runs; lanes and events are served."""
    status, body = await running.get("/api/v1/health")
    assert status == 200 and body["status"] == "ok"
    running.sim.authority.script(TRUCK.card, "release")
    assert await running.sim.lane("B1-IN").drive(TRUCK) == "passed"
    await wait_until(lambda: outcomes(running) == ["passed"])
    status, body = await running.get("/api/v1/lanes")
    assert status == 200 and body["lanes"][0]["lane_id"] == "B1-IN"
    assert body["lanes"][0]["devices"]["card_reader"]["frames"] >= 1
    status, body = await running.get("/api/v1/events?lane=B1-IN&since_seq=3")
    assert status == 200 and body["events"][0]["seq"] == 4
    assert all(e["lane_id"] == "B1-IN" for e in body["events"])
    status, _ = await running.get("/api/v1/events?lane=NOPE")
    assert status == 404


async def test_io_module_outage_fails_closed_then_recovers(running: Running) -> None:
    """S5: the IO module stops answering: fault opened and alarmed, nothing lifts; once it
    is back the lane passes vehicles again without a restart."""
    sim = running.sim
    sim.authority.script(TRUCK.card, "release")
    await sim.io.stop()
    await wait_until(lambda: "device_fault" in running.alarms("B1-IN"))
    assert running.events("B1-IN", "fault.opened")[0]["device"] == "io1"
    await sim.io.start()
    await wait_until(lambda: running.events("B1-IN", "fault.closed") != [], timeout=15)
    lane = sim.lane("B1-IN")
    assert await lane.drive(TRUCK) == "passed"
    await wait_until(lambda: outcomes(running) == ["passed"])
    assert lane.opens == 1


async def test_s7_a_lane_whose_runtime_fails_starts_again_from_the_journal(running: Running) -> None:
    """S7, S1: a bug in one step of a lane (here its core refuses a card with an error) does
    not stop the daemon: that lane is started again from the journal and its inputs, as
    after a crash, and the next vehicle passes; nothing lifted twice."""
    service = running.site.lanes["B1-IN"]
    real = service.core.handle
    failed = []

    def broken(event, now):
        if type(event).__name__ == "CardRead" and not failed:
            failed.append(event)
            raise RuntimeError("a bug in one step")
        return real(event, now)

    service.core.handle = broken  # type: ignore[method-assign]
    running.sim.authority.script(TRUCK.card, "release")
    lane = running.sim.lane("B1-IN")
    assert await lane.drive(TRUCK, wait_for_lift_s=3.0) == "backed_out"
    await wait_until(lambda: service.restarts == 1 and service.core.running, timeout=20)
    assert failed and service.core.handle is not broken  # a new core
    assert await lane.drive(TRUCK) == "passed"
    lifts = [e for e in running.events("B1-IN", "barrier.lifted") if e["reason"] == "lift"]
    assert len(lifts) == len({e["authorisation"]["id"] for e in lifts}) == 1
    status, body = await running.get("/api/v1/health")
    assert status == 200 and body["status"] == "ok"


async def test_r4_s8_a_card_shown_under_a_raised_boom_leaves_with_its_lorry(running: Running) -> None:
    """R3, R4, S8: while a released lorry is still under its boom, the next one pulls up,
    shows its card (customs holds it) and reverses away. The lorry after that, arriving at
    once, is asked about its own card and passes; the reversed lorry's card is nobody's."""
    auth = running.sim.authority
    auth.script(TRUCK.card, "release")
    auth.script(SECOND.card, "hold")
    third = Vehicle("3A00F1229B", "云A0B123", 27400)
    auth.script(third.card, "release")
    lane = running.sim.lane("B1-IN")

    async def step(loop: str, on: bool) -> None:
        lane.set_loop(loop, on)
        await asyncio.sleep(0.15)  # three IO polls: the lane sees every edge

    await step("arrival", True)
    lane.weigh(TRUCK.gross_kg)
    lane.reader.present(TRUCK.card)
    await wait_until(lambda: lane.barrier.position == "up")
    await step("safety", True)
    lane.weigh(0)
    await step("arrival", False)  # the first lorry under the boom, the next pulls up
    await step("arrival", True)
    lane.weigh(SECOND.gross_kg)
    lane.reader.present(SECOND.card)
    await asyncio.sleep(0.2)
    lane.weigh(0)
    await step("arrival", False)  # it reverses away
    await step("exit", True)
    await step("safety", False)
    await step("exit", False)
    await wait_until(lambda: lane.barrier.position == "down")
    assert await lane.drive(third) == "passed"
    assert [r["card_no"] for r in auth.requests] == [TRUCK.card, third.card]
    assert [e["card"] for e in running.events("B1-IN", "card.read")] == [TRUCK.card, third.card]
    await wait_until(lambda: len(outcomes(running)) == 2)
    assert outcomes(running) == ["passed", "passed"] and lane.opens == 2
