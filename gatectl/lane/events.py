"""Events the lane core consumes.

Each event is a frozen value checked at birth: a malformed event is a bug in the adapter
that built it (``LaneProtocolError``), never something the core has to tolerate.
The adapters (drivers, authority clients, journal) turn bytes and results into these;
only ``LaneCore.handle`` decides what they mean.
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


class Event:
    """Base of every lane event."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class InputsSnapshot(Event):
    """All of the lane's inputs, read at once (first poll, or after a reconnect)."""

    values: Mapping[str, bool]

    def __post_init__(self) -> None:
        unknown = set(self.values) - set(INPUT_POINTS)
        if unknown:
            raise LaneProtocolError(f"unknown input points {sorted(unknown)}")


@dataclass(frozen=True, slots=True)
class InputChanged(Event):
    """One discrete input changed (loops, limit switches, panel buttons)."""

    point: str
    value: bool

    def __post_init__(self) -> None:
        if self.point not in INPUT_POINTS:
            raise LaneProtocolError(f"unknown input point {self.point!r}")


@dataclass(frozen=True, slots=True)
class CardRead(Event):
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
class WeightStable(Event):
    """The weighbridge settled on a weight (kg)."""

    kg: float


@dataclass(frozen=True, slots=True)
class ReleaseDecided(Event):
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
class ReleaseFailed(Event):
    """The release authority did not answer usefully (timeout, refused, garbage...)."""

    request_id: str
    reason: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class AuthorisationCommitted(Event):
    """The journal durably recorded the authorisation as consumed (S6)."""

    kind: str
    auth_id: str


@dataclass(frozen=True, slots=True)
class AuthorisationRefused(Event):
    """The journal did not record the authorisation.

    ``reason`` is ``replay`` (already consumed by an earlier lift) or ``journal_error``.
    """

    kind: str
    auth_id: str
    reason: Literal["replay", "journal_error"]
    detail: str = ""


@dataclass(frozen=True, slots=True)
class DeviceFault(Event):
    """A device the lane needs stopped working (S5)."""

    device: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class DeviceRecovered(Event):
    device: str


@dataclass(frozen=True, slots=True)
class CoilWriteFailed(Event):
    """A barrier pulse the IO module ``device`` may never have acted on.

    What the barrier did is read from its limit switches once the module answers again.
    """

    device: str
    coil: str  # "open" | "close"


@dataclass(frozen=True, slots=True)
class ApprovalAccepted(Event):
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

    def __post_init__(self) -> None:
        if self.trigger not in ("panel", "remote"):
            raise LaneProtocolError(f"unknown approval trigger {self.trigger!r}")
        if self.max_lifts < 1 or self.lifts_used < 0:
            raise LaneProtocolError("max_lifts >= 1 and lifts_used >= 0")
        if self.valid_from.tzinfo is None or self.valid_until.tzinfo is None:
            raise LaneProtocolError("approval windows are timezone-aware")


@dataclass(frozen=True, slots=True)
class ApprovalRefused(Event):
    """An approval for this lane failed verification; journaled with its reason (R10)."""

    approval_id: str | None
    reason: str
    message: str = ""
    source: str = ""


@dataclass(frozen=True, slots=True)
class EmergencyAccount(Event):
    """The guard's account of an emergency release (R11), added after the fact."""

    passage_id: str
    vehicle_type: str
    plate: str | None = None
    note: str = ""
    by: str = ""


@dataclass(frozen=True, slots=True)
class SpotCheckOrdered(Event):
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
class Tick(Event):
    """Time passed; lets the core act on its deadlines."""


@dataclass(frozen=True, slots=True)
class Recovered:
    """What the journal knows of a lane's open passage after a restart (S7).

    Built by ``gatectl.lane.recovery.fold`` from the passage's journaled events.
    """

    passage_id: str
    opened_at: str
    card: str | None = None
    weight_kg: float | None = None
    request_id: str | None = None
    decision: str | None = None
    hint: str | None = None
    authorisation: tuple[str, str] | None = None
    lifted: bool = False
    hold_reason: str | None = None
    instruction_id: str | None = None
    #: Its vehicle was seen on the safety or exit loop after the lift.
    entered: bool = False
    #: When the lift or a loop of the passage was last journaled (ISO time): how long
    #: nobody has been seen, whatever restarts came since.
    last_seen_at: str | None = None
