"""The ``http-json`` release authority (CONTRACT section 3.1).

``POST {url}gate/v1/pass-requests`` carries one :class:`~gatectl.authorities.base.PassRequest`;
the ``200`` answer becomes a :class:`~gatectl.authorities.base.Decision`. Everything that is
not a well-formed answer to *this* request within ``timeout_ms`` (no answer, a refused or
reset connection, another status, non-JSON, a wrong shape, another request's id, a release
naming no instruction) raises :class:`~gatectl.authorities.base.AuthorityError`, which holds
the vehicle (S5). Only a release instruction from the authority may lift (R3), so this
adapter never invents or repairs a decision.

``confirm`` posts ``gate/v1/pass-confirmations`` once; the journal's outbox retries it.

An answer is bounded before it is believed (``docs/reliability.md``): at most
:data:`MAX_ANSWER_BYTES`, nested at most :data:`~gatectl.limits.MAX_JSON_DEPTH` deep, no
duplicate keys, ``request_id`` the one sent, ``instruction_id`` at most 128 characters, ``form_id``
64, ``hint`` 256 (it goes on the lane display), ``declared_weight_kg`` 0 to 200 000. Beyond
any of these the answer is ``malformed``: the vehicle is held at once, as for any answer
that is not one, instead of waiting for the timeout.
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import datetime
from typing import Annotated, Any, Final, Literal

import aiohttp
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from gatectl.authorities.base import (
    DECISIONS,
    AuthorityError,
    Decision,
    PassRequest,
)
from gatectl.limits import MAX_HINT_LEN, MAX_ID_LEN, MAX_WEIGHT_KG, JsonRefused, load_json

__all__ = ["HttpJsonAuthority", "pass_request_body", "confirmation_body"]

PASS_REQUESTS_PATH: Final = "gate/v1/pass-requests"
PASS_CONFIRMATIONS_PATH: Final = "gate/v1/pass-confirmations"
#: Answers larger than this are not decisions; refuse them rather than buffer them.
MAX_ANSWER_BYTES: Final = 64 * 1024

_WIRE_DIRECTION: Final = {"in": "I", "out": "E"}
_CONFIRM_RESULTS: Final = frozenset({"passed", "not_passed"})


def pass_request_body(req: PassRequest) -> dict[str, Any]:
    """The exact JSON object of CONTRACT 3.1 for ``req`` (direction ``I``/``E``)."""
    return {
        "request_id": req.request_id,
        "site_id": req.site_id,
        "lane_id": req.lane_id,
        "channel_no": req.channel_no,
        "direction": _WIRE_DIRECTION[req.direction],
        "lane_kind": req.lane_kind,
        "card_no": req.card_no,
        "plate": req.plate,
        "gross_weight_kg": None if req.gross_weight_kg is None else float(req.gross_weight_kg),
        "captured_at": req.captured_at.isoformat(),
    }


def confirmation_body(
    request_id: str,
    instruction_id: str | None,
    lane_id: str,
    result: Literal["passed", "not_passed"],
    passed_at: datetime,
    gross_weight_kg: float | None,
) -> dict[str, Any]:
    """The exact JSON object of a CONTRACT 3.1 pass confirmation."""
    if result not in _CONFIRM_RESULTS:
        raise ValueError(f"confirmation result must be 'passed' or 'not_passed', not {result!r}")
    if passed_at.tzinfo is None or passed_at.utcoffset() is None:
        raise ValueError("passed_at must be timezone-aware (ISO 8601 with offset)")
    return {
        "request_id": request_id,
        "instruction_id": instruction_id,
        "lane_id": lane_id,
        "result": result,
        "passed_at": passed_at.isoformat(),
        "gross_weight_kg": None if gross_weight_kg is None else float(gross_weight_kg),
    }


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_BUT_LINES = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")


def _no_control(pattern: re.Pattern[str]):
    def check(value: str) -> str:
        if pattern.search(value):
            raise ValueError("contains a control character")
        return value

    return AfterValidator(check)


def _text(max_length: int, pattern: re.Pattern[str] = _CONTROL) -> Any:
    return Annotated[str, StringConstraints(max_length=max_length), _no_control(pattern)]


_Id = _text(MAX_ID_LEN)
_FormId = _text(64)
_Hint = _text(MAX_HINT_LEN, _CONTROL_BUT_LINES)
_DeclaredKg = Annotated[float, Field(ge=0, le=MAX_WEIGHT_KG, allow_inf_nan=False)]


class _Answer(BaseModel):
    """The fields of a 200 answer after ``request_id`` (checked first: ``mismatch``).

    Unknown keys are ignored (CONTRACT 3.1); empty strings are kept as they came, as
    before: only ``release`` needs a non-empty ``instruction_id``.
    """

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    decision: Literal["release", "hold", "inspect", "deny"]
    instruction_id: _Id | None = None
    form_id: _FormId | None = None
    hint: _Hint | None = None
    declared_weight_kg: _DeclaredKg | None = None


def _short(value: Any, limit: int = 60) -> str:
    """``repr`` of an answered value for a message, cut short: details are journaled."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_decision(raw: bytes, request_id: str) -> Decision:
    """Turn the body of a ``200`` answer into a :class:`Decision` for ``request_id``.

    Required: a JSON object with ``request_id`` (equal to the one sent, else ``mismatch``)
    and ``decision`` (one of the four). ``instruction_id``, ``form_id``, ``hint`` (strings)
    and ``declared_weight_kg`` (a number) may be null or absent, except that a ``release``
    must name its ``instruction_id`` (R3). Unknown keys are ignored. Every limit of the
    module doc applies. Anything else raises ``AuthorityError("malformed")``; never
    another exception, whatever the bytes.
    """
    try:
        answer = load_json(raw, max_bytes=MAX_ANSWER_BYTES)
    except JsonRefused as exc:
        raise AuthorityError("malformed", f"answer refused: {exc.message}", request_id=request_id) from None
    if not isinstance(answer, dict):
        raise AuthorityError("malformed", f"answer is a JSON {type(answer).__name__}, not an object", request_id=request_id)

    answered_id = answer.get("request_id")
    if not isinstance(answered_id, str) or not answered_id:
        raise AuthorityError("malformed", "answer has no request_id", request_id=request_id)
    if answered_id != request_id:
        raise AuthorityError("mismatch", f"answer is for request {_short(answered_id)}", request_id=request_id)

    decision = answer.get("decision")
    if not isinstance(decision, str) or decision not in DECISIONS:
        raise AuthorityError(
            "malformed", f"decision {_short(decision)} is not one of {sorted(DECISIONS)}", request_id=request_id
        )
    try:
        fields = _Answer.model_validate(answer)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"][:1])
        raise AuthorityError("malformed", f"{where}: {first['msg']}", request_id=request_id) from None
    if decision == "release" and not fields.instruction_id:
        raise AuthorityError("malformed", "release names no instruction_id", request_id=request_id)

    return Decision(
        request_id=request_id,
        decision=fields.decision,
        instruction_id=fields.instruction_id,
        form_id=fields.form_id,
        hint=fields.hint,
        declared_weight_kg=fields.declared_weight_kg,
    )


async def _read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    if resp.content_length is not None:
        # The usual answer: its length is known, so it is refused before it is read, and
        # read in one go (chunk by chunk costs the decision a few turns of the loop).
        if resp.content_length > limit:
            raise AuthorityError("malformed", f"answer is larger than {limit} bytes")
        return await resp.read()
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(16 * 1024):
        size += len(chunk)
        if size > limit:
            raise AuthorityError("malformed", f"answer is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class HttpJsonAuthority:
    """Client of one ``http-json`` release authority (CONTRACT 3.1).

    ``url`` is the authority's base URL (a missing trailing ``/`` is added). Each call is
    bounded as a whole (connect, send, status, body) by ``timeout_ms``. ``session`` may be
    shared and then stays open on :meth:`close`; without one the authority creates its own on
    first use and closes it in :meth:`close`. After :meth:`close` every call raises
    ``AuthorityError("connection")``, so a late request still holds the vehicle (S5).
    """

    def __init__(self, url: str, timeout_ms: int, session: aiohttp.ClientSession | None = None) -> None:
        if timeout_ms <= 0:
            raise ValueError(f"timeout_ms must be positive, not {timeout_ms}")
        self.url: str = url if url.endswith("/") else url + "/"
        self.timeout_ms: int = timeout_ms
        self._timeout_s: float = timeout_ms / 1000.0
        self._session: aiohttp.ClientSession | None = session
        self._owns_session: bool = session is None
        self._closed: bool = False

    @property
    def pass_requests_url(self) -> str:
        return self.url + PASS_REQUESTS_PATH

    @property
    def pass_confirmations_url(self) -> str:
        return self.url + PASS_CONFIRMATIONS_PATH

    def _get_session(self, request_id: str) -> aiohttp.ClientSession:
        if self._closed:
            raise AuthorityError("connection", "authority client is closed", request_id=request_id)
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        elif self._session.closed:
            raise AuthorityError("connection", "the shared HTTP session is closed", request_id=request_id)
        return self._session

    async def _post(self, url: str, body: dict[str, Any], request_id: str) -> tuple[int, bytes]:
        """POST ``body``; return (status, body bytes). Every failure is an AuthorityError."""
        session = self._get_session(request_id)
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        headers = {"Content-Type": "application/json; charset=utf-8", "Accept": "application/json"}
        try:
            async with asyncio.timeout(self._timeout_s):
                async with session.post(url, data=data, headers=headers, allow_redirects=False) as resp:
                    return resp.status, await _read_capped(resp, MAX_ANSWER_BYTES)
        except AuthorityError as exc:
            exc.request_id = request_id
            raise
        except TimeoutError:  # asyncio.timeout, and aiohttp's own timeout errors subclass it
            raise AuthorityError(
                "timeout", f"no answer from {url} within {self.timeout_ms} ms", request_id=request_id
            ) from None
        except aiohttp.ClientPayloadError as exc:
            raise AuthorityError("connection", f"answer from {url} cut short: {exc}", request_id=request_id) from None
        except aiohttp.ClientResponseError as exc:  # an answer that is not valid HTTP
            raise AuthorityError("malformed", f"{url}: bad HTTP answer: {exc}", request_id=request_id) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise AuthorityError(
                "connection", f"{url}: {type(exc).__name__}: {exc}", request_id=request_id
            ) from None

    async def request(self, req: PassRequest) -> Decision:
        """Ask the authority about ``req``; return its decision or raise AuthorityError."""
        status, raw = await self._post(self.pass_requests_url, pass_request_body(req), req.request_id)
        if status != 200:
            raise AuthorityError(
                "http_status", f"pass request answered HTTP {status}: {_snippet(raw)}", request_id=req.request_id
            )
        return parse_decision(raw, req.request_id)

    async def confirm(
        self,
        request_id: str,
        instruction_id: str | None,
        lane_id: str,
        result: Literal["passed", "not_passed"],
        passed_at: datetime,
        gross_weight_kg: float | None,
    ) -> bool:
        """Tell the authority how the passage ended; True on any 2xx, else AuthorityError."""
        body = confirmation_body(request_id, instruction_id, lane_id, result, passed_at, gross_weight_kg)
        status, raw = await self._post(self.pass_confirmations_url, body, request_id)
        if not 200 <= status < 300:
            raise AuthorityError(
                "http_status", f"confirmation answered HTTP {status}: {_snippet(raw)}", request_id=request_id
            )
        return True

    async def close(self) -> None:
        """Close the session if this authority created it. Idempotent."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None and self._owns_session and not session.closed:
            await session.close()

    async def __aenter__(self) -> HttpJsonAuthority:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"HttpJsonAuthority(url={self.url!r}, timeout_ms={self.timeout_ms})"


def _snippet(raw: bytes, limit: int = 200) -> str:
    text = raw[:limit].decode("utf-8", errors="replace")
    return text + ("…" if len(raw) > limit else "")
