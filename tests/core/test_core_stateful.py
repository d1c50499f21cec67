"""Hypothesis stateful tests of the lane core's safety invariants S1-S8.

The machine below plays the lane service: it feeds the core random inputs, cards,
weights, answers, faults, ticks and restarts, carries out its commands the way the
service does (a journal that refuses replays or fails on demand), and after every step
checks the invariants of DESIGN.md section 4.
"""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from gatectl.lane.commands import CommitAuthorisation, Emit, Pulse, RequestRelease
from gatectl.lane.core import LaneCore, LaneRules, LaneState
from gatectl.lane.inputs import (
    INPUT_POINTS,
    CardRead,
    CoilWriteFailed,
    DeviceFault,
    DeviceRecovered,
    InputChanged,
    InputsSnapshot,
    ReleaseDecided,
    ReleaseFailed,
    Tick,
)
from gatectl.lane.inputs import poll_edges
from lanelog import LaneLog
from machines import machine_tests

TZ = ZoneInfo("Asia/Shanghai")
CARDS = ["0100E2850E", "06008E6D5D", "3A00F1229B"]
INSTRUCTIONS = ["CMD-1", "CMD-2", "CMD-3", "CMD-4"]


class LaneMachine(RuleBasedStateMachine):
    """S1-S8 over random event sequences, restarts included (S7)."""

    def __init__(self) -> None:
        super().__init__()
        self.now = datetime(2026, 11, 27, 9, 0, tzinfo=TZ)
        self._ids = itertools.count(1)
        self.log = LaneLog("B1-IN")
        self.journal: list[dict] = self.log.bodies
        self.consumed = self.log.consumed
        self.lifts: Counter[tuple[str, str]] = Counter()
        self.released_instructions: set[str] = set()
        self.requests: list[str] = []
        self.requests_per_passage: Counter[str] = Counter()
        self.passage_request: dict[str, str] = {}
        self.inputs = {p: False for p in INPUT_POINTS}
        self.inputs["barrier_down"] = True
        self.lift_falls = 0
        self.lift_alarmed = False
        self.core: LaneCore | None = None

    def new_id(self) -> str:
        return f"id-{next(self._ids)}"

    @initialize(exit_loop=st.booleans(), weighbridge=st.booleans())
    def start(self, exit_loop: bool, weighbridge: bool) -> None:
        self.rules = LaneRules(
            lane_id="B1-IN",
            kind="bonded",
            has_exit_loop=exit_loop,
            has_weighbridge=weighbridge,
            min_vehicle_kg=500,
            barrier_devices=frozenset({"io1"}),
        )
        self.core = LaneCore(self.rules, new_id=self.new_id)
        self.feed(InputsSnapshot(dict(self.inputs)))

    # ------------------------------------------------------------ the service

    def feed(self, event, rising: bool = False) -> list:
        core = self.core
        assert core is not None
        state_before = core.state
        lift_before = core.state in (LaneState.OPEN, LaneState.LOWERING)
        faulty = bool(core.faults)
        out = core.handle(event, self.now)
        for cmd in out:
            if isinstance(cmd, CommitAuthorisation) and cmd.kind == "release_instruction":
                assert isinstance(event, ReleaseDecided) and event.decision == "release"
                # R3: the answer must be to this passage's own request, about its card.
                assert event.request_id == self.passage_request.get(cmd.passage_id), "R3: stale answer lifted"
                assert not faulty, "S5: nothing lifts automatically while a device is faulty"
        every = list(out)
        for cmd in out:
            every.extend(self.carry_out(cmd))
        if core.state not in (LaneState.OPEN, LaneState.LOWERING):
            self.lift_falls, self.lift_alarmed = 0, False
        if rising and isinstance(event, InputChanged) and event.point in ("safety_loop", "exit_loop"):
            other = "exit_loop" if event.point == "safety_loop" else "safety_loop"
            # One alarm per vehicle: a vehicle already on the other loop was alarmed then.
            if not lift_before and not self.inputs[other] and state_before is not LaneState.STARTING:
                assert any(
                    isinstance(c, Emit) and c.type == "alarm.raised" and c.data["alarm"] == "forced_passage"
                    for c in every
                ), "S4: a vehicle at the barrier line with no lift in progress must raise forced_passage"
        return every

    def carry_out(self, cmd) -> list:
        core = self.core
        assert core is not None
        if isinstance(cmd, Emit):
            self.log.emit(cmd)
            if cmd.type == "alarm.raised" and cmd.data["alarm"] == "tailgating":
                self.lift_alarmed = True
            if cmd.type == "release.decided" and cmd.data["decision"] == "release":
                self.released_instructions.add(cmd.data["instruction_id"])
            return []
        if isinstance(cmd, RequestRelease):
            self.requests.append(cmd.request_id)
            self.requests_per_passage[cmd.passage_id] += 1
            self.passage_request[cmd.passage_id] = cmd.request_id
            assert self.requests_per_passage[cmd.passage_id] == 1, "S8: one release request per passage"
            return []
        if isinstance(cmd, CommitAuthorisation):
            # The runtime answers a commit before any other input (S6).
            return self.feed(self.log.commit(cmd))
        if isinstance(cmd, Pulse):
            if cmd.coil == "open":
                assert cmd.authorisation is not None
                if cmd.reason == "lift":
                    # S1 / S6: every lift is the effect of one committed authorisation.
                    assert cmd.authorisation in self.consumed
                    self.lifts[cmd.authorisation] += 1
                    assert self.lifts[cmd.authorisation] == 1, f"S1: {cmd.authorisation} lifted twice"
                    self.lift_falls, self.lift_alarmed = 0, False
                    if cmd.authorisation[0] == "release_instruction":
                        # R3: only a release instruction from the authority lifts a goods lane.
                        assert cmd.authorisation[1] in self.released_instructions
                else:
                    assert cmd.reason == "safety_reverse" and core.lift is not None
                    assert core.lift.authorisation == cmd.authorisation
            else:
                # S2: never lower onto an occupied safety loop.
                assert not self.inputs["safety_loop"], "S2: lower commanded with the safety loop occupied"
            return []
        return []

    # ----------------------------------------------------------------- rules

    @rule(point=st.sampled_from(INPUT_POINTS), value=st.booleans())
    def set_input(self, point: str, value: bool) -> None:
        was = self.inputs[point]
        self.inputs[point] = value
        counting = "exit_loop" if self.rules.has_exit_loop else "safety_loop"
        assert self.core is not None
        if point == counting and was and not value and self.core.state in (LaneState.OPEN, LaneState.LOWERING):
            self.lift_falls += 1
        lowering = self.core.state is LaneState.LOWERING
        out = self.feed(InputChanged(point, value), rising=value and not was)
        if point == "safety_loop" and value and not was and lowering:
            assert any(
                isinstance(c, Pulse) and c.coil == "open" and c.reason == "safety_reverse" for c in out
            ), "S2: the barrier rises again when the safety loop is occupied while lowering"

    @rule(exit_first=st.booleans())
    def drive_through(self, exit_first: bool) -> None:
        """A vehicle drives over the loops in order (the common case, so hypothesis finds it)."""
        self.set_input("arrival_loop", True)
        self.set_input("safety_loop", True)
        self.set_input("arrival_loop", False)
        if exit_first:
            self.set_input("exit_loop", True)
            self.set_input("safety_loop", False)
            self.set_input("exit_loop", False)
        else:
            self.set_input("safety_loop", False)

    @rule(card=st.sampled_from(CARDS), instruction=st.sampled_from(INSTRUCTIONS))
    def arrive_and_release(self, card: str, instruction: str) -> None:
        """A vehicle arrives, shows its card, is weighed and released."""
        from gatectl.lane.inputs import WeightStable

        self.set_input("arrival_loop", True)
        self.feed(CardRead(card))
        self.feed(WeightStable(20000.0))
        if self.requests:
            self.feed(ReleaseDecided(self.requests[-1], "release", instruction, "HF1", "请通行"))

    @rule()
    def barrier_reaches_limit(self) -> None:
        """The barrier arrives where it was last sent."""
        assert self.core is not None
        if self.core.state is LaneState.OPEN:
            self.set_input("barrier_down", False)
            self.set_input("barrier_up", True)
        else:
            self.set_input("barrier_up", False)
            self.set_input("barrier_down", True)

    @rule(values=st.fixed_dictionaries({p: st.booleans() for p in INPUT_POINTS}))
    def reconnect_snapshot(self, values: dict) -> None:
        """An IO module reconnects and reports every input at once."""
        for point, value in values.items():
            if point in ("safety_loop", "exit_loop") and value and not self.inputs[point]:
                # Keep S4's edge bookkeeping exact: deliver loop rises one by one.
                self.set_input(point, True)
        self.inputs.update(values)
        # The runtime hands a running lane one poll as single edges, in order.
        for edge in poll_edges(values):
            self.feed(edge)

    @rule(card=st.sampled_from(CARDS), elsewhere=st.sampled_from([None, None, None, "N2-OUT"]))
    def card(self, card: str, elsewhere: str | None) -> None:
        out = self.feed(CardRead(card, elsewhere))
        if elsewhere is not None:
            assert not any(isinstance(c, Emit) and c.type == "card.read" for c in out), "S8"

    @rule(kg=st.sampled_from([0.0, 320.0, 800.0, 31250.0]))
    def weight(self, kg: float) -> None:
        from gatectl.lane.inputs import WeightStable

        self.feed(WeightStable(kg))

    @precondition(lambda self: self.core is not None)
    @rule(
        which=st.integers(0, 3),
        decision=st.sampled_from(["release", "release", "hold", "inspect", "deny"]),
        instruction=st.sampled_from(INSTRUCTIONS),
    )
    def decide(self, which: int, decision: str, instruction: str) -> None:
        request_id = self.requests[-1 - which] if which < len(self.requests) else "stranger"
        self.feed(ReleaseDecided(request_id, decision, instruction if decision == "release" else None, "HF1", "提示"))

    @rule(which=st.integers(0, 2), reason=st.sampled_from(["timeout", "connection", "malformed"]))
    def fail(self, which: int, reason: str) -> None:
        request_id = self.requests[-1 - which] if which < len(self.requests) else "stranger"
        out = self.feed(ReleaseFailed(request_id, reason))
        assert not any(isinstance(c, Pulse) and c.coil == "open" and c.reason == "lift" for c in out), "S5"

    @rule(seconds=st.sampled_from([0.1, 1.0, 5.0, 7.0, 61.0]))
    def tick(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
        out = self.feed(Tick())
        assert not any(isinstance(c, Pulse) and c.coil == "open" for c in out), "a tick never lifts"

    @rule(device=st.sampled_from(["io1", "card_reader", "weighbridge"]))
    def fault(self, device: str) -> None:
        self.feed(DeviceFault(device, "test"))

    @rule(device=st.sampled_from(["io1", "card_reader", "weighbridge"]))
    def recover(self, device: str) -> None:
        self.feed(DeviceRecovered(device))

    @rule(coil=st.sampled_from(["open", "close"]))
    def coil_write_fails(self, coil: str) -> None:
        """The barrier's IO module drops a pulse: nothing else may lift for it (S1, S6)."""
        out = self.feed(CoilWriteFailed("io1", coil))
        assert not any(isinstance(c, Pulse) and c.coil == "open" for c in out), "a failed write never lifts"

    @rule()
    def break_journal(self) -> None:
        self.log.broken = not self.log.broken

    @rule()
    def restart(self) -> None:
        """S7: crash and restart; the new core knows only the journal and the live inputs."""
        self.core = LaneCore(self.rules, **self.log.recovery(), new_id=self.new_id)
        self.requests_per_passage.clear()
        self.lift_falls, self.lift_alarmed = 0, False
        self.feed(InputsSnapshot(dict(self.inputs)))

    # ------------------------------------------------------------ invariants

    @invariant()
    def tailgating_is_alarmed(self) -> None:
        """S3: a second vehicle through under one lift raises tailgating."""
        if self.lift_falls >= 2:
            assert self.lift_alarmed, "S3: two vehicles under one lift without a tailgating alarm"

    @invariant()
    def lowers_once_cleared(self) -> None:
        """S3: once the authorised vehicle has cleared, the barrier is on its way down."""
        core = self.core
        if core is None or core.state is not LaneState.OPEN or core.lift is None:
            return
        lift = core.lift
        cleared = (
            lift.entered
            and not self.inputs["safety_loop"]
            and not self.inputs["exit_loop"]
            and (lift.exit_seen or not self.rules.has_exit_loop)
        )
        assert not cleared, "S3: vehicle cleared but the barrier was not lowered"

    @invariant()
    def one_passage_one_card(self) -> None:
        """S8: the open passage holds at most one card, and only one passage is open."""
        core = self.core
        if core is None:
            return
        open_ids = set()
        for e in self.journal:
            if e["type"] == "passage.opened":
                open_ids.add(e["passage_id"])
            elif e["type"] == "passage.closed":
                open_ids.discard(e["passage_id"])
        assert len(open_ids) <= 1
        if core.passage is not None:
            assert open_ids == {core.passage.passage_id}

    @invariant()
    def inputs_mirror(self) -> None:
        core = self.core
        if core is not None and core.running:
            assert core.inputs == self.inputs


TestLaneCoreInvariants, TestLaneCoreInvariantsSoak = machine_tests(
    LaneMachine, examples=300, steps=60, soak_steps=200)
