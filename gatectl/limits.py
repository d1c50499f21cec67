"""Limits on what comes in from outside, written down once.

Every input that reaches the daemon from outside (the config file, approvals, authority
answers, and the local API and MQTT bodies) is bounded at the edge: a size, a nesting
depth, a length for each string and a range for each number that make sense at a
checkpoint. Anything beyond is refused with a reason before it reaches the lane, the
journal or SQLite. The figures live here so that every surface uses the same ones and the
docs (``docs/reliability.md``) can cite one place.

    from gatectl.limits import JsonRefused, load_json, Plate, PersonName
    doc = load_json(body, max_bytes=64 * 1024)      # raises JsonRefused(reason, message)

Nothing here does I/O; it imports only the standard library and pydantic, so any module
(the sans-IO lane core included) may use it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Final, Literal

from datetime import datetime

from pydantic import AfterValidator, BeforeValidator, Field, Strict, StringConstraints

__all__ = [
    "JSON_REFUSALS",
    "MAX_DURATION_MS",
    "MAX_HINT_LEN",
    "MAX_ID_LEN",
    "MAX_JSON_DEPTH",
    "MAX_NAME_LEN",
    "MAX_NUMBER_CHARS",
    "MAX_ORG_LEN",
    "MAX_PLATE_LEN",
    "MAX_LANE_ID_LEN",
    "MAX_SEQ",
    "MAX_TEXT_LEN",
    "MAX_WEIGHT_KG",
    "AwareTime",
    "DurationMs",
    "LaneId",
    "Seq",
    "Sha256Hex",
    "FreeText",
    "Identifier",
    "JsonRefused",
    "JsonRefusal",
    "OrgName",
    "PersonName",
    "Plate",
    "WeightKg",
    "check_depth",
    "load_json",
    "single_line",
    "validation_message",
]

# --- figures ------------------------------------------------------------------------------

MAX_JSON_DEPTH: Final = 32
"""Objects and arrays nested deeper than this are refused. Every JSON the daemon reads
(approvals, authority answers, API and MQTT bodies) is two or three levels deep."""

MAX_NUMBER_CHARS: Final = 32
"""A JSON number literal longer than this is refused before it is converted: no count,
weight or time at a checkpoint needs more, and Python's int() of a 5 000-digit literal
costs time and then fails anyway."""

MAX_SEQ: Final = 2**63 - 1
"""The largest integer SQLite stores: any seq, count or id number from outside stays within."""

MAX_DURATION_MS: Final = 24 * 60 * 60 * 1000
"""No wait or timeout at a checkpoint is longer than a day."""

MAX_WEIGHT_KG: Final = 200_000.0
"""Heavier than any weighbridge's capacity (road vehicles stay under 100 t)."""

MAX_PLATE_LEN: Final = 16
"""Chinese plates are 7-8 characters (云A12345, 云AD12345, 云A1234挂); room for foreign ones."""
MAX_NAME_LEN: Final = 64
"""A person's name, a guard's or an officer's."""
MAX_ORG_LEN: Final = 128
"""An organisation's name: 某某物流有限公司, 昆明海关, ..."""
MAX_ID_LEN: Final = 128
"""Identifiers that come from outside: approval ids, instruction ids, request ids."""
MAX_HINT_LEN: Final = 256
"""Text for the lane display (the authority's hint): a few lines of Chinese."""
MAX_TEXT_LEN: Final = 2000
"""Free text people write: an approval's detail, a note."""
MAX_LANE_ID_LEN: Final = 64
"""A lane id as the config allows it (``B1-IN``)."""
MAX_TIME_LEN: Final = 40
"""An ISO 8601 time stamp with offset and microseconds is 32 characters."""


# --- bounded JSON -------------------------------------------------------------------------

JsonRefusal = Literal["too_large", "not_utf8", "not_json", "too_deep", "duplicate_key", "bad_number"]
JSON_REFUSALS: Final[tuple[str, ...]] = (
    "too_large",
    "not_utf8",
    "not_json",
    "too_deep",
    "duplicate_key",
    "bad_number",
)


class JsonRefused(ValueError):
    """A JSON document refused at the edge; ``reason`` is one of :data:`JSON_REFUSALS`."""

    def __init__(self, reason: JsonRefusal, message: str, *, key: str | None = None) -> None:
        if reason not in JSON_REFUSALS:
            raise ValueError(f"unknown JSON refusal {reason!r}")
        super().__init__(message)
        self.reason: JsonRefusal = reason
        self.message = message
        self.key = key  # the duplicated key, for a duplicate_key refusal


# A string token (skipped whole, so brackets inside strings do not count) or one bracket.
_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)


def _scan_depth(text: str, max_depth: int) -> None:
    """Refuse nesting deeper than ``max_depth`` before any parser recurses into it.

    Linear and iterative. An unterminated string makes its content count as brackets,
    which can only over-count; such a text is not JSON anyway.
    """
    depth = 0
    for match in _TOKENS.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > max_depth:
                raise JsonRefused("too_deep", f"nested more than {max_depth} levels deep")
        elif token in "]}":
            depth -= 1


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise JsonRefused("duplicate_key", f"key {key!r} appears twice in one object", key=key)
        out[key] = value
    return out


def _int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise JsonRefused("bad_number", f"a number of {len(text)} digits")
    return int(text)


def _float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise JsonRefused("bad_number", f"a number of {len(text)} characters")
    value = float(text)
    if not math.isfinite(value):
        raise JsonRefused("bad_number", f"{text} is out of range")
    return value


def _constant(name: str) -> Any:
    raise JsonRefused("bad_number", f"{name} is not a JSON number")


def load_json(
    raw: bytes | bytearray | str,
    *,
    max_bytes: int,
    max_depth: int = MAX_JSON_DEPTH,
    refuse_duplicates: bool = True,
    allow_bom: bool = False,
) -> Any:
    """Parse untrusted JSON with every edge bounded, or raise :class:`JsonRefused`.

    Checks, in this order and each before any work it guards: the size (bytes, or
    characters of text), UTF-8, the nesting depth (scanned without recursion), then the
    parse itself, refusing duplicate keys (another reader may take the other one), NaN and
    Infinity, numbers that overflow to infinity and number literals longer than
    :data:`MAX_NUMBER_CHARS`. Never raises RecursionError or MemoryError for hostile input.
    """
    if len(raw) > max_bytes:
        raise JsonRefused("too_large", f"larger than {max_bytes} bytes")
    if isinstance(raw, (bytes, bytearray)):
        try:
            text = bytes(raw).decode("utf-8-sig" if allow_bom else "utf-8")
        except UnicodeDecodeError as exc:
            raise JsonRefused("not_utf8", f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    else:
        text = raw[1:] if allow_bom and raw.startswith("\ufeff") else raw
    _scan_depth(text, max_depth)
    try:
        return json.loads(
            text,
            object_pairs_hook=_refuse_duplicates if refuse_duplicates else None,
            parse_int=_int,
            parse_float=_float,
            parse_constant=_constant,
        )
    except JsonRefused:
        raise
    except json.JSONDecodeError as exc:
        raise JsonRefused("not_json", f"not JSON: {exc.msg} (line {exc.lineno} column {exc.colno})") from None
    except RecursionError:  # cannot happen after the scan; kept so it never escapes
        raise JsonRefused("too_deep", "nested too deeply") from None
    except ValueError as exc:
        raise JsonRefused("not_json", f"not JSON: {exc}") from None


def check_depth(value: Any, max_depth: int = MAX_JSON_DEPTH, max_items: int = 100_000) -> None:
    """Refuse an already parsed value nested deeper than ``max_depth`` (iteratively).

    For bodies handed over as Python objects (a library that parsed them already). A value
    that contains itself is refused as too deep; one that shares sub-objects so much that
    walking it visits more than ``max_items`` values is refused as too large.
    """
    stack: list[tuple[Any, int]] = [(value, 0)]
    visited = 0
    while stack:
        item, depth = stack.pop()
        visited += 1
        if visited > max_items:
            raise JsonRefused("too_large", f"more than {max_items} values")
        if isinstance(item, (Mapping, list, tuple)):
            depth += 1
            if depth > max_depth:
                raise JsonRefused("too_deep", f"nested more than {max_depth} levels deep")
            children = item.values() if isinstance(item, Mapping) else item
            stack.extend((child, depth) for child in children)


# --- reusable field types -----------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
_CONTROL_BUT_LINES = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


def _no_control(pattern: re.Pattern[str], what: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        bad = pattern.search(value)
        if bad is not None:
            raise ValueError(f"{what} must not contain the control character {bad.group()!r}")
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    return check


def single_line(max_length: int, *, what: str = "text") -> Any:
    """A one-line string of 1..``max_length`` characters: no control characters, not blank."""
    return Annotated[
        str,
        StringConstraints(min_length=1, max_length=max_length),
        AfterValidator(_no_control(_CONTROL, what)),
    ]


Plate = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_PLATE_LEN),
    AfterValidator(_no_control(_CONTROL, "a plate")),
]
"""A number plate as a camera or a person writes it: 云A12345."""

PersonName = single_line(MAX_NAME_LEN, what="a name")
OrgName = single_line(MAX_ORG_LEN, what="an organisation")
Identifier = single_line(MAX_ID_LEN, what="an id")
def _free_text(value: str) -> str:
    bad = _CONTROL_BUT_LINES.search(value)
    if bad is not None:
        raise ValueError(f"text must not contain the control character {bad.group()!r}")
    return value


FreeText = Annotated[str, StringConstraints(max_length=MAX_TEXT_LEN), AfterValidator(_free_text)]
"""People's free text (may be empty; new lines and tabs allowed, other controls not)."""

DurationMs = Annotated[int, Strict(), Field(ge=1, le=MAX_DURATION_MS)]
"""Milliseconds, 1 ms to a day. Tighter ranges are set where a field knows better."""

WeightKg = Annotated[float, Field(ge=0, le=MAX_WEIGHT_KG, allow_inf_nan=False)]
"""Kilograms on a weighbridge."""


Seq = Annotated[int, Field(ge=0, le=MAX_SEQ)]
"""A journal seq (or a position before the first: 0) that SQLite can compare."""

LaneId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_LANE_ID_LEN, pattern=r"^[A-Za-z0-9_-]+$"),
]
"""A lane id as it may appear in a path, a query or a body (``_site`` included)."""


def _sha256_hex(value: str) -> str:
    value = value.strip().lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ValueError("expected 64 hex digits: the SHA-256 of the bearer token")
    return value


Sha256Hex = Annotated[str, StringConstraints(max_length=128), AfterValidator(_sha256_hex)]
"""A SHA-256 digest as lowercase hex (a bearer token's ``token_sha256``)."""


def _aware_time(value: Any) -> datetime:
    # Only ISO 8601 text with an offset: pydantic alone would take numbers as Unix times
    # and naive times as whatever zone the reader assumes.
    if not isinstance(value, str):
        raise ValueError("expected an ISO 8601 time stamp with offset, like 2026-11-27T09:00:00+08:00")
    if len(value) > MAX_TIME_LEN:
        raise ValueError(f"a time stamp is at most {MAX_TIME_LEN} characters")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"not an ISO 8601 time stamp: {value!r}") from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ValueError(f"time stamp {value!r} has no UTC offset (write it like 2026-11-27T09:00:00+08:00)")
    return parsed


AwareTime = Annotated[datetime, BeforeValidator(_aware_time)]
"""An ISO 8601 time stamp with a UTC offset, as text (never a number)."""


def validation_message(exc: Any, limit: int = 5) -> str:
    """A pydantic ``ValidationError`` as one line people can act on: ``field: problem; ...``
    (the offending values are never echoed: they may be huge)."""
    errors = exc.errors(include_url=False, include_input=False)
    parts = []
    for err in errors[:limit]:
        where = ".".join(str(p) for p in err["loc"])
        if err.get("type") == "extra_forbidden":
            msg = "unknown field"
        elif err.get("type") == "missing":
            msg = "required"
        else:
            msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    if len(errors) > limit:
        parts.append(f"and {len(errors) - limit} more")
    return "; ".join(parts)
