"""Commands the lane core returns; the lane service carries them out in order."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from gatectl.events import Authorisation, Event


class Command:
    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Emit(Command):
    """Journal (and later publish) one event (``gatectl.events``) stamped ``ts``."""

    event: Event
    ts: datetime

    @property
    def type(self) -> str:
        return self.event.TYPE

    @property
    def data(self) -> dict[str, Any]:
        return self.event.data


@dataclass(frozen=True, slots=True)
class RequestRelease(Command):
    """Ask the lane's release authority about this vehicle, once per passage (R3)."""

    request_id: str
    passage_id: str
    card: str
    gross_weight_kg: float | None
    captured_at: datetime
    plate: str | None = None
    #: On a shared lane: the kind asked, which names the authority asked.
    lane_kind: str | None = None


@dataclass(frozen=True, slots=True)
class CommitAuthorisation(Command):
    """Record the authorisation as consumed in the journal before any coil moves (S6).

    Always the last command of its step. The runtime answers with
    ``AuthorisationCommitted`` or ``AuthorisationRefused`` before it hands the core any
    other input.
    """

    kind: str
    auth_id: str
    passage_id: str
    ts: datetime
    #: Consumed during an emergency drill: its journal record is marked too.
    drill: bool = False

    @property
    def authorisation(self) -> Authorisation:
        return Authorisation(self.kind, self.auth_id)


@dataclass(frozen=True, slots=True)
class Pulse(Command):
    """Pulse a barrier coil.

    Every open pulse names the authorisation it is the effect of (S1); ``reason`` is
    ``lift`` for the one lift of that authorisation and ``safety_reverse`` when the
    barrier must rise again because the safety loop became occupied while lowering (S2).
    """

    coil: Literal["open", "close"]
    authorisation: Authorisation | None = None
    reason: Literal["lift", "safety_reverse", "lower"] = "lift"


@dataclass(frozen=True, slots=True)
class Display(Command):
    """Text for the lane display and the guard's screen (R6, R12), Chinese."""

    text: str


@dataclass(frozen=True, slots=True)
class ConfirmPassage(Command):
    """Tell the release authority what became of its release (CONTRACT 3.1).

    Written to the journal's outbox with the events of the same step, and delivered from
    there until the authority acknowledges it, across restarts.
    """

    request_id: str
    instruction_id: str | None
    result: Literal["passed", "not_passed"]
    passed_at: datetime
    gross_weight_kg: float | None
    #: On a shared lane: the kind of the authority that released it.
    lane_kind: str | None = None
