"""What customs, park management and plate cameras order of a lane, as checked bodies, and
customs' signed commands (CONTRACT 8).

The bodies (pydantic models, every field bounded, unknown keys refused):

- a spot check (R7): ``{"hold_next": N}`` (0 to :data:`MAX_HOLD_NEXT`), ``{"fraction": f}``
  (0 to 1) or ``{"clear": true}``, exactly one;
- lane hours: ``{"open": bool, "until": ts | null, "reason": "…"}`` or ``{"clear": true}``
  (``until`` after now and at most :data:`MAX_HOURS_AHEAD` ahead, checked by the orders);
- a plate read: ``{"plate", "confidence": 0..1 | null, "captured_at": ts | null}``
  (``captured_at`` within :data:`MAX_PLATE_SKEW` of the lane PC's clock);
- a drill: ``{"start": bool, "note": "…"}``.

A **signed command** is one of the first two with an envelope, signed as approvals are
(``gatectl.approvals.signing_bytes``: the object without ``signatures``, canonical JSON)
by a ``trust.customs`` key::

    {"command": "spot-check" | "lane-hours", "command_id": "…", "lane_id": "B1-IN",
     "issued_at": "2027-01-04T09:00:00+08:00", ...the body..., "signatures": [{"role": "customs", "sig"}]}

:func:`verify_command` checks, in this order, so each refusal names the first problem:
``malformed`` (size, JSON, shape), ``unknown_command``/``wrong_topic``, the signatures
(``unsigned``, ``unknown_key``, ``bad_signature``; every entry must verify, one customs
signature at least), ``unknown_lane``, then the time: ``issued_at`` within
:data:`COMMAND_WINDOW` (10 minutes) of now either way (``expired``, ``not_yet_valid``).
Accepting each ``command_id`` once is the caller's (it needs the journal:
``gatectl.orders``). Pure: no I/O, no clock.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gatectl.approvals import (
    MAX_SIGNATURES,
    SignatureEntry,
    public_keys,
    signing_bytes,
    verifies,
)
from gatectl.limits import (
    AwareTime,
    FreeText,
    Identifier,
    JsonRefused,
    LaneId,
    PersonName,
    Plate,
    load_json,
    single_line,
    validation_message,
)

MAX_HOLD_NEXT: Final = 1000
"""Customs hold at most this many released vehicles in a row (a few days of a lane)."""
MAX_COMMAND_BYTES: Final = 16 * 1024
"""A signed command (or an order's body) larger than this is refused before parsing."""
COMMAND_WINDOW: Final = timedelta(minutes=10)
"""A signed command is accepted only this close to its ``issued_at`` (either way)."""
MAX_HOURS_AHEAD: Final = timedelta(days=366)
"""Customs' hours override ends at most a year ahead."""
MAX_PLATE_SKEW: Final = timedelta(days=1)
"""A plate's ``captured_at`` further than this from the lane PC's clock is refused."""

COMMANDS: Final = ("spot-check", "lane-hours")

Reason = single_line(256, what="a reason")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class SpotCheckBody(_Body):
    """R7: hold the next N released vehicles, or that share at random, or clear both."""

    hold_next: Annotated[int, Field(ge=0, le=MAX_HOLD_NEXT)] | None = None
    fraction: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)] | None = None
    clear: Literal[True] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SpotCheckBody:
        given = [k for k in ("hold_next", "fraction", "clear") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError('give exactly one of "hold_next", "fraction" or "clear"')
        return self


class HoursBody(_Body):
    """Customs close or open the lane now, overriding its open hours until ``until`` (or
    until cleared): ``{"open", "until", "reason"}``; or ``{"clear": true}``."""

    open: bool | None = None
    until: AwareTime | None = None
    reason: Reason | None = None
    clear: Literal[True] | None = None
    #: Who orders it (a plain order by the full-access token; a user's token names its user;
    #: a signed command may name its officer).
    by: PersonName | None = None

    @model_validator(mode="after")
    def _one_order(self) -> HoursBody:
        if (self.open is None) == (self.clear is None):
            raise ValueError('give either "open" (with "reason" and "until") or "clear": true')
        if self.clear is not None and (self.until is not None or self.reason is not None):
            raise ValueError('"clear" takes nothing else')
        if self.open is not None and self.reason is None:
            raise ValueError('"reason" is required: why customs open or close the lane')
        return self


class PlateBody(_Body):
    """The plate camera's read of the vehicle on the arrival loop."""

    plate: Plate
    confidence: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)] | None = None
    captured_at: AwareTime | None = None


class DrillBody(_Body):
    """Park management start or end an emergency drill on a lane."""

    start: bool
    note: FreeText = ""
    by: PersonName | None = None  # the full-access token's; a user's token names its user


class _Envelope(_Body):
    command_id: Identifier
    lane_id: LaneId
    issued_at: AwareTime
    by: PersonName | None = None  # the officer, if the signer names one (signed like the rest)
    signatures: tuple[SignatureEntry, ...] = Field((), strict=False, max_length=MAX_SIGNATURES)


class SpotCheckCommand(_Envelope, SpotCheckBody):
    command: Literal["spot-check"]


class HoursCommand(_Envelope, HoursBody):
    command: Literal["lane-hours"]


_MODELS: dict[str, type[_Envelope]] = {"spot-check": SpotCheckCommand, "lane-hours": HoursCommand}
_ENVELOPE = frozenset({"command", "command_id", "lane_id", "issued_at", "by", "signatures"})


class CommandRefused(Exception):
    """A signed command that must not be applied; ``code`` is one of the ``command``
    reasons of ``gatectl.refusals.REASONS``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def to_dict(self) -> dict[str, Any]:
        return {"status": "refused", "reason": self.code, "message": self.message}


@dataclass(frozen=True, slots=True)
class VerifiedCommand:
    """A command whose signatures, lane and time checked out (not yet its ``command_id``)."""

    command: SpotCheckCommand | HoursCommand
    signers: tuple[str, ...]  # base64 public keys of the customs signatures that verified
    fingerprint: str  # SHA-256 of the signed bytes

    @property
    def kind(self) -> str:
        return self.command.command

    @property
    def command_id(self) -> str:
        return self.command.command_id

    @property
    def lane_id(self) -> str:
        return self.command.lane_id

    @property
    def by(self) -> str:
        """Who ordered it: the name the signed body gives, else the signing key."""
        return self.command.by or f"customs key {self.signers[0][:12]}"

    def body(self) -> dict[str, Any]:
        """The order itself, without the envelope."""
        return self.command.model_dump(exclude=set(_ENVELOPE), exclude_none=True)


def is_signed_command(body: Mapping[str, Any]) -> bool:
    """Whether an API body is a signed command rather than a plain order."""
    return "command" in body or "signatures" in body


def verify_command(
    raw: bytes | str | Mapping[str, Any],
    *,
    trust_customs: Sequence[bytes | str],
    lanes: Iterable[str],
    now: datetime,
    expect: str | None = None,
) -> VerifiedCommand:
    """Check a signed command (see the module docstring) or raise :class:`CommandRefused`.

    ``expect``: the command a topic or route takes (``spot-check`` on ``cmd/spot-checks``).
    """
    if isinstance(raw, Mapping):
        doc: Any = dict(raw)
    else:
        try:
            doc = load_json(raw, max_bytes=MAX_COMMAND_BYTES)
        except JsonRefused as exc:
            raise CommandRefused("malformed", exc.message) from None
    if not isinstance(doc, dict):
        raise CommandRefused("malformed", "a signed command is a JSON object")
    kind = doc.get("command")
    if not isinstance(kind, str) or kind not in _MODELS:
        raise CommandRefused("unknown_command", f"command must be one of {', '.join(COMMANDS)}")
    if expect is not None and kind != expect:
        raise CommandRefused("wrong_topic", f"a {kind} command does not belong here (this takes {expect})")
    if not doc.get("signatures"):
        raise CommandRefused("unsigned", "the command carries no signature; commands are signed by customs")
    try:
        message = signing_bytes(doc)
    except (TypeError, ValueError) as exc:
        raise CommandRefused("malformed", f"cannot be serialised as JSON: {exc}") from None
    if len(message) > MAX_COMMAND_BYTES:
        raise CommandRefused("malformed", f"larger than {MAX_COMMAND_BYTES} bytes")
    try:
        command = _MODELS[kind].model_validate(doc)
    except ValidationError as exc:
        raise CommandRefused("malformed", validation_message(exc)) from None

    trusted = public_keys(trust_customs, "customs")
    signers: list[str] = []
    for i, entry in enumerate(command.signatures):
        if entry.role != "customs":
            raise CommandRefused("unknown_key", f"signature {i + 1} is by role {entry.role}: commands are customs'")
        if not trusted:
            raise CommandRefused("unknown_key", "no trust.customs keys are configured: no command can be checked")
        hit = next((raw_key for raw_key, key in trusted if verifies(key, entry.sig_bytes, message)), None)
        if hit is None:
            hint = entry.key_bytes
            if hint is not None and hint not in {raw_key for raw_key, _ in trusted}:
                raise CommandRefused("unknown_key", f"signature {i + 1} is by key {entry.key}, not in trust.customs")
            raise CommandRefused("bad_signature", f"signature {i + 1} matches no trust.customs key: "
                                                  "the command was changed after it was signed, or signed by another key")
        signers.append(base64.b64encode(hit).decode("ascii"))
    if not signers:
        raise CommandRefused("unsigned", "the command carries no customs signature")

    if command.lane_id not in set(lanes):
        raise CommandRefused("unknown_lane", f"lane {command.lane_id!r} does not exist on this site")
    if command.issued_at > now + COMMAND_WINDOW:
        raise CommandRefused("not_yet_valid", f"issued_at {command.issued_at.isoformat()} is more than "
                                              f"{COMMAND_WINDOW.seconds // 60} minutes ahead of this lane PC's clock")
    if command.issued_at < now - COMMAND_WINDOW:
        raise CommandRefused("expired", f"issued_at {command.issued_at.isoformat()} is more than "
                                        f"{COMMAND_WINDOW.seconds // 60} minutes ago: ask customs to issue it again")
    return VerifiedCommand(command, tuple(dict.fromkeys(signers)), hashlib.sha256(message).hexdigest())




__all__ = [
    "COMMANDS",
    "COMMAND_WINDOW",
    "MAX_COMMAND_BYTES",
    "MAX_HOLD_NEXT",
    "CommandRefused",
    "DrillBody",
    "HoursBody",
    "HoursCommand",
    "PlateBody",
    "SpotCheckBody",
    "SpotCheckCommand",
    "VerifiedCommand",
    "is_signed_command",
    "verify_command",
]
