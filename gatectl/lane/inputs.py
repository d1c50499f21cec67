"""What the lane core consumes: its inputs.

Each input is a frozen value checked at birth: a malformed input is a bug in the adapter
that built it (``LaneProtocolError``), never something the core has to tolerate.
The adapters (drivers, authority clients, journal) turn bytes and results into these;
only ``LaneCore.handle`` decides what they mean. (What the core emits for the journal is
``gatectl.events``.)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Mapping

from gatectl.lane.errors import LaneProtocolError

#: Every discrete input a lane may have, named as in the config's ``points``.
INPUT_POINTS = (
    "arrival_loop",
    "safety_loop",
    "exit_loop",
    "barrier_up",
    "barrier_down",
    "manual_lift_button",
    "emergency_button",
)

Decision = Literal["release", "hold", "inspect", "deny"]
DECISIONS: tuple[str, ...] = ("release", "hold", "inspect", "deny")


class Input:
    """Base of every input of the lane core."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class InputsSnapshot(Input):
    """All of the lane's inputs, read at once: the first reading, which starts the lane.

    Later polls reach the core one edge at a time (``poll_edges``)."""

    values: Mapping[str, bool]

    def __post_init__(self) -> None:
        unknown = set(self.values) - set(INPUT_POINTS)
        if unknown:
            raise LaneProtocolError(f"unknown input points {sorted(unknown)}")


@dataclass(frozen=True, slots=True)
class InputChanged(Input):
    """One discrete input changed (loops, limit switches, panel buttons)."""

    point: str
    value: bool

    def __post_init__(self) -> None:
        if self.point not in INPUT_POINTS:
            raise LaneProtocolError(f"unknown input point {self.point!r}")


@dataclass(frozen=True, slots=True)
class CardRead(Input):
    """The lane's reader decoded a card.

    ``open_elsewhere`` names another lane of this site holding an open passage for the
    same card (S8), as the site knows it; the core refuses the card if it is set.
    """

    card: str
    open_elsewhere: str | None = None

    def __post_init__(self) -> None:
        if not self.card or self.card != self.card.upper():
            raise LaneProtocolError(f"card numbers are non-empty uppercase text: {self.card!r}")


@dataclass(frozen=True, slots=True)
class WeightStable(Input):
    """The weighbridge settled on a weight (kg)."""

    kg: float


@dataclass(frozen=True, slots=True)
class ReleaseDecided(Input):
    """The release authority answered the request ``request_id``."""

    request_id: str
    decision: Decision
    instruction_id: str | None = None
    form_id: str | None = None
    hint: str | None = None
    declared_weight_kg: float | None = None

    def __post_init__(self) -> None:
        if self.decision not in DECISIONS:
            raise LaneProtocolError(f"unknown decision {self.decision!r}")
        if self.decision == "release" and not self.instruction_id:
            raise LaneProtocolError("a release must name its instruction_id")


@dataclass(frozen=True, slots=True)
class ReleaseFailed(Input):
    """The release authority did not answer usefully (timeout, refused, garbage...)."""

    request_id: str
    reason: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class AuthorisationCommitted(Input):
    """The journal durably recorded the authorisation as consumed (S6). The runtime hands
    it (or ``AuthorisationRefused``) to the core before any other input."""

    kind: str
    auth_id: str


@dataclass(frozen=True, slots=True)
class AuthorisationRefused(Input):
    """The journal did not record the authorisation.

    ``reason`` is ``replay`` (already consumed by an earlier lift) or ``journal_error``.
    """

    kind: str
    auth_id: str
    reason: Literal["replay", "journal_error"]
    detail: str = ""


@dataclass(frozen=True, slots=True)
class DeviceFault(Input):
    """A device the lane needs stopped working (S5)."""

    device: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class DeviceRecovered(Input):
    device: str


@dataclass(frozen=True, slots=True)
class CoilWriteFailed(Input):
    """A barrier pulse the IO module ``device`` may never have acted on.

    What the barrier did is read from its limit switches once the module answers again.
    """

    device: str
    coil: str  # "open" | "close"


@dataclass(frozen=True, slots=True)
class ApprovalAccepted(Input):
    """A verified approval for this lane (R10, R17): the service checked its signatures,
    chain, lane and window (gatectl/approvals.py); the core decides when it lifts.

    ``lifts_used`` counts the uses the journal already holds (after a restart)."""

    approval_id: str
    trigger: Literal["panel", "remote"]
    max_lifts: int
    valid_from: datetime
    valid_until: datetime
    lifts_used: int = 0
    plate: str | None = None
    #: Reloaded from the journal at start: already journaled as accepted.
    restored: bool = False
    #: Signed by park management too (a countersigned approval): needed for a manual lift
    #: of a non-bonded passage (R10).
    countersigned: bool = False

    def __post_init__(self) -> None:
        if self.trigger not in ("panel", "remote"):
            raise LaneProtocolError(f"unknown approval trigger {self.trigger!r}")
        if self.max_lifts < 1 or self.lifts_used < 0:
            raise LaneProtocolError("max_lifts >= 1 and lifts_used >= 0")
        if self.valid_from.tzinfo is None or self.valid_until.tzinfo is None:
            raise LaneProtocolError("approval windows are timezone-aware")


@dataclass(frozen=True, slots=True)
class ApprovalRefused(Input):
    """An approval for this lane failed verification; journaled with its reason (R10)."""

    approval_id: str | None
    reason: str
    message: str = ""
    source: str = ""


@dataclass(frozen=True, slots=True)
class EmergencyAccount(Input):
    """The guard's account of an emergency release (R11), added after the fact."""

    passage_id: str
    vehicle_type: str
    plate: str | None = None
    note: str = ""
    by: str = ""


@dataclass(frozen=True, slots=True)
class SpotCheckOrdered(Input):
    """Customs orders spot checks on the lane (R7): hold the next N released vehicles,
    hold a random share of them, or clear both. Exactly one of the three."""

    hold_next: int | None = None
    fraction: float | None = None
    clear: bool = False
    source: str = ""

    def __post_init__(self) -> None:
        given = [self.hold_next is not None, self.fraction is not None, self.clear]
        if sum(given) != 1:
            raise LaneProtocolError("a spot check is one of hold_next, fraction or clear")
        if self.hold_next is not None and (isinstance(self.hold_next, bool) or self.hold_next < 0):
            raise LaneProtocolError(f"hold_next must be a count >= 0, got {self.hold_next!r}")
        if self.fraction is not None and not 0.0 <= self.fraction <= 1.0:
            raise LaneProtocolError(f"fraction must be within 0..1, got {self.fraction!r}")


@dataclass(frozen=True, slots=True)
class PlateRead(Input):
    """The lane's plate camera read a plate (the vehicle on the arrival loop)."""

    plate: str
    confidence: float | None = None
    captured_at: datetime | None = None

    def __post_init__(self) -> None:
        if not self.plate or len(self.plate) > 16:
            raise LaneProtocolError(f"a plate is 1-16 characters: {self.plate!r}")
        if self.captured_at is not None and self.captured_at.tzinfo is None:
            raise LaneProtocolError("captured_at is timezone-aware")


@dataclass(frozen=True, slots=True)
class HoursOrdered(Input):
    """Customs opens (``open``) or closes the lane now, overriding its open hours until
    ``until`` (None: until cleared), or clears its order (``clear``) (R2)."""

    open: bool | None = None
    until: datetime | None = None
    reason: str = ""
    clear: bool = False
    source: str = ""
    by: str = ""

    def __post_init__(self) -> None:
        if self.clear == (self.open is not None):
            raise LaneProtocolError("an hours order is either open/closed or clear")
        if self.until is not None and self.until.tzinfo is None:
            raise LaneProtocolError("until is timezone-aware")


@dataclass(frozen=True, slots=True)
class DrillOrdered(Input):
    """Park management starts (``start``) or ends an emergency drill on the lane."""

    start: bool
    by: str = ""
    note: str = ""


@dataclass(frozen=True, slots=True)
class Tick(Input):
    """Time passed; lets the core act on its deadlines."""


def _edge_rank(change: tuple[str, bool]) -> int:
    point, on = change
    if point in ("barrier_up", "barrier_down"):
        return 1 if on else 0
    return 1 if on else 2


def poll_edges(values: Mapping[str, bool]) -> list[InputChanged]:
    """The inputs one poll saw change, as edges in the order they must have happened.

    A limit switch released first, then rising edges, then the rest: a vehicle reaches the
    next loop before it leaves the last, so "arrival off, safety on" is a vehicle moving
    forward, not one backing out; an arm leaves one limit before it reaches the other, so
    "up off, down on" (as after the IO module was away) is a completed travel, not both
    limits at once. Unchanged values may be included: the core ignores them.
    """
    return [InputChanged(p, v) for p, v in sorted(values.items(), key=_edge_rank)]
