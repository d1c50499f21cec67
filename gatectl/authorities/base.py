"""What every release authority adapter speaks: requests, decisions, errors.

A release authority (海关辅助管理系统) answers "release or not" for one vehicle at one
lane (CONTRACT section 3). The adapters in this package only carry that question and its
answer over the wire; they decide nothing. The lane core decides what an answer means:
only a ``release`` naming an ``instruction_id`` can ever lift (R3), an instruction id that
was already used never lifts again (S1), and any :class:`AuthorityError` holds the vehicle
(S5, fail closed).

Nothing here imports aiohttp or touches a socket, so the sans-IO lane core may import this
module freely.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal, Protocol, get_args, runtime_checkable

__all__ = [
    "AUTHORITY_ERROR_REASONS",
    "DECISIONS",
    "AuthorityError",
    "AuthorityErrorReason",
    "Decision",
    "DecisionKind",
    "Direction",
    "PassRequest",
    "ReleaseAuthority",
]

Direction = Literal["in", "out"]
DecisionKind = Literal["release", "hold", "inspect", "deny"]
AuthorityErrorReason = Literal["timeout", "connection", "http_status", "malformed", "mismatch"]

#: The four answers an authority may give; only ``release`` lifts (R3).
DECISIONS: Final[frozenset[str]] = frozenset(get_args(DecisionKind))
#: Every value :attr:`AuthorityError.reason` can take.
AUTHORITY_ERROR_REASONS: Final[frozenset[str]] = frozenset(get_args(AuthorityErrorReason))
_DIRECTIONS: Final[frozenset[str]] = frozenset(get_args(Direction))


@dataclass(frozen=True, slots=True)
class PassRequest:
    """One question to the lane's authority: may this vehicle pass?

    Asked once per passage, after the card is read and (where a weighbridge is configured)
    the weight is stable. ``captured_at`` must be timezone-aware: every time stamp on the
    wire carries its offset (CONTRACT, preamble).
    """

    request_id: str
    site_id: str
    lane_id: str
    channel_no: str
    direction: Direction
    lane_kind: str
    card_no: str
    plate: str | None
    gross_weight_kg: float | None
    captured_at: datetime

    def __post_init__(self) -> None:
        if not self.request_id:
            raise ValueError("PassRequest.request_id must not be empty")
        if self.direction not in _DIRECTIONS:
            raise ValueError(f"PassRequest.direction must be 'in' or 'out', not {self.direction!r}")
        if self.captured_at.tzinfo is None or self.captured_at.utcoffset() is None:
            raise ValueError("PassRequest.captured_at must be timezone-aware (ISO 8601 with offset)")


@dataclass(frozen=True, slots=True)
class Decision:
    """The authority's answer to one :class:`PassRequest`.

    Adapters only return a ``Decision`` whose ``request_id`` equals the request's and, for a
    ``release``, whose ``instruction_id`` is set; anything else is an :class:`AuthorityError`.
    Whether the instruction was already used is for the lane core and the journal to judge
    (S1, ``instruction_replay``), not the adapter.
    """

    request_id: str
    decision: DecisionKind
    instruction_id: str | None
    form_id: str | None
    hint: str | None
    declared_weight_kg: float | None

    def __post_init__(self) -> None:
        if not isinstance(self.decision, str) or self.decision not in DECISIONS:
            raise ValueError(f"Decision.decision must be one of {sorted(DECISIONS)}, not {self.decision!r}")

    @property
    def is_release(self) -> bool:
        """True only for ``release``: the one decision that may lift (R3)."""
        return self.decision == "release"


class AuthorityError(Exception):
    """The authority gave no usable answer; the vehicle is held (S5, fail closed).

    ``reason`` is one of :data:`AUTHORITY_ERROR_REASONS`:

    - ``timeout``: no complete answer within the configured ``timeout_ms``;
    - ``connection``: refused, reset or otherwise broken connection;
    - ``http_status``: the authority answered with an unexpected HTTP status;
    - ``malformed``: the answer is not what the protocol says (not JSON, wrong shape, a
      release that names no instruction, ...);
    - ``mismatch``: the answer is for another request.

    ``detail`` is a human-readable explanation for logs and the guard's screen.
    """

    def __init__(self, reason: AuthorityErrorReason, detail: str = "", *, request_id: str | None = None) -> None:
        if reason not in AUTHORITY_ERROR_REASONS:
            raise ValueError(f"unknown AuthorityError reason {reason!r}")
        self.reason: AuthorityErrorReason = reason
        self.detail: str = detail
        self.request_id: str | None = request_id
        super().__init__(f"{reason}: {detail}" if detail else reason)

    def __repr__(self) -> str:
        return f"AuthorityError({self.reason!r}, {self.detail!r}, request_id={self.request_id!r})"


@runtime_checkable
class ReleaseAuthority(Protocol):
    """A lane's release authority, whatever its wire protocol (CONTRACT section 3).

    ``request`` returns the authority's :class:`Decision` or raises :class:`AuthorityError`;
    it raises nothing else for anything the network or the authority does, and it is bounded
    by the authority's ``timeout_ms``. ``close`` releases sockets and sessions; it is
    idempotent.
    """

    async def request(self, req: PassRequest) -> Decision: ...

    async def close(self) -> None: ...
