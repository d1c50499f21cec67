"""R10, R17, S1: random approvals (valid and not) and button presses never lift more than
the valid approvals allow, and never outside their windows, across restarts.

The machine plays the site: it signs approvals (some tampered, expired, early, for another
lane, by an unknown key), verifies them with gatectl.approvals.verify exactly as the daemon
does, hands the accepted ones to the lane core, presses the guard's button, drives
vehicles through, lets time pass and restarts the core from its journal.
"""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from gatectl.approvals import ApprovalRefused, public_key_b64, sign, verify
from gatectl.lane.commands import CommitAuthorisation, Emit, Pulse
from gatectl.lane.core import LaneCore, LaneRules, LaneState
from gatectl.lane.inputs import (
    INPUT_POINTS,
    ApprovalAccepted,
    InputChanged,
    InputsSnapshot,
    Tick,
)
from lanelog import LaneLog

TZ = ZoneInfo("Asia/Shanghai")
CUSTOMS = Ed25519PrivateKey.generate()
STRANGER = Ed25519PrivateKey.generate()


class Trust:
    customs = [public_key_b64(CUSTOMS)]
    park: list[str] = []


class ApprovalMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = datetime(2026, 11, 27, 9, 0, tzinfo=TZ)
        self._ids = itertools.count(1)
        self._approvals = itertools.count(1)
        self.log = LaneLog("B1-IN")
        self.consumed = self.log.consumed
        self.inputs = {p: False for p in INPUT_POINTS}
        self.inputs["barrier_down"] = True
        self.accepted: dict[str, dict] = {}  # approval_id -> verified document
        self.lifts: Counter[str] = Counter()  # approval_id -> lifts

    def new_id(self) -> str:
        return f"id-{next(self._ids)}"

    @initialize()
    def start(self) -> None:
        self.rules = LaneRules(lane_id="B1-IN", kind="bonded", has_weighbridge=False, has_exit_loop=True)
        self.core = LaneCore(self.rules, new_id=self.new_id)
        self.feed(InputsSnapshot(dict(self.inputs)))

    def feed(self, event) -> None:
        for cmd in self.core.handle(event, self.now):
            self.carry_out(cmd)

    def carry_out(self, cmd) -> None:
        if isinstance(cmd, Emit):
            self.log.emit(cmd)
        elif isinstance(cmd, CommitAuthorisation):
            self.feed(self.log.commit(cmd))  # answered before any other input (S6)
        elif isinstance(cmd, Pulse) and cmd.coil == "open" and cmd.reason == "lift":
            kind, auth_id = cmd.authorisation
            if kind == "approval":
                approval_id = auth_id.rsplit("#", 1)[0]
                doc = self.accepted.get(approval_id)
                assert doc is not None, "R10: a lift under an approval that was never accepted"
                self.lifts[approval_id] += 1
                assert self.lifts[approval_id] <= doc["max_lifts"], "S1: more lifts than max_lifts"
                start = datetime.fromisoformat(doc["valid_from"])
                end = datetime.fromisoformat(doc["valid_until"])
                assert start <= self.now < end, "R10: a lift outside the approval's window"
                if doc["trigger"] == "remote":
                    assert self.lifts[approval_id] == 1, "R17: a remote approval lifts once"

    def set_input(self, point: str, value: bool) -> None:
        self.inputs[point] = value
        self.feed(InputChanged(point, value))

    def uses(self, approval_id: str) -> int:
        return sum(1 for kind, auth in self.consumed if kind == "approval" and auth.rsplit("#", 1)[0] == approval_id)

    @rule(
        flaw=st.sampled_from(["none", "none", "none", "tampered", "expired", "early", "other_lane", "stranger"]),
        trigger=st.sampled_from(["panel", "panel", "remote"]),
        max_lifts=st.integers(1, 3),
        start=st.sampled_from([-600, -60, 30, 300]),
        length=st.sampled_from([60, 600, 3600]),
    )
    def submit_approval(self, flaw: str, trigger: str, max_lifts: int, start: int, length: int) -> None:
        approval_id = f"AP-{next(self._approvals)}"
        if flaw == "expired":
            start, length = -7200, 600
        if flaw == "early":
            start = 3600
        doc = {
            "approval_id": approval_id, "lane_id": "X1-IN" if flaw == "other_lane" else "B1-IN",
            "trigger": trigger, "reason": "equipment_fault", "detail": "测试",
            "requested_by": {"org": "企业", "name": "张三"}, "verified_by": {"org": "运维", "name": "李四"},
            "approved_by": {"org": "海关", "name": "王五"}, "countersigned_by": None, "plate": None,
            "valid_from": (self.now + timedelta(seconds=start)).isoformat(),
            "valid_until": (self.now + timedelta(seconds=start + length)).isoformat(),
            "max_lifts": max_lifts, "signatures": [],
        }
        doc = sign(doc, "customs", STRANGER if flaw == "stranger" else CUSTOMS)
        if flaw == "tampered":
            doc["max_lifts"] = max_lifts + 5
        try:
            verified = verify(doc, trust=Trust, lanes={"B1-IN": "bonded"}, now=self.now,
                              lifts_used=self.uses(approval_id))
        except ApprovalRefused:
            current = start <= 0 < start + length
            assert flaw != "none" or not current, "a well-formed, current approval must verify"
            return
        assert flaw == "none", f"a {flaw} approval verified"
        a = verified.approval
        self.accepted[a.approval_id] = verified.document()
        self.feed(ApprovalAccepted(a.approval_id, a.trigger, a.max_lifts, a.valid_from, a.valid_until,
                                   self.uses(a.approval_id)))

    @rule()
    def press_manual_lift(self) -> None:
        self.set_input("manual_lift_button", True)
        self.set_input("manual_lift_button", False)

    @rule()
    def vehicle_arrives(self) -> None:
        self.set_input("arrival_loop", True)

    @rule()
    def vehicle_drives_through(self) -> None:
        for point, value in [("barrier_down", False), ("barrier_up", True), ("safety_loop", True),
                             ("arrival_loop", False), ("exit_loop", True), ("safety_loop", False),
                             ("exit_loop", False)]:
            if self.core.state is not LaneState.OPEN and point == "barrier_up":
                return
            self.set_input(point, value)

    @rule()
    def barrier_comes_down(self) -> None:
        if self.core.state is LaneState.LOWERING:
            self.set_input("barrier_up", False)
            self.set_input("barrier_down", True)

    @rule(seconds=st.sampled_from([1, 10, 60, 400, 4000]))
    def time_passes(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)
        self.feed(Tick())

    @rule()
    def restart(self) -> None:
        """S7: the site reloads accepted approvals with the uses the journal holds."""
        self.core = LaneCore(self.rules, **self.log.recovery(), new_id=self.new_id)
        for approval_id, doc in self.accepted.items():
            until = datetime.fromisoformat(doc["valid_until"])
            if until > self.now:
                self.core.handle(
                    ApprovalAccepted(approval_id, doc["trigger"], doc["max_lifts"],
                                     datetime.fromisoformat(doc["valid_from"]), until, self.uses(approval_id),
                                     restored=True),
                    self.now,
                )
        self.feed(InputsSnapshot(dict(self.inputs)))

    @invariant()
    def lifts_within_the_sum_of_max_lifts(self) -> None:
        total = sum(self.lifts.values())
        assert total <= sum(doc["max_lifts"] for doc in self.accepted.values())


TestApprovalLifts = ApprovalMachine.TestCase
TestApprovalLifts.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
