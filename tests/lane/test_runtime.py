"""The lane runtime in virtual time, with in-memory ports (tests/support/virtual.py).

These are the timing scenarios of a lane: what happens while the journal commits, when
the authority answers late or never, when the coil write fails, how a poll's edges reach
the core. Virtual time makes them exact and fast: each asserts times and orders, never a
wall-clock duration.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from zoneinfo import ZoneInfo

from gatectl.lane.core import LaneCore, LaneRules, LaneState
from gatectl.lane.inputs import CardRead, DeviceRecovered, WeightStable
from gatectl.lane.runtime import RECORD_FIRST_WAIT_S, REQUEST_LINGER_S, CardRegistry, LaneRuntime
from virtual import MemoryCoils, MemoryJournal, ScriptedAuthority, run_virtual, site_clock

TZ = ZoneInfo("Asia/Shanghai")
T0 = datetime(2026, 11, 27, 9, 0, tzinfo=TZ)
CARD = "0100E2850E"
OTHER = "06008E6D5D"
RULES = LaneRules(lane_id="B1-IN", kind="bonded", min_vehicle_kg=500.0)
DOWN = {"arrival_loop": False, "safety_loop": False, "exit_loop": False, "barrier_up": False,
        "barrier_down": True, "manual_lift_button": False, "emergency_button": False}


class Rig:
    """A lane runtime with in-memory ports and a barrier that follows its coils."""

    def __init__(self, rules: LaneRules = RULES, *, decisions: dict | None = None, commit_s: float = 0.004,
                 travel_s: float = 1.4, cards: CardRegistry | None = None, journal: MemoryJournal | None = None):
        self.journal = journal or MemoryJournal(rules.lane_id, commit_s=commit_s)
        self.coils = MemoryCoils(on_write=self._coil)
        self.authority = ScriptedAuthority(decisions or {})
        self.decisions: list[tuple[str, float]] = []
        self.travel_s = travel_s
        self.core = LaneCore(rules, **(self.journal.recovery() if journal is not None else {}))
        self.runtime = LaneRuntime(
            self.core, journal=self.journal, coils=self.coils, authority=self.authority,
            cards=cards or CardRegistry(), now=site_clock(T0),
            on_decision=lambda source, s: self.decisions.append((source, s)),
        )
        self.inputs = dict(DOWN)
        self.task: asyncio.Task | None = None

    def start(self, **inputs: bool) -> None:
        self.inputs.update(inputs)
        self.task = asyncio.get_running_loop().create_task(self.runtime.run())
        self.runtime.feed_poll(dict(self.inputs))

    def poll(self, **changes: bool) -> None:
        """One IO poll that saw ``changes``."""
        self.inputs.update(changes)
        self.runtime.feed_poll(changes)

    def _coil(self, coil: str, on: bool) -> None:
        if not on:
            return
        loop = asyncio.get_running_loop()
        leaving, reaching = ("barrier_down", "barrier_up") if coil == "open" else ("barrier_up", "barrier_down")
        loop.call_later(0.05, lambda: self.poll(**{leaving: False}))
        loop.call_later(self.travel_s, lambda: self.poll(**{reaching: True}))

    async def until(self, predicate, timeout: float = 120.0) -> None:
        end = asyncio.get_running_loop().time() + timeout
        while not predicate():
            assert asyncio.get_running_loop().time() < end, "not reached in virtual time"
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        assert self.task is not None
        if self.task.done():
            self.task.result()  # a runtime that died says why
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    async def arrive(self, card: str = CARD, kg: float = 31250.0) -> None:
        self.poll(arrival_loop=True)
        await asyncio.sleep(0.5)
        self.runtime.feed(CardRead(card))
        await asyncio.sleep(0.5)
        self.runtime.feed(WeightStable(kg))

    async def drive_through(self) -> None:
        self.poll(safety_loop=True)
        await asyncio.sleep(0.3)
        self.poll(arrival_loop=False)
        await asyncio.sleep(1.0)
        self.poll(exit_loop=True)
        await asyncio.sleep(0.3)
        self.poll(safety_loop=False)
        await asyncio.sleep(1.0)
        self.poll(exit_loop=False)


def play(scenario) -> None:
    run_virtual(scenario, T0)


def test_s6_the_coil_moves_only_after_the_authorisation_is_committed() -> None:
    """S6: a slow disk (50 ms a commit) delays the open pulse, never precedes it."""

    async def scenario() -> None:
        rig = Rig(commit_s=0.05)
        rig.start()
        await rig.arrive()
        await rig.until(lambda: rig.coils.pulses("open"))
        committed = next(t for t, type_ in rig.journal.commits if type_ == "authorisation.committed")
        assert rig.coils.pulses("open")[0] >= committed
        await rig.stop()

    play(scenario)


def test_s6_a_failed_commit_lifts_nothing_and_holds() -> None:
    """S6: the journal refuses the authorisation: no open pulse, the vehicle is held."""

    async def scenario() -> None:
        rig = Rig()
        rig.start()
        rig.poll(arrival_loop=True)
        await asyncio.sleep(0.5)
        rig.runtime.feed(CardRead(CARD))
        await asyncio.sleep(0.5)
        rig.journal.broken = True
        rig.runtime.feed(WeightStable(31250.0))
        await rig.until(lambda: rig.core.state is LaneState.HELD)
        await asyncio.sleep(5)
        assert rig.coils.pulses("open") == []
        assert rig.core.passage is not None and rig.core.passage.hold_reason == "journal_error"
        await rig.stop()

    play(scenario)


def test_the_journals_answer_comes_before_any_other_input() -> None:
    """S6, S2: inputs that arrive while the authorisation commits (here a whole vehicle
    crossing the safety loop and a manual-lift press) are handled after its answer, in
    their order: the core is never handed an input half-authorised."""

    async def scenario() -> None:
        rig = Rig(commit_s=0.2)
        rig.start()
        rig.poll(arrival_loop=True)
        await asyncio.sleep(0.5)
        rig.runtime.feed(CardRead(CARD))
        await asyncio.sleep(0.5)
        rig.runtime.feed(WeightStable(31250.0))
        await rig.until(lambda: rig.core.state is LaneState.AUTHORISING)
        rig.poll(safety_loop=True)
        rig.poll(manual_lift_button=True)
        await rig.until(lambda: rig.coils.pulses("open"))
        await rig.until(lambda: "manual_lift.refused" in rig.journal.types())
        order = [b["type"] if b["type"] != "loop.changed" else b["loop"] for b in rig.journal.bodies]
        assert order.index("authorisation.committed") < order.index("barrier.lifted") < order.index("safety_loop")
        assert order.index("safety_loop") < order.index("manual_lift.refused")
        assert rig.journal.events("manual_lift.refused")[0]["reason"] == "no_valid_approval"
        assert not rig.task.done()
        await rig.stop()

    play(scenario)


def test_r3_s1_one_released_vehicle_one_lift_and_the_barrier_lowers_after_it() -> None:
    """R3, S1, S3: release, lift, drive through, lower: one open and one close pulse."""

    async def scenario() -> None:
        rig = Rig()
        rig.start()
        await rig.arrive()
        await rig.until(lambda: rig.inputs["barrier_up"])
        await rig.drive_through()
        await rig.until(lambda: rig.core.state is LaneState.IDLE and rig.inputs["barrier_down"])
        assert len(rig.coils.pulses("open")) == 1 and len(rig.coils.pulses("close")) == 1
        assert [e["outcome"] for e in rig.journal.events("passage.closed")] == ["passed"]
        await rig.stop()

    play(scenario)


def test_s2_a_vehicle_under_the_boom_just_after_the_close_pulse_makes_it_rise_again() -> None:
    """S2: the safety loop is occupied 0.25 s after the close pulse: the barrier rises
    again (a safety reverse under the same authorisation) and never lowers onto it."""

    async def scenario() -> None:
        rig = Rig()
        rig.start()
        await rig.arrive()
        await rig.until(lambda: rig.inputs["barrier_up"])
        await rig.drive_through()
        await rig.until(lambda: rig.coils.pulses("close"))
        closed = rig.coils.pulses("close")[0]
        await asyncio.sleep(closed + 0.25 - asyncio.get_running_loop().time())
        rig.poll(safety_loop=True)  # a second vehicle noses under the falling boom
        await rig.until(lambda: len(rig.coils.pulses("open")) == 2)
        lifts = rig.journal.events("barrier.lifted")
        assert [e["reason"] for e in lifts] == ["lift", "safety_reverse"]
        assert lifts[0]["authorisation"] == lifts[1]["authorisation"]
        await asyncio.sleep(5)
        assert len(rig.coils.pulses("close")) == 1, "S2: no close pulse while the safety loop is occupied"
        await rig.stop()

    play(scenario)


async def _reverse_under_a_falling_boom(rig: Rig, before=lambda: None) -> float:
    """Lift, drive through, and a second vehicle on the safety loop once the close pulse
    is over and the boom is coming down (``before()`` just before); when the safety loop
    was occupied."""
    rig.start()
    await rig.arrive()
    await rig.until(lambda: rig.inputs["barrier_up"])
    await rig.drive_through()
    await rig.until(lambda: rig.coils.pulses("close"))
    closed = rig.coils.pulses("close")[0]
    await asyncio.sleep(closed + 0.5 - asyncio.get_running_loop().time())
    assert not rig.inputs["barrier_down"], "the boom is still coming down"
    before()
    rig.poll(safety_loop=True)
    return asyncio.get_running_loop().time()


def test_s1_s2_a_safety_reverse_is_journaled_before_its_coil() -> None:
    """S1 after a crash: the open coil energised for a safety reverse (S2) is attributable
    from the journal. It has no authorisation committed before it, so its own
    ``barrier.lifted`` is committed first (50 ms a commit here); a kill between the coil
    write and that commit would have left an edge the journal cannot explain."""

    async def scenario() -> None:
        rig = Rig(commit_s=0.05)
        occupied = await _reverse_under_a_falling_boom(rig)

        def lifted_commits() -> list[float]:
            return [t for t, type_ in rig.journal.commits if type_ == "barrier.lifted"]

        await rig.until(lambda: len(rig.coils.pulses("open")) == 2 and len(lifted_commits()) == 2)
        reverse, recorded = rig.coils.pulses("open")[1], lifted_commits()[1]
        assert [e["reason"] for e in rig.journal.events("barrier.lifted")] == ["lift", "safety_reverse"]
        assert occupied < recorded <= reverse
        await rig.stop()

    play(scenario)


def test_s2_a_stalled_or_failing_journal_delays_a_safety_reverse_by_a_bounded_wait_only() -> None:
    """S2 before the record: a journal that does not commit (a stalled disk) or refuses
    the write keeps the reverse's coil waiting at most ``RECORD_FIRST_WAIT_S``."""

    async def scenario(broken: bool) -> None:
        rig = Rig()

        def disk() -> None:
            if broken:
                rig.journal.broken, rig.journal.commit_s = True, 0.06
            else:
                rig.journal.commit_s = 30.0

        occupied = await _reverse_under_a_falling_boom(rig, before=disk)
        await rig.until(lambda: len(rig.coils.pulses("open")) == 2)
        waited = rig.coils.pulses("open")[1] - occupied - rig.coils.write_s
        if broken:
            assert abs(waited - 0.06) < 1e-6, waited  # the refusal ends the wait
        else:
            assert abs(waited - RECORD_FIRST_WAIT_S) < 1e-6, waited
        rig.task.cancel()
        await asyncio.gather(rig.task, return_exceptions=True)

    play(lambda: scenario(broken=False))
    play(lambda: scenario(broken=True))


def test_s5_r3_an_authority_that_never_answers_holds_the_vehicle_at_the_deadline() -> None:
    """S5: no answer: the vehicle is held exactly ``decision_wait`` after the request."""

    async def scenario() -> None:
        rig = Rig(decisions={CARD: None})
        rig.start()
        await rig.arrive()
        await rig.until(lambda: rig.authority.asked)
        asked = asyncio.get_running_loop().time()
        await rig.until(lambda: rig.core.state is LaneState.HELD)
        assert asyncio.get_running_loop().time() - asked >= RULES.decision_wait.total_seconds() - 0.02
        assert rig.core.passage.hold_reason == "authority_timeout"
        assert rig.coils.pulses("open") == []
        await rig.stop()

    play(scenario)


def test_decision_latency_is_the_answer_to_the_coil_commit_included() -> None:
    """The runtime observes the decision latency: the authority's answer in -> the open
    coil on. With a 20 ms commit and a 2 ms coil write it is those, to the millisecond."""

    async def scenario() -> None:
        rig = Rig(commit_s=0.02)
        rig.authority.answer_s = 0.2  # the request's events were committed long before
        rig.start()
        await rig.arrive()
        await rig.until(lambda: rig.decisions)
        (source, seconds), = rig.decisions
        assert source == "authority"
        assert 0.021 <= seconds <= 0.024
        await rig.stop()

    play(scenario)


def test_r9_s1_a_failed_open_pulse_is_held_as_lift_interrupted_when_the_module_answers() -> None:
    """R9, S1: the coil write failed; when the module is back with the barrier still
    down, the spent authorisation does not lift again and the vehicle is held."""

    async def scenario() -> None:
        rig = Rig(LaneRules(lane_id="B1-IN", kind="bonded", barrier_devices=frozenset({"io1"})))
        rig.start()
        rig.coils.failing = True
        await rig.arrive()
        await rig.until(lambda: "io1" in rig.core.faults)
        rig.coils.failing = False
        rig.runtime.feed(DeviceRecovered("io1"))
        await rig.until(lambda: rig.core.state is LaneState.HELD)
        assert rig.core.passage.hold_reason == "lift_interrupted"
        assert rig.coils.pulses("open") == []
        await rig.stop()

    play(scenario)


def test_a_poll_reaches_the_core_as_edges_in_the_order_they_happened() -> None:
    """One poll saw the arrival loop clear and the safety loop occupied: a vehicle moving
    forward under the lift, not one backing out (the passage is not closed backed_out)."""

    async def scenario() -> None:
        rig = Rig()
        rig.start()
        await rig.arrive()
        await rig.until(lambda: rig.inputs["barrier_up"])
        rig.poll(arrival_loop=False, safety_loop=True)
        await asyncio.sleep(0.5)
        assert rig.journal.events("passage.closed") == []
        assert rig.core.lift is not None and rig.core.lift.entered
        await rig.stop()

    play(scenario)


def test_s8_a_card_open_on_one_lane_is_refused_on_the_next() -> None:
    """S8 across lanes: the card registry is fed from what each lane journals."""

    async def scenario() -> None:
        cards = CardRegistry()
        north = Rig(LaneRules(lane_id="B1-IN", kind="bonded"), decisions={CARD: None}, cards=cards)
        south = Rig(LaneRules(lane_id="B2-IN", kind="bonded"), cards=cards)
        north.start()
        south.start()
        await north.arrive(CARD)
        await north.until(lambda: north.core.state is LaneState.DECIDING)
        await south.arrive(CARD)
        await south.until(lambda: south.journal.events("card.refused"))
        assert south.journal.events("card.refused")[0]["lane"] == "B1-IN"
        assert south.authority.asked == []
        await north.stop()
        await south.stop()

    play(scenario)


def test_s7_a_restarted_runtime_never_lifts_a_spent_authorisation_again() -> None:
    """S7: the journal holds the authorisation; a runtime started from it with the barrier
    still down and the vehicle waiting holds it: no second lift."""

    async def scenario() -> None:
        rig = Rig()
        rig.start()
        rig.coils.failing = True  # the crash came before the coil moved
        await rig.arrive()
        await rig.until(lambda: "authorisation.committed" in rig.journal.types())
        await rig.stop()
        again = Rig(journal=rig.journal)
        again.start(arrival_loop=True)
        await again.until(lambda: again.core.state is LaneState.HELD)
        await asyncio.sleep(3)
        assert again.coils.pulses("open") == []
        await again.stop()

    play(scenario)


def test_s6_a_quick_release_commits_its_request_with_its_authorisation_in_one_commit() -> None:
    """S6 at the cost of one commit: the release request's events linger in the journal
    for the answer, so an authority answering within a commit's time does not make the
    authorisation wait for the request's own commit first. The authorisation is still
    committed before the coil, and the request's events with it, in order."""

    async def scenario() -> None:
        rig = Rig(commit_s=0.02)
        rig.authority.answer_s = 0.005
        rig.start()
        await rig.arrive()
        await rig.until(lambda: rig.decisions)
        (_, seconds), = rig.decisions
        assert 0.021 <= seconds <= 0.024  # one commit, not the request's and then its own
        assert rig.journal.joined == 1
        committed = dict((t, at) for at, t in rig.journal.commits)
        assert committed["release.requested"] == committed["authorisation.committed"]
        assert rig.journal.types().index("release.requested") < rig.journal.types().index("authorisation.committed")
        await rig.stop()

    play(scenario)


def test_a_slow_answer_does_not_keep_the_request_from_the_journal_beyond_the_linger() -> None:
    """The request's events wait for the answer at most ``REQUEST_LINGER_S``: with an
    authority that takes a second they are committed on their own, long before it."""

    async def scenario() -> None:
        rig = Rig(commit_s=0.02)
        rig.authority.answer_s = 1.0
        rig.start()
        await rig.arrive()
        await rig.until(lambda: rig.authority.asked)
        asked_at = asyncio.get_running_loop().time()
        await rig.until(lambda: "release.requested" in rig.journal.types())
        committed = dict((t, at) for at, t in rig.journal.commits)
        assert committed["release.requested"] <= asked_at + REQUEST_LINGER_S + 0.02 + 0.011
        assert "authorisation.committed" not in committed
        await rig.until(lambda: rig.decisions)
        assert rig.journal.joined == 0
        await rig.stop()

    play(scenario)
